"""Synthetic H&E-like tissue whose truth we control: what a synthetic slide shows.

Tissue is a set of ellipses on glass, each of a *tissue type* with its own stain mix and
nuclear density. Pixels are rendered procedurally from level-0 physical coordinates through
Beer–Lambert optics with the DeepPT reference stain vectors, so every pyramid level is
rendered directly (no level 0 is ever materialised) and the same spot looks the same at every
level. :mod:`.slides` writes them as files, :mod:`.cohorts` as cohorts with known expression.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "DEFAULT_TISSUE_TYPES",
    "GENERATOR_VERSION",
    "STAIN_VECTORS",
    "SyntheticSlide",
    "TissueRegion",
    "TissueType",
    "default_sample_spec",
]

#: Optical density per unit concentration of haematoxylin and eosin (columns) in R, G, B.
STAIN_VECTORS = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]], np.float32)
IO = 240.0
GENERATOR_VERSION = 2


@dataclass(frozen=True)
class TissueType:
    """Appearance of one synthetic tissue: stain concentrations and nuclei."""

    name: str
    haematoxylin: float
    eosin: float
    nuclear_spacing_um: float
    nucleus_radius_um: float
    nuclear_probability: float
    texture: float = 0.2  # relative amplitude of pixel-level stain noise


DEFAULT_TISSUE_TYPES: tuple[TissueType, ...] = (
    TissueType("tumour", 0.45, 0.55, 11.0, 4.0, 0.9),
    TissueType("stroma", 0.12, 1.05, 22.0, 2.5, 0.35),
    TissueType("lymphocytes", 0.35, 0.35, 8.0, 2.6, 0.95),
)


@dataclass(frozen=True)
class TissueRegion:
    """An elliptical piece of tissue, in level-0 pixels (continuous coordinates)."""

    cx: float
    cy: float
    rx: float
    ry: float
    tissue_type: int = 0

    @property
    def area_px(self) -> float:
        return math.pi * self.rx * self.ry

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Whether level-0 points (continuous; pixel ``i`` spans ``[i, i+1)``) are inside."""
        return ((x - self.cx) / self.rx) ** 2 + ((y - self.cy) / self.ry) ** 2 <= 1.0


