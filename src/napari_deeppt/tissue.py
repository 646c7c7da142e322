"""Tissue detection on a low-resolution level: :func:`detect_tissue` → :class:`TissueMask`."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DeepPTError, NoTissueWarning
from .geometry import GridPlacement
from .progress import CancelLike, ProgressLike, check_cancelled, make_progress
from .slide import as_slide, resize_rgb

__all__ = ["TissueMask", "TissueParams", "detect_tissue"]

MASK_FORMAT_VERSION = 1


@dataclass(frozen=True)
class TissueParams:
    """Parameters of :func:`detect_tissue` (all physical sizes in µm).

    Attributes
    ----------
    mpp
        Resolution of the mask; read from the nearest pyramid level at least this fine.
    saturation_threshold
        HSV saturation above which a pixel is tissue; None picks it by Otsu's method.
    min_saturation
        Lower bound on the Otsu threshold, so a blank slide does not turn noise into tissue.
    max_brightness
        Pixels whose mean intensity is above this fraction of 255 are glass.
    closing_um, opening_um
        Radii of the morphological closing (bridges small gaps) and opening (removes specks).
    min_area_um2
        Tissue pieces smaller than this are dropped.
    max_hole_area_um2
        Holes smaller than this inside tissue are filled (0 fills none).
    exclude_dark, dark_threshold
        Drop near-black artefacts (folds, dust, black ink) darker than this fraction of 255.
    exclude_pen
        Drop green/blue/black pen marks (pixels greener than red: never H&E).
    """

    mpp: float = 8.0
    saturation_threshold: float | None = None
    min_saturation: float = 0.07
    max_brightness: float = 0.9
    closing_um: float = 24.0
    opening_um: float = 16.0
    min_area_um2: float = 20_000.0
    max_hole_area_um2: float = 100_000.0
    exclude_dark: bool = True
    dark_threshold: float = 0.12
    exclude_pen: bool = False

    def __post_init__(self) -> None:
        def check(name: str, ok: bool, rule: str) -> None:
            if not ok:
                raise ValueError(
                    f"tissue parameter {name}={getattr(self, name)!r} is out of range: {rule}"
                )

        check("mpp", self.mpp > 0, "must be > 0 µm/px (typical 8–16)")
        if self.saturation_threshold is not None:
            check("saturation_threshold", 0 <= self.saturation_threshold < 1, "must be in [0, 1)")
        check("min_saturation", 0 <= self.min_saturation < 1, "must be in [0, 1)")
        check("max_brightness", 0 < self.max_brightness <= 1, "must be in (0, 1]")
        check(
            "dark_threshold",
            0 <= self.dark_threshold < self.max_brightness,
            "must be in [0, max_brightness)",
        )
        for name in ("closing_um", "opening_um", "min_area_um2", "max_hole_area_um2"):
            check(name, getattr(self, name) >= 0, "must be ≥ 0")


@dataclass(frozen=True, repr=False)
class TissueMask:
    """A boolean tissue mask and its exact placement on level 0.

    Mask pixel ``(r, c)`` covers level-0 pixels ``[c·dx, (c+1)·dx) × [r·dy, (r+1)·dy)`` where
    ``(dx, dy) = downsample_xy``; the grid covers the slide exactly.
    """

    mask: np.ndarray
    downsample_xy: tuple[float, float]
    slide_dimensions: tuple[int, int]
    slide_mpp: float | None
    params: TissueParams = field(default_factory=TissueParams)
    source_level: int = 0
    slide_path: str = ""
    threshold: float = float("nan")

    def __repr__(self) -> str:
        h, w = self.mask.shape
        area = (
            f"{self.area_um2 / 1e6:.3f} mm² of tissue"
            if self.slide_mpp
            else f"{self.area_px:.0f} px² of tissue"
        )
        name = Path(self.slide_path).name if self.slide_path else "?"
        return f"TissueMask({w}×{h} at {self.downsample:g}× downsample, {area}, slide {name!r})"

    @property
    def downsample(self) -> float:
        return float(sum(self.downsample_xy) / 2)

    @property
    def placement(self) -> GridPlacement:
        return GridPlacement(self.downsample_xy, self.downsample_xy)

    @property
    def mpp_actual(self) -> float | None:
        """µm per mask pixel."""
        return None if self.slide_mpp is None else self.slide_mpp * self.downsample

    @property
    def is_empty(self) -> bool:
        return not bool(self.mask.any())

    @property
    def area_px(self) -> float:
        """Tissue area in level-0 pixels²."""
        return float(self.mask.sum()) * self.downsample_xy[0] * self.downsample_xy[1]

    @property
    def area_um2(self) -> float:
        if self.slide_mpp is None:
            raise DeepPTError(f"{self.slide_path}: the mask's slide has no pixel size")
        return self.area_px * self.slide_mpp**2

    def contains(self, x: Any, y: Any) -> Any:
        """Whether level-0 points ``(x, y)`` lie on tissue (False outside the slide)."""
        x, y = np.asarray(x, float), np.asarray(y, float)
        col = np.floor(x / self.downsample_xy[0]).astype(np.int64)
        row = np.floor(y / self.downsample_xy[1]).astype(np.int64)
        h, w = self.mask.shape
        inside = (row >= 0) & (row < h) & (col >= 0) & (col < w)
        out = np.zeros(np.broadcast(x, y).shape, bool)
        out[inside] = self.mask[row[inside], col[inside]]
        return out if out.ndim else bool(out)

    def fraction(self, x: Any, y: Any, width: Any, height: Any) -> np.ndarray:
        """Exact fraction of each level-0 rectangle covered by tissue (area-weighted)."""
        sat = np.zeros((self.mask.shape[0] + 1, self.mask.shape[1] + 1), np.float64)
        sat[1:, 1:] = self.mask.cumsum(0).cumsum(1)
        dx, dy = self.downsample_xy
        x0, y0 = np.asarray(x, float) / dx, np.asarray(y, float) / dy
        x1 = x0 + np.asarray(width, float) / dx
        y1 = y0 + np.asarray(height, float) / dy
        total = (
            _sat_at(sat, x1, y1)
            - _sat_at(sat, x0, y1)
            - _sat_at(sat, x1, y0)
            + _sat_at(sat, x0, y0)
        )
        return np.clip(total / ((x1 - x0) * (y1 - y0)), 0.0, 1.0)

    def pieces(self) -> np.ndarray:
        """Connected tissue pieces labelled 1..n (0 is background), for a Labels layer."""
        from scipy import ndimage

        labels, _ = ndimage.label(self.mask)
        return labels.astype(np.int32)

    def restrict(
        self, regions: Any, *, exclude: bool = False, classification: str | None = None
    ) -> TissueMask:
        """The tissue inside (or, with ``exclude``, outside) regions of interest.

        Parameters
        ----------
        regions
            A GeoJSON file (QuPath annotations, say), :class:`~napari_deeppt.geometry.Region`
            objects, or ``(n, 2)`` arrays of level-0 ``(x, y)`` vertices.
        exclude
            Drop the tissue inside the regions instead (pen marks, folds, necrosis).
        classification
            With a GeoJSON file: only its objects of this class (e.g. ``"Tumor"``).

        Returns
        -------
        TissueMask
            A new mask; mask pixels count as inside when their centre is.
        """
        from dataclasses import replace

        from .geometry import rasterize_regions
        from .io.geojson import as_regions

        inside = rasterize_regions(
            as_regions(regions, classification), self.mask.shape, self.downsample_xy
        )
        keep = ~inside if exclude else inside
        return replace(self, mask=self.mask & keep)

    def to_geojson(self, path: str | Path, overwrite: bool = False) -> Path:
        """Tissue outlines as QuPath GeoJSON annotations (level-0 px), one per piece.

        See :mod:`napari_deeppt.io.geojson`.
        """
        from .io.geojson import mask_features, write_geojson

        return write_geojson(mask_features(self), path, overwrite=overwrite)

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the mask and its placement to an ``.npz`` file."""
        from .io import atomic_path

        path = Path(path)
        meta = {
            "format_version": MASK_FORMAT_VERSION,
            "downsample_xy": self.downsample_xy,
            "slide_dimensions": self.slide_dimensions,
            "slide_mpp": self.slide_mpp,
            "params": asdict(self.params),
            "source_level": self.source_level,
            "slide_path": self.slide_path,
            "threshold": self.threshold,
        }
        with atomic_path(path, overwrite=overwrite) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, mask=self.mask, meta=np.array(json.dumps(meta)))
        return path

    @classmethod
    def load(cls, path: str | Path) -> TissueMask:
        """Read a mask written by :meth:`save`."""
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                mask = data["mask"].astype(bool)
        except Exception as exc:
            raise DeepPTError(
                f"{path}: not a tissue mask written by napari-deeppt ({exc})"
            ) from exc
        return cls(
            mask=mask,
            downsample_xy=tuple(meta["downsample_xy"]),
            slide_dimensions=tuple(meta["slide_dimensions"]),
            slide_mpp=meta["slide_mpp"],
            params=TissueParams(**meta["params"]),
            source_level=meta["source_level"],
            slide_path=meta["slide_path"],
            threshold=meta["threshold"],
        )


