"""Tiles into uint8 batches on the device, read ahead of the model in background threads.

Two sources: the slide's reader (tiles read and decoded by a thread pool, gathered in pinned
staging buffers on CUDA), or a :class:`~napari_deeppt.features.gpu.jpeg.JpegTileReader`
(file bytes read ahead, decoded on the device).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ..concurrency import read_ahead
from ..tiles import TileGrid

__all__ = ["device_batches"]


def device_batches(
    slide: Any, grid: TileGrid, reader: Any, batch: int, dev: Any, pad: bool, workers: int
) -> Iterator[tuple[int, int, Any]]:
    """Yield ``(start, n_tiles, uint8 images (B, H, W, 3) on the device)`` batch by batch.

    Parameters
    ----------
    slide, grid
        The slide and its tiles.
    reader
        A JPEG tile reader decoding on the device, or None for the slide's reader.
    batch
        Tiles per batch.
    dev
        The ``torch.device``.
    pad
        Pad a short last batch to ``batch`` rows: a compiled model sees one shape only (at
        most one batch of extra work per slide, instead of a recompile).
    workers
        Threads reading tiles (the slide's reader).
    """
    if reader is not None:
        yield from _jpeg_batches(grid, reader, batch, dev, pad)
    else:
        yield from _tile_batches(slide, grid, batch, dev, pad, workers)


def _jpeg_batches(
    grid: TileGrid, reader: Any, batch: int, dev: Any, pad: bool
) -> Iterator[tuple[int, int, Any]]:
    import torch

    def fetch(first: int) -> Any:  # file reads only: runs ahead in a thread
        return reader.fetch(np.arange(first, min(first + batch, len(grid))))

    starts = range(0, len(grid), batch)
    for start, fetched in zip(starts, read_ahead(fetch, starts, 1, 1), strict=True):
        images = reader.assemble(fetched, dev)
        filled = len(fetched.rows)
        if pad and filled < batch:
            padding = images.new_zeros((batch - filled, *images.shape[1:]))
            images = torch.cat([images, padding])
        yield start, filled, images


def _tile_batches(
    slide: Any, grid: TileGrid, batch: int, dev: Any, pad: bool, workers: int
) -> Iterator[tuple[int, int, Any]]:
    import torch

    tile_px = grid.tile_px
    # two staging buffers (pinned on CUDA): one is filled while the other's copy to the
    # device may still be in flight; Readback collects batch k-1 before batch k+1 is filled
    staging = [torch.empty((batch, tile_px, tile_px, 3), dtype=torch.uint8) for _ in range(2)]
    if dev.type == "cuda":
        staging = [buffer.pin_memory() for buffer in staging]

    def read(index: int) -> np.ndarray:
        return grid.read_tile(slide, index)

    filled, start, turn = 0, 0, 0
    for tile in read_ahead(read, range(len(grid)), workers, depth=2 * batch):
        staging[turn].numpy()[filled] = tile  # shares memory: no tensor per tile
        filled += 1
        if filled == batch or start + filled == len(grid):
            rows = batch if pad else filled
            yield start, filled, staging[turn][:rows].to(dev, non_blocking=True)
            start += filled
            filled, turn = 0, 1 - turn
