"""Features per training sample, one loop for both kinds of sample.

A bulk sample is a slide: its tissue tiles (inside its regions of interest, if any) are the
rows of its feature store. A spot is one tile centred on it (:func:`spot_grid`), so each
section's slide is read once and each spot is one row of the section's store.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DeepPTError
from ..progress import CancelLike, ProgressLike, check_cancelled, make_progress
from .feature_source import FeatureSource
from .inputs import TrainingInputs

__all__ = ["TileSettings", "sample_features", "spot_grid"]


@dataclass(frozen=True)
class TileSettings:
    """Where the tiles of a training run come from (stored in the bundle's ``feature``)."""

    tile_px: int
    tile_mpp: float
    min_tissue: float
    roi_class: str | None = None

    def __post_init__(self) -> None:
        from ..tiles import TileGridParams

        TileGridParams(tile_px=self.tile_px, mpp=self.tile_mpp, min_tissue=self.min_tissue)


def spot_grid(slide: Any, x: np.ndarray, y: np.ndarray, tile_px: int, tile_mpp: float) -> Any:
    """A tile grid with one tile of ``tile_px`` at ``tile_mpp`` centred on each spot.

    Tiles are never shifted: one reaching past the slide's edge reads the outside as
    white (255), like :meth:`~napari_deeppt.slide.Slide.read_region`.

    Parameters
    ----------
    slide
        The spots' :class:`~napari_deeppt.slide.Slide` (it needs a pixel size).
    x, y
        Spot centres in level-0 pixels.
    tile_px, tile_mpp
        Tile size in pixels and its resolution in µm per pixel.

    Returns
    -------
    TileGrid
        One tile per spot, in the order given.
    """
    from ..tiles import TileGrid, TileGridParams

    mpp0 = slide.require_mpp("spot tiles")
    size0 = tile_px * tile_mpp / mpp0
    n = len(x)
    xy = np.round(np.stack([np.asarray(x, float), np.asarray(y, float)], 1) - size0 / 2)
    return TileGrid(
        xy=xy.astype(np.int64),
        rowcol=np.stack([np.zeros(n, np.int64), np.arange(n)], 1),
        tissue_fraction=np.ones(n, np.float32),
        edge_fraction=np.full(n, np.nan, np.float32),
        grid_shape=(1, max(n, 1)),
        size_level0=float(size0),
        stride_level0=float(size0),
        params=TileGridParams(tile_px=tile_px, mpp=tile_mpp, min_tissue=0.0),
        slide_dimensions=slide.dimensions,
        slide_mpp=float(mpp0),
        slide_path=str(slide.path),
    )


def sample_features(
    inputs: TrainingInputs,
    tiles: TileSettings,
    feature_options: dict[str, Any],
    progress: ProgressLike,
    cancel: CancelLike,
) -> tuple[FeatureSource, dict[str, Any]]:
    """Where the features of every sample are, slide by slide (extracted when needed).

    Features are extracted into the feature cache (or read from it) and stay there: the
    result names rows of the stores, never holds them. A manifest row with a ``features``
    column names a store made before (``deeppt features --formats zarr``, a cohort run);
    its slide is not read.

    Parameters
    ----------
    inputs
        Checked inputs (bulk slides or spots).
    tiles
        Tile size, resolution, tissue threshold and region class.
    feature_options
        :func:`~napari_deeppt.features.extract_features` keywords shared by every slide.
    progress, cancel
        See :mod:`napari_deeppt.progress`.

    Returns
    -------
    source : FeatureSource
        Sample ``i``'s ``(n_tiles, D)`` features (one row for a spot).
    provenance : dict
        The first store's provenance: the extractor, its weights and the stain.

    Raises
    ------
    DeepPTError
        A slide without tissue tiles, or stores made another way than each other or than
        asked (extractor, weights, tile size, stain, precision).
    """
    from ..features import extract_features
    from ..features.store import cache_entry, open_features

    arrays: list[Any] = []
    parts: list[tuple[int, int, int]] = [(0, 0, 0)] * len(inputs.ids)
    first: dict[str, Any] | None = None
    jobs = _spot_jobs(inputs, tiles) if inputs.spots else _slide_jobs(inputs, tiles)
    total = len(inputs.slides) if inputs.spots else len(inputs.table)
    label = "spot features per slide" if inputs.spots else "features per slide"
    with make_progress(progress, total, label, unit="slide") as bar:
        check_cancelled(cancel, "training")
        for slide, grid, rows in jobs:
            if grid is None:  # precomputed: `slide` is the store
                store = slide
            else:
                fs = extract_features(slide, grid, **feature_options, cancel=cancel)
                store = cache_entry(feature_options["cache_dir"], fs.provenance["cache_key"])
            array, provenance, grid_meta = open_features(store)
            if grid is None:
                rows = _whole_store(store, array, rows[0])
            first = first or provenance
            _require_same_features(store, provenance, grid_meta, first, tiles, feature_options)
            arrays.append(array)
            for row, start, stop in _row_runs(rows):
                parts[row] = (len(arrays) - 1, start, stop)
            bar.update()
            check_cancelled(cancel, "training")
    return FeatureSource.from_parts(arrays, parts), first or {}


def _whole_store(store: Any, array: Any, row: int) -> np.ndarray:
    """Every row of a precomputed store belongs to manifest row ``row``; refuse an empty one."""
    if array.shape[0] == 0:
        raise DeepPTError(f"{store}: the feature store has no tiles; remove its manifest row")
    return np.full(array.shape[0], row)


def _row_runs(rows: np.ndarray) -> Iterator[tuple[int, int, int]]:
    """Each sample of a store and its rows ``start:stop`` (rows ascend, one run each)."""
    starts = np.flatnonzero(np.diff(rows, prepend=-1))
    stops = np.append(starts[1:], len(rows))
    for start, stop in zip(starts, stops, strict=True):
        yield int(rows[start]), int(start), int(stop)


def _require_same_features(
    store: Any,
    provenance: dict[str, Any],
    grid: dict[str, Any],
    first: dict[str, Any],
    tiles: TileSettings,
    feature_options: dict[str, Any],
) -> None:
    """Refuse a store whose features were made another way than asked or than the first's."""
    params = grid.get("params", {})
    asked = {
        "extractor": feature_options["extractor"],
        "tile_px": tiles.tile_px,
        "tile_mpp": tiles.tile_mpp,
    }
    found = {
        "extractor": provenance.get("extractor"),
        "tile_px": params.get("tile_px"),
        "tile_mpp": params.get("mpp"),
    }
    for key in ("weights_hash", "stain", "input_size", "mean", "std", "int8"):
        asked[key], found[key] = first.get(key), provenance.get(key)
    asked["precision"] = first.get("precision", "float32")  # stores from before int8: fp32
    found["precision"] = provenance.get("precision", "float32")
    differ = [k for k in asked if asked[k] != found[k]]
    if differ:
        said = ", ".join(f"{k}={found[k]!r} (training: {asked[k]!r})" for k in differ)
        raise DeepPTError(
            f"{store}: its features were made with {said}; one model needs every sample's "
            "features made the same way — extract them again, or train with those settings"
        )


def _slide_jobs(inputs: TrainingInputs, tiles: TileSettings) -> Iterator[tuple[Any, Any, Any]]:
    """Each manifest slide, its tissue tile grid, and its row for every tile."""
    from ..tiles import detect_and_tile

    table = inputs.table
    rois = table["roi"] if "roi" in table.columns else [None] * len(table)
    stores = table["features"] if "features" in table.columns else [None] * len(table)
    for i, (path, roi, store) in enumerate(zip(table["slide"], rois, stores, strict=True)):
        if store is not None:
            yield store, None, np.full(1, i)  # rows of a precomputed store: all of it
            continue
        _, grid = detect_and_tile(
            path,
            tile_px=tiles.tile_px,
            mpp=tiles.tile_mpp,
            min_tissue=tiles.min_tissue,
            roi=roi,
            roi_class=tiles.roi_class if roi else None,
        )
        if len(grid) == 0:
            where = f" inside {roi}" if roi else ""
            raise DeepPTError(
                f"{path}: no tissue tiles{where}; remove it from the manifest or adjust min_tissue"
            )
        yield path, grid, np.full(len(grid), i)


def _spot_jobs(inputs: TrainingInputs, tiles: TileSettings) -> Iterator[tuple[Any, Any, Any]]:
    """Each section's slide, one tile centred on each of its spots, and the spots' rows."""
    x, y = inputs.table["x"].to_numpy(float), inputs.table["y"].to_numpy(float)
    for label, slide in inputs.slides.items():
        rows = np.flatnonzero(inputs.groups == label)
        grid = spot_grid(slide, x[rows], y[rows], tiles.tile_px, tiles.tile_mpp)
        yield slide, grid, rows