def _sat_at(sat: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of a summed-area table: the exact integral of a pixel image."""
    h, w = sat.shape[0] - 1, sat.shape[1] - 1
    x = np.clip(x, 0, w)
    y = np.clip(y, 0, h)
    x0 = np.minimum(np.floor(x).astype(np.int64), w - 1)
    y0 = np.minimum(np.floor(y).astype(np.int64), h - 1)
    fx, fy = x - x0, y - y0
    return (
        (1 - fx) * (1 - fy) * sat[y0, x0]
        + fx * (1 - fy) * sat[y0, x0 + 1]
        + (1 - fx) * fy * sat[y0 + 1, x0]
        + fx * fy * sat[y0 + 1, x0 + 1]
    )


def _remove_small(mask: np.ndarray, min_pixels: float, keep_border: bool = False) -> np.ndarray:
    """Drop connected pieces of fewer than ``min_pixels`` pixels (8-connectivity, scikit-image).

    With ``keep_border``, pieces touching the image border are always kept (used on the
    background, so that glass around the tissue is never "filled" as a hole).
    """
    import inspect

    from skimage import morphology, segmentation

    inner = segmentation.clear_border(mask) if keep_border else mask
    size = max(0, math.ceil(min_pixels))
    parameters = inspect.signature(morphology.remove_small_objects).parameters
    if "max_size" in parameters:  # scikit-image ≥ 0.26 removes pieces of ≤ max_size pixels
        kept = morphology.remove_small_objects(inner, max_size=max(size - 1, 0), connectivity=2)
    else:  # earlier versions remove pieces of < min_size pixels
        kept = morphology.remove_small_objects(inner, min_size=size, connectivity=2)
    return kept | (mask & ~inner) if keep_border else kept


def _read_level(slide: Any, level: int, progress: ProgressLike, cancel: CancelLike) -> np.ndarray:
    array = slide.levels[level]
    bands = array.chunks[0]
    out = np.empty(array.shape, array.dtype)
    row = 0
    with make_progress(progress, len(bands), "reading low-resolution level") as bar:
        for band in bands:
            check_cancelled(cancel, "tissue detection")
            out[row : row + band] = array[row : row + band].compute(scheduler="threads")
            row += band
            bar.update()
    return out


def detect_tissue(
    slide: Any,
    *,
    progress: ProgressLike = None,
    cancel: CancelLike = None,
    **params: Any,
) -> TissueMask:
    """Find tissue on a low-resolution level (never level 0 of a pyramid).

    Otsu's threshold on HSV saturation combined with a brightness test, then morphological
    closing and opening, hole filling and removal of small pieces; optionally drops near-black
    artefacts and pen marks.

    Parameters
    ----------
    slide
        A :class:`~napari_deeppt.slide.Slide` or a path.
    progress, cancel
        See :mod:`napari_deeppt.progress`.
    **params
        Fields of :class:`TissueParams` (``mpp``, ``min_area_um2``, ``exclude_pen`` ...).

    Returns
    -------
    TissueMask
        Empty (with a :class:`~napari_deeppt.errors.NoTissueWarning`) when nothing is found.
    """
    options = TissueParams(**params)
    slide = as_slide(slide)
    slide.require_rgb("tissue detection")
    mpp0 = slide.require_mpp("tissue detection (sizes and areas are in µm)")
    level, image, downsample_xy = _mask_image(slide, options.mpp / mpp0, progress, cancel)
    mask_mpp = mpp0 * (downsample_xy[0] + downsample_xy[1]) / 2
    check_cancelled(cancel, "tissue detection")
    tissue, artefacts, threshold = _threshold(image, options)
    tissue = _clean(tissue, artefacts, options, mask_mpp)
    result = TissueMask(
        mask=np.ascontiguousarray(tissue, bool),
        downsample_xy=downsample_xy,
        slide_dimensions=slide.dimensions,
        slide_mpp=mpp0,
        params=options,
        source_level=level,
        slide_path=str(slide.path),
        threshold=float(threshold),
    )
    if result.is_empty:
        warnings.warn(
            NoTissueWarning(
                f"{slide.path}: no tissue found (saturation threshold {threshold:.3f}, "
                f"min_area_um2={options.min_area_um2:g}). If the slide has tissue, lower "
                "min_saturation or min_area_um2, or raise max_brightness."
            ),
            stacklevel=2,
        )
    return result


def _mask_image(
    slide: Any, target_ds: float, progress: ProgressLike, cancel: CancelLike
) -> tuple[int, np.ndarray, tuple[float, float]]:
    """The pyramid level read for the mask, resized to tile level 0 exactly at ``target_ds``."""
    level = slide.best_level_for_downsample(max(target_ds, 1.0))
    image = _read_level(slide, level, progress, cancel)
    w0, h0 = slide.dimensions
    mask_w = max(1, round(w0 / max(target_ds, 1.0)))
    mask_h = max(1, round(h0 / max(target_ds, 1.0)))
    return level, resize_rgb(image, mask_w, mask_h), (w0 / mask_w, h0 / mask_h)


def _threshold(image: np.ndarray, options: TissueParams) -> tuple[np.ndarray, np.ndarray, float]:
    """Tissue (saturated and not too bright) and artefacts (dark, pen), and the threshold."""
    from scipy import ndimage
    from skimage import filters

    rgb = image.astype(np.float32)
    vmax = rgb.max(axis=2)
    saturation = np.where(vmax > 0, (vmax - rgb.min(axis=2)) / np.maximum(vmax, 1), 0.0)
    grey = rgb.mean(axis=2)
    if options.saturation_threshold is not None:
        threshold = options.saturation_threshold
    else:
        threshold = options.min_saturation
        if np.ptp(saturation) > 0:
            threshold = max(float(filters.threshold_otsu(saturation)), options.min_saturation)
    tissue = (saturation > threshold) & (grey < options.max_brightness * 255)
    artefacts = np.zeros_like(tissue)
    if options.exclude_dark:
        artefacts |= grey < options.dark_threshold * 255
    if options.exclude_pen:
        pen = (rgb[..., 1] > rgb[..., 0] + 10) & (saturation > threshold)
        artefacts |= ndimage.binary_dilation(pen, iterations=2)
    return tissue & ~artefacts, artefacts, float(threshold)


def _disk(radius_um: float, mask_mpp: float) -> np.ndarray | None:
    radius = round(radius_um / mask_mpp)
    if radius < 1:
        return None
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return xx**2 + yy**2 <= radius**2


def _clean(
    tissue: np.ndarray, artefacts: np.ndarray, options: TissueParams, mask_mpp: float
) -> np.ndarray:
    """Closing, opening, small holes filled and small pieces dropped (sizes in µm)."""
    from scipy import ndimage

    if (footprint := _disk(options.closing_um, mask_mpp)) is not None:
        pad = footprint.shape[0]  # closing must not glue tissue to the slide border
        tissue = ndimage.binary_closing(np.pad(tissue, pad), footprint)[pad:-pad, pad:-pad]
    if (footprint := _disk(options.opening_um, mask_mpp)) is not None:
        tissue = ndimage.binary_opening(tissue, footprint)
    tissue &= ~artefacts
    pixel_area = mask_mpp**2
    if options.max_hole_area_um2 > 0:
        holes = _remove_small(~tissue, options.max_hole_area_um2 / pixel_area, keep_border=True)
        tissue = ~holes
    if options.min_area_um2 > 0:
        tissue = _remove_small(tissue, options.min_area_um2 / pixel_area)
    return tissue
