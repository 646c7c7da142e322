"""Features per training sample, one loop for both kinds of sample.

A bulk sample is a slide: its tissue tiles (inside its regions of interest, if any) form a
``(n_tiles, D)`` tensor. A spot is one tile centred on it (:func:`spot_grid`), so each
section's slide is read once and its tiles are dealt out to its spots as ``(1, D)`` tensors.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DeepPTError
from ..progress import CancelLike, ProgressLike, check_cancelled, make_progress
from .inputs import TrainingInputs

__all__ = ["TileSettings", "sample_features", "spot_grid"]


@dataclass(frozen=True)
class TileSettings:
    """Where the tiles of a training run come from (stored in the bundle's ``feature``)."""

    tile_px: int
    tile_mpp: float
    min_tissue: float
    roi_class: str | None = None


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
) -> tuple[list[Any], Any]:
    """The features of every sample, slide by slide.

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
    features : list of torch.Tensor
        ``features[i]``: the ``(n_tiles, D)`` float32 tensor of sample ``i`` (``(1, D)`` for
        a spot).
    first : FeatureSet
        The first slide's features, whose provenance names the extractor and stain.
    """
    import torch

    from ..features import extract_features

    features: list[Any] = [None] * len(inputs.ids)
    first = None
    jobs = _spot_jobs(inputs, tiles) if inputs.spots else _slide_jobs(inputs, tiles)
    total = len(inputs.slides) if inputs.spots else len(inputs.table)
    label = "spot features per slide" if inputs.spots else "features per slide"
    with make_progress(progress, total, label, unit="slide") as bar:
        check_cancelled(cancel, "training")
        for slide, grid, rows in jobs:
            fs = extract_features(slide, grid, **feature_options, cancel=cancel)
            first = fs if first is None else first
            starts = np.flatnonzero(np.diff(rows, prepend=-1))  # rows ascend, one run each
            for row, chunk in zip(rows[starts], np.split(fs.features, starts[1:]), strict=True):
                features[row] = torch.tensor(chunk, dtype=torch.float32)
            bar.update()
            check_cancelled(cancel, "training")
    return features, first


def _slide_jobs(inputs: TrainingInputs, tiles: TileSettings) -> Iterator[tuple[Any, Any, Any]]:
    """Each manifest slide, its tissue tile grid, and its row for every tile."""
    from ..tiles import detect_and_tile

    table = inputs.table
    rois = table["roi"] if "roi" in table.columns else [None] * len(table)
    for i, (path, roi) in enumerate(zip(table["slide"], rois, strict=True)):
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
