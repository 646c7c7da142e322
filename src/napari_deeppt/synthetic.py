"""Synthetic H&E-like whole-slide images whose truth we control.

Tissue is a set of ellipses on glass, each of a *tissue type* with its own stain mix and
nuclear density. Pixels are rendered procedurally from level-0 physical coordinates through
Beer–Lambert optics with the DeepPT reference stain vectors, so every pyramid level is
rendered directly (no level 0 is ever materialised) and the same spot looks the same at every
level. Tests, benchmarks, the demo and napari's sample data all use this module.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

__all__ = [
    "DEFAULT_TISSUE_TYPES",
    "SyntheticCohort",
    "SyntheticSlide",
    "TissueRegion",
    "TissueType",
    "default_sample_spec",
    "write_giant_slide",
    "write_synthetic_cohort",
    "write_synthetic_slide",
    "write_synthetic_spots",
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
    """A slide with three tissue pieces (tumour, stroma, lymphocytes) on glass."""
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


def _tiles(
    spec: SyntheticSlide, downsample: float, shape: tuple[int, int], tile: int
) -> Iterator[np.ndarray]:
    h, w = shape
    for r in range(0, h, tile):
        for c in range(0, w, tile):
            yield spec.render(c * downsample, r * downsample, tile, tile, downsample)


def _label_image(text_seed: int) -> np.ndarray:
    rng = np.random.default_rng(text_seed)
    label = np.full((300, 300, 3), 250, np.uint8)
    label[40:260:20, 30:270] = rng.integers(0, 60, size=(11, 240, 3), dtype=np.uint8)
    return label


def _atomic_target(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial-{os.getpid()}")


def write_synthetic_slide(
    path: str | os.PathLike[str],
    spec: SyntheticSlide | None = None,
    *,
    format: str = "svs",
    tile: int = 256,
    level_factors: tuple[int, ...] | None = None,
    compression: str | None = "jpeg",
    quality: int = 90,
    associated: bool = True,
    write_mpp: bool = True,
    overwrite: bool = False,
) -> SyntheticSlide:
    """Write ``spec`` as a slide file and return it with ``path`` set.

    Parameters
    ----------
    path
        Output file (or ``.zarr`` directory for ``format="ome-zarr"``).
    spec
        What to draw; :func:`default_sample_spec` when None.
    format
        ``"svs"`` (Aperio layout and description), ``"ome-tiff"`` (levels in SubIFDs),
        ``"tiff"`` (generic pyramidal TIFF, pixel size in resolution tags), or ``"ome-zarr"``.
    tile
        Tile size in pixels.
    level_factors
        Downsample factors of the reduced levels; by default ×4 steps down to ~1000 px.
        ``()`` writes a single-level slide.
    compression
        ``"jpeg"``, ``"zlib"``, ``None`` ... (TIFF formats).
    associated
        Also write a label and a macro image (and, for SVS, a thumbnail).
    write_mpp
        Record the pixel size in the file (set False to test the missing-mpp path).
    overwrite
        Replace an existing file; otherwise refuse.
    """
    path = Path(path)
    spec = spec or default_sample_spec()
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: exists; pass overwrite=True to replace it")
    if level_factors is None:
        level_factors, f = (), 4
        while max(spec.width, spec.height) // f >= 1000:
            level_factors += (f,)
            f *= 4
    shapes = spec.level_shapes(level_factors)
    downsamples = [1.0] + [float(f) for f in level_factors]
    tmp = _atomic_target(path)
    if format == "ome-zarr":
        _write_ome_zarr(tmp, spec, shapes, downsamples, tile, write_mpp)
    elif format in ("svs", "ome-tiff", "tiff"):
        _write_tiff(
            tmp,
            spec,
            shapes,
            downsamples,
            tile,
            format,
            compression,
            quality,
            associated,
            write_mpp,
        )
    else:
        raise ValueError(f"unknown format {format!r}; use svs, ome-tiff, tiff or ome-zarr")
    if path.exists():  # overwrite=True
        import shutil

        shutil.rmtree(path) if path.is_dir() else path.unlink()
    os.replace(tmp, path)
    return replace(spec, path=path)


def _write_tiff(
    path: Path,
    spec: SyntheticSlide,
    shapes: list[tuple[int, int]],
    downsamples: list[float],
    tile: int,
    fmt: str,
    compression: str | None,
    quality: int,
    associated: bool,
    write_mpp: bool,
) -> None:
    import tifffile

    comp_args = {"compression": compression}
    if compression == "jpeg":
        comp_args["compressionargs"] = {"level": quality}
    h0, w0 = shapes[0]
    mag = spec.objective_power or round(10 / spec.mpp, 1)
    with tifffile.TiffWriter(path, bigtiff=True, ome=(fmt == "ome-tiff")) as tw:
        if fmt == "svs":
            mpp_text = f"|MPP = {spec.mpp:.4f}" if write_mpp else ""
            desc = (
                f"Aperio Image Library v12.0.0\r\n{w0}x{h0} [0,0 {w0}x{h0}] ({tile}x{tile}) "
                f"JPEG/RGB Q={quality}|AppMag = {mag:g}{mpp_text}|Filename = synthetic"
                f"|napari-deeppt synthetic = {GENERATOR_VERSION}"
            )
            tw.write(
                _tiles(spec, 1.0, shapes[0], tile),
                shape=(h0, w0, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                description=desc,
                metadata=None,
                **comp_args,
            )
            if associated:
                factor = max(h0, w0) / 768
                th, tw_ = max(1, int(h0 / factor)), max(1, int(w0 / factor))
                thumb = spec.render(0, 0, tw_, th, w0 / tw_)
                tw.write(
                    thumb,
                    photometric="rgb",
                    description=f"{w0}x{h0} -> {tw_}x{th}",
                    metadata=None,
                    compression="jpeg",
                )
            for (h, w), ds in zip(shapes[1:], downsamples[1:]):
                tw.write(
                    _tiles(spec, ds, (h, w), tile),
                    shape=(h, w, 3),
                    dtype=np.uint8,
                    tile=(tile, tile),
                    photometric="rgb",
                    metadata=None,
                    description=f"{w0}x{h0} -> {w}x{h}",
                    **comp_args,
                )
            if associated:
                tw.write(
                    _label_image(spec.seed),
                    photometric="rgb",
                    subfiletype=1,
                    description="label 300x300",
                    metadata=None,
                    compression="lzw",
                )
                macro = spec.render(0, 0, 400, max(1, int(400 * h0 / w0)), w0 / 400)
                tw.write(
                    macro,
                    photometric="rgb",
                    subfiletype=9,
                    description="macro",
                    metadata=None,
                    compression="jpeg",
                )
            return
        resolution = {}
        if write_mpp:
            resolution = {
                "resolution": (1e4 / spec.mpp, 1e4 / spec.mpp),
                "resolutionunit": "CENTIMETER",
            }
        metadata: dict[str, object] | None = None
        if fmt == "ome-tiff":
            metadata = {"axes": "YXS", "Name": "synthetic slide"}
            if write_mpp:
                metadata.update(
                    {
                        "PhysicalSizeX": spec.mpp,
                        "PhysicalSizeXUnit": "µm",
                        "PhysicalSizeY": spec.mpp,
                        "PhysicalSizeYUnit": "µm",
                    }
                )
        tw.write(
            _tiles(spec, 1.0, shapes[0], tile),
            shape=(h0, w0, 3),
            dtype=np.uint8,
            tile=(tile, tile),
            photometric="rgb",
            subifds=len(shapes) - 1,
            metadata=metadata,
            **resolution,
            **comp_args,
        )
        for (h, w), ds in zip(shapes[1:], downsamples[1:]):
            res = (
                {"resolution": (1e4 / (spec.mpp * ds),) * 2, "resolutionunit": "CENTIMETER"}
                if write_mpp
                else {}
            )
            tw.write(
                _tiles(spec, ds, (h, w), tile),
                shape=(h, w, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                subfiletype=1,
                metadata=None,
                **res,
                **comp_args,
            )
        if associated:
            if fmt == "ome-tiff":
                tw.write(
                    _label_image(spec.seed),
                    photometric="rgb",
                    metadata={"axes": "YXS", "Name": "label"},
                )
            else:
                tw.write(
                    _label_image(spec.seed),
                    photometric="rgb",
                    metadata=None,
                    subfiletype=1,
                    description="label",
                )


def _write_ome_zarr(
    path: Path,
    spec: SyntheticSlide,
    shapes: list[tuple[int, int]],
    downsamples: list[float],
    tile: int,
    write_mpp: bool,
) -> None:
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    datasets = []
    for i, ((h, w), ds) in enumerate(zip(shapes, downsamples)):
        array = group.create_array(str(i), shape=(3, h, w), chunks=(3, tile, tile), dtype=np.uint8)
        for r in range(0, h, tile):
            for c in range(0, w, tile):
                block = spec.render(c * ds, r * ds, min(tile, w - c), min(tile, h - r), ds)
                array[:, r : r + block.shape[0], c : c + block.shape[1]] = block.transpose(2, 0, 1)
        scale = [1.0, spec.mpp * ds, spec.mpp * ds] if write_mpp else [1.0, ds, ds]
        datasets.append(
            {"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": scale}]}
        )
    unit = {"unit": "micrometer"} if write_mpp else {}
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "name": "synthetic slide",
            "axes": [
                {"name": "c", "type": "channel"},
                {"name": "y", "type": "space", **unit},
                {"name": "x", "type": "space", **unit},
            ],
            "datasets": datasets,
        }
    ]


def write_giant_slide(
    path: str | os.PathLike[str], size: int = 100_000, mpp: float = 0.25, tile: int = 512
) -> SyntheticSlide:
    """A ``size × size`` pyramidal SVS whose file is tiny.

    Every tile of every level but the coarsest points at one shared compressed tile (legal
    TIFF); the coarsest level (at most ~1600 px) is rendered for real. Decoding level 0 whole
    would need ``3 size²`` bytes (30 GB for the default), so code that opens or displays it
    proves it never does.
    """
    import tifffile
    from imagecodecs import jpeg8_encode

    path = Path(path)
    spec = default_sample_spec(size, size, mpp)
    factors, f = [], 4
    while size // f >= 400:
        factors.append(f)
        f *= 4
    shapes = spec.level_shapes(tuple(factors))

    def shared_tiles(shape: tuple[int, int], downsample: float) -> Iterator[tuple[bytes, int]]:
        centre = 0.45 * size
        jpeg = jpeg8_encode(spec.render(centre, centre, tile, tile, downsample), level=80)
        n_tiles = math.ceil(shape[0] / tile) * math.ceil(shape[1] / tile)
        for _ in range(n_tiles - 1):
            yield b"", len(jpeg)  # same offset as the next tile: all share one blob
        yield jpeg, len(jpeg)

    tmp = _atomic_target(path)
    with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        desc = (
            f"Aperio Image Library v12.0.0\r\n{size}x{size} ({tile}x{tile}) JPEG/RGB Q=80"
            f"|AppMag = {10 / mpp:g}|MPP = {mpp:.4f}"
        )
        tw.write(
            shared_tiles(shapes[0], 1.0),
            shape=(size, size, 3),
            dtype=np.uint8,
            tile=(tile, tile),
            photometric="ycbcr",
            subsampling=(2, 2),
            compression="jpeg",
            description=desc,
            metadata=None,
        )
        thumb = spec.render(0, 0, 512, 512, size / 512)
        tw.write(thumb, photometric="rgb", metadata=None, description="thumbnail")
        for i, ((h, w), ds) in enumerate(zip(shapes[1:], factors)):
            common = {
                "shape": (h, w, 3),
                "dtype": np.uint8,
                "tile": (tile, tile),
                "compression": "jpeg",
                "metadata": None,
                "description": f"{size}x{size} -> {w}x{h}",
            }
            if i == len(factors) - 1:
                tw.write(_tiles(spec, float(ds), (h, w), tile), photometric="rgb", **common)
            else:
                tw.write(
                    shared_tiles((h, w), float(ds)),
                    photometric="ycbcr",
                    subsampling=(2, 2),
                    **common,
                )
    os.replace(tmp, path)
    return replace(spec, path=path)


@dataclass(frozen=True)
class SyntheticCohort:
    """A synthetic cohort whose expression truth is known.

    Each slide holds one piece of every tissue type, of random size; a *driven* gene's
    log2(expression + 1) is ``5 + 4 · Σ_t weight[gene, t] · fraction_t + noise`` where
    ``fraction_t`` is the share of the slide's tissue area of type ``t``; *noise* genes ignore
    the slide.
    """

    manifest: Path
    expression: Path
    slides: tuple[SyntheticSlide, ...]
    fractions: np.ndarray
    driven: dict[str, np.ndarray]
    noise_genes: tuple[str, ...]


def write_synthetic_cohort(
    directory: str | os.PathLike[str],
    n_slides: int = 24,
    n_patients: int | None = None,
    size: int = 1024,
    mpp: float = 1.0,
    n_driven: int = 4,
    n_noise: int = 4,
    noise: float = 0.1,
    seed: int = 0,
    genes_as_rows: bool = True,
) -> SyntheticCohort:
    """Write slides, ``manifest.csv`` and ``expression.csv`` for a synthetic cohort.

    Parameters
    ----------
    directory
        Output folder (created).
    n_slides, n_patients
        Samples, and patients they belong to (default: one or two slides per patient).
    size, mpp
        Slide side in pixels and µm per pixel.
    n_driven, n_noise
        Genes driven by tissue composition, and pure-noise genes.
    noise
        Standard deviation of the noise added to driven genes (log2 scale).
    genes_as_rows
        Write the expression table genes × samples (True) or samples × genes.
    """
    import pandas as pd

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_types = len(DEFAULT_TISSUE_TYPES)
    n_patients = n_patients or max(2, (2 * n_slides) // 3)
    patients = [f"P{i % n_patients:03d}" for i in range(n_slides)]
    slides, fractions = [], []
    for i in range(n_slides):
        regions = []
        for t in range(n_types):
            r = size * rng.uniform(0.06, 0.16)
            cx = size * (t + 0.5) / n_types
            regions.append(TissueRegion(cx, size * rng.uniform(0.3, 0.7), r, r * 1.4, t))
        spec = SyntheticSlide(
            size,
            size,
            mpp,
            regions=tuple(regions),
            seed=seed * 1000 + i,
            objective_power=round(10 / mpp, 1),
        )
        path = directory / f"slide{i:03d}.tif"
        if not path.exists():
            write_synthetic_slide(
                path, spec, format="tiff", compression="zlib", level_factors=(4,), associated=False
            )
        slides.append(replace(spec, path=path))
        areas = np.array([r.area_px for r in regions])
        fractions.append(areas / areas.sum())
    fractions_arr = np.array(fractions)
    # each driven gene weighs the tissue types from -1 to +1 in its own order, so every one
    # varies as much with composition
    driven = {f"DRIVEN{g}": rng.permutation(np.linspace(-1, 1, n_types)) for g in range(n_driven)}
    log_expr = {}
    for gene, weight in driven.items():
        log_expr[gene] = 5 + 4 * fractions_arr @ weight + rng.normal(0, noise, n_slides)
    noise_genes = tuple(f"NOISE{g}" for g in range(n_noise))
    for gene in noise_genes:
        log_expr[gene] = 5 + rng.normal(0, 0.5, n_slides)
    samples = [f"S{i:03d}" for i in range(n_slides)]
    table = pd.DataFrame({g: 2.0**v - 1 for g, v in log_expr.items()}, index=samples)
    expression = directory / "expression.csv"
    (table.T if genes_as_rows else table).to_csv(expression)
    manifest = directory / "manifest.csv"
    pd.DataFrame(
        {"slide": [s.path.name for s in slides], "sample_id": samples, "patient_id": patients}
    ).to_csv(manifest, index=False)
    return SyntheticCohort(manifest, expression, tuple(slides), fractions_arr, driven, noise_genes)


def write_synthetic_spots(
    directory: str | os.PathLike[str],
    slides: tuple[SyntheticSlide, ...] | list[SyntheticSlide],
    spacing_px: float = 100.0,
    spot_diameter_um: float = 55.0,
    n_driven: int = 3,
    n_noise: int = 2,
    noise: float = 0.2,
    seed: int = 0,
) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """Spatial-transcriptomics-like data for ``slides``: ``spots.csv`` and ``counts.csv``.

    Spots sit on a square lattice over the tissue; a driven gene's log2(count + 1) is
    ``4 + 2 · weight[gene, tissue type under the spot] + noise``; noise genes ignore it.
    Returns the two paths and the driven genes' weights.
    """
    import pandas as pd

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_types = len(DEFAULT_TISSUE_TYPES)
    driven = {
        f"SPOT_DRIVEN{g}": rng.permutation(np.linspace(-1, 1, n_types)) for g in range(n_driven)
    }
    rows, kinds = [], []
    for slide in slides:
        ys, xs = np.mgrid[
            spacing_px / 2 : slide.height : spacing_px, spacing_px / 2 : slide.width : spacing_px
        ]
        kind = slide.tissue_type_map(xs.ravel(), ys.ravel())
        for x, y, k in zip(xs.ravel(), ys.ravel(), kind):
            if k >= 0:
                rows.append(
                    {
                        "spot_id": f"{Path(slide.path).stem}_{len(rows)}",
                        "slide": os.path.relpath(slide.path, directory),
                        "x": float(x),
                        "y": float(y),
                        "spot_diameter_um": spot_diameter_um,
                    }
                )
                kinds.append(int(k))
    kinds_arr = np.array(kinds)
    spots = pd.DataFrame(rows)
    counts = {}
    for gene, weight in driven.items():
        counts[gene] = 2.0 ** (4 + 2 * weight[kinds_arr] + rng.normal(0, noise, len(rows))) - 1
    for g in range(n_noise):
        counts[f"SPOT_NOISE{g}"] = 2.0 ** (4 + rng.normal(0, 0.5, len(rows))) - 1
    spots_path, counts_path = directory / "spots.csv", directory / "counts.csv"
    spots.to_csv(spots_path, index=False)
    pd.DataFrame(counts, index=spots["spot_id"]).to_csv(counts_path)
    return spots_path, counts_path, driven