@dataclass(frozen=True)
class SyntheticSlide:
    """Geometry, optics and (once written) the file of a synthetic slide.

    Parameters
    ----------
    width, height
        Level-0 size in pixels.
    mpp
        µm per level-0 pixel.
    regions
        The tissue, as ellipses that should not overlap (overlaps paint the later one).
    tissue_types
        Appearance of each tissue type index used by ``regions``.
    seed
        Seeds the texture (nuclei positions, noise).
    path
        The file once :func:`write_synthetic_slide` has written it.
    """

    width: int
    height: int
    mpp: float = 0.5
    regions: tuple[TissueRegion, ...] = ()
    tissue_types: tuple[TissueType, ...] = DEFAULT_TISSUE_TYPES
    seed: int = 0
    path: Path | None = None
    objective_power: float | None = None
    extra: dict[str, object] = field(default_factory=dict, compare=False)

    @property
    def tissue_area_px(self) -> float:
        """Level-0 area of all tissue in pixels² (exact for non-overlapping ellipses)."""
        return float(sum(r.area_px for r in self.regions))

    @property
    def tissue_area_um2(self) -> float:
        return self.tissue_area_px * self.mpp**2

    def tissue_type_map(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Tissue type index at level-0 points, ``-1`` on glass."""
        out = np.full(np.broadcast(x, y).shape, -1, np.int16)
        for region in self.regions:
            out[region.contains(x, y)] = region.tissue_type
        return out

    def truth_mask(self, downsample: float) -> np.ndarray:
        """Tissue mask sampled at pixel centres of a grid ``downsample`` level-0 px apart."""
        h = math.ceil(self.height / downsample)
        w = math.ceil(self.width / downsample)
        ys = (np.arange(h) + 0.5) * downsample
        xs = (np.arange(w) + 0.5) * downsample
        return self.tissue_type_map(xs[np.newaxis, :], ys[:, np.newaxis]) >= 0

    def render(
        self, x0: float, y0: float, width: int, height: int, downsample: float = 1.0
    ) -> np.ndarray:
        """Render ``height × width`` RGB pixels of a level with ``downsample``.

        ``(x0, y0)`` is the top-left corner of the first pixel in level-0 coordinates.
        """
        xs = x0 + (np.arange(width, dtype=np.float64) + 0.5) * downsample
        ys = y0 + (np.arange(height, dtype=np.float64) + 0.5) * downsample
        gx, gy = np.meshgrid(xs, ys)
        kind = self.tissue_type_map(gx, gy)
        pixel_um = downsample * self.mpp
        conc_h = np.zeros(kind.shape, np.float32)
        conc_e = np.zeros(kind.shape, np.float32)
        texture = np.zeros(kind.shape, np.float32)
        for t, tissue in enumerate(self.tissue_types):
            inside = kind == t
            if not inside.any():
                continue
            coverage = _nuclear_coverage(
                gx[inside] * self.mpp, gy[inside] * self.mpp, tissue, pixel_um, self.seed + 101 * t
            )
            conc_h[inside] = tissue.haematoxylin + 1.25 * coverage
            conc_e[inside] = tissue.eosin * (1.0 - 0.45 * coverage)
            texture[inside] = tissue.texture
        noise = _hash01(np.floor(gx).astype(np.int64), np.floor(gy).astype(np.int64), self.seed)
        tissue_mask = kind >= 0
        factor = 1.0 + texture * (noise - 0.5)
        conc_h *= factor
        conc_e *= factor
        od = conc_h[..., None] * STAIN_VECTORS[:, 0] + conc_e[..., None] * STAIN_VECTORS[:, 1]
        rgb = IO * np.exp(-od)
        rgb[~tissue_mask] = IO - 4.0 * noise[~tissue_mask, None]  # glass: bright, grey
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)

    def level_shapes(self, factors: tuple[int, ...]) -> list[tuple[int, int]]:
        """``(height, width)`` of level 0 and of each reduced level."""
        return [(self.height, self.width)] + [(self.height // f, self.width // f) for f in factors]


def _hash01(ix: np.ndarray, iy: np.ndarray, seed: int) -> np.ndarray:
    """Deterministic per-integer-coordinate noise in [0, 1)."""
    with np.errstate(over="ignore"):
        h = (
            ix.astype(np.uint64) * np.uint64(0x9E3779B1)
            + iy.astype(np.uint64) * np.uint64(0x85EBCA77)
            + np.uint64(seed * 0xC2B2AE3D + 0x27D4EB2F)
        )
        h = (h ^ (h >> np.uint64(15))) * np.uint64(0x2C1B3C6D)
        h = (h ^ (h >> np.uint64(12))) * np.uint64(0x297A2D39)
        h = h ^ (h >> np.uint64(15))
    return ((h & np.uint64(0xFFFFFF)).astype(np.float32)) / np.float32(1 << 24)


def _nuclear_coverage(
    x_um: np.ndarray, y_um: np.ndarray, tissue: TissueType, pixel_um: float, seed: int
) -> np.ndarray:
    """Fraction of each pixel covered by a nucleus (anti-aliased; mean when pixels are big)."""
    spacing, radius = tissue.nuclear_spacing_um, tissue.nucleus_radius_um
    mean = tissue.nuclear_probability * math.pi * radius**2 / spacing**2
    if pixel_um >= spacing:
        return np.full(x_um.shape, min(mean, 1.0), np.float32)
    cx, cy = np.floor(x_um / spacing), np.floor(y_um / spacing)
    ix, iy = cx.astype(np.int64), cy.astype(np.int64)
    margin = radius / spacing
    ox = margin + (1 - 2 * margin) * _hash01(ix, iy, seed)
    oy = margin + (1 - 2 * margin) * _hash01(iy, ix, seed + 7)
    present = _hash01(ix, iy, seed + 13) < tissue.nuclear_probability
    dist = np.hypot(x_um - (cx + ox) * spacing, y_um - (cy + oy) * spacing)
    coverage = np.clip((radius - dist) / max(pixel_um, 1e-6) + 0.5, 0.0, 1.0)
    coverage = np.where(present, coverage, 0.0).astype(np.float32)
    if pixel_um > radius:  # partially aliased: blend towards the mean
        w = (pixel_um - radius) / (spacing - radius)
        coverage = (1 - w) * coverage + w * mean
    return coverage


def default_sample_spec(
    width: int = 6144, height: int = 4096, mpp: float = 0.5, seed: int = 0
) -> SyntheticSlide:
    """A slide with three tissue pieces (tumour, stroma, lymphocytes) on glass.

    Parameters
    ----------
    width, height
        Level-0 size in pixels; the pieces are placed and sized in proportion.
    mpp, seed
        µm per pixel (the objective power is ``10 / mpp``) and the texture's seed.

    Returns
    -------
    SyntheticSlide
        The spec, not yet written (``path`` unset).
    """
    return SyntheticSlide(
        width=width,
        height=height,
        mpp=mpp,
        seed=seed,
        objective_power=round(10 / mpp, 1),
        regions=(
            TissueRegion(0.27 * width, 0.45 * height, 0.20 * width, 0.32 * height, 0),
            TissueRegion(0.66 * width, 0.35 * height, 0.17 * width, 0.22 * height, 1),
            TissueRegion(0.70 * width, 0.78 * height, 0.12 * width, 0.13 * height, 2),
        ),
    )
