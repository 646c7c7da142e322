"""Coarser levels computed from the coarsest stored one, and which stored pixels they read.

A slide whose pyramid stops early (or a single-level TIFF) gets levels derived lazily by
block averaging, ``DERIVED_LEVEL_FACTOR`` per step, until the coarsest fits in
``DERIVED_LEVEL_MAX_SIZE`` pixels. Pixel ``(r, c)`` of a level ``k`` steps below the coarsest
stored level is the mean of stored pixels ``[r·f, (r+1)·f) × [c·f, (c+1)·f)`` with
``f = DERIVED_LEVEL_FACTOR ** k`` (each step crops to a multiple of the factor at the end
only), so :func:`stored_windows` maps a region read there to the stored pixels behind it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["DERIVED_LEVEL_FACTOR", "DERIVED_LEVEL_MAX_SIZE", "derive_levels", "stored_windows"]

#: Coarser levels are derived lazily until the coarsest is at most this many pixels across.
DERIVED_LEVEL_MAX_SIZE = 2048
#: Factor between derived levels.
DERIVED_LEVEL_FACTOR = 4


def derive_levels(coarsest: Any) -> list[Any]:
    """Lazy (dask) levels below ``coarsest``, each ``DERIVED_LEVEL_FACTOR`` times coarser.

    Parameters
    ----------
    coarsest
        The coarsest stored level: a dask array ``(H, W, C)``.

    Returns
    -------
    list of dask.array.Array
        Block means, finest first, down to the first at most ``DERIVED_LEVEL_MAX_SIZE`` pixels
        across; empty when ``coarsest`` is already that small.
    """
    import dask.array as da

    f, out, src = DERIVED_LEVEL_FACTOR, [], coarsest
    while max(src.shape[:2]) > DERIVED_LEVEL_MAX_SIZE:
        h, w = (src.shape[0] // f) * f, (src.shape[1] // f) * f
        src = src[:h, :w]
        row_chunk, col_chunk = src.chunksize[:2]
        rows = _aligned_chunk(row_chunk, f)
        cols = w if col_chunk >= w else _aligned_chunk(col_chunk, f)
        src = src.rechunk((rows, cols, src.shape[2]))
        out_chunks = (*(tuple(c // f for c in dim) for dim in src.chunks[:2]), src.chunks[2])
        src = da.map_blocks(_block_mean, src, f, dtype=src.dtype, chunks=out_chunks)
        out.append(src)
    return out


def stored_windows(
    xy: Any, downsample_xy: tuple[float, float], width: int, height: int, steps: int
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Regions of a level as windows of the stored level its pixels come from.

    Parameters
    ----------
    xy
        ``(n, 2)`` level-0 top-left corners ``(x, y)`` of the regions.
    downsample_xy
        ``(x, y)`` downsample of the level read; regions start at ``floor(x / dx)``, as
        :meth:`~napari_deeppt.slide.Slide.read_region` places them.
    width, height
        Region size in pixels of that level.
    steps
        How many derivations below the coarsest stored level it is (0: a stored level).

    Returns
    -------
    tuple
        ``(rows0, cols0, height, width)`` in the stored level's pixels.
    """
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    f = DERIVED_LEVEL_FACTOR**steps
    rows = np.floor(xy[:, 1] / downsample_xy[1]).astype(np.int64)
    cols = np.floor(xy[:, 0] / downsample_xy[0]).astype(np.int64)
    return rows * f, cols * f, int(height) * f, int(width) * f


def _aligned_chunk(native: int, factor: int, minimum: int = 256) -> int:
    """Smallest multiple of both ``native`` and ``factor`` that is at least ``minimum``."""
    step = math.lcm(int(native), factor)
    return step * max(1, math.ceil(minimum / step))


def _block_mean(block: np.ndarray, factor: int) -> np.ndarray:
    h, w, c = block.shape
    reshaped = block.reshape(h // factor, factor, w // factor, factor, c)
    mean = reshaped.mean(axis=(1, 3), dtype=np.float32)
    if np.issubdtype(block.dtype, np.integer):
        return np.rint(mean).astype(block.dtype)
    return mean.astype(block.dtype)
