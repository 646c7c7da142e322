"""Grid tiles decoded from the slide's own JPEG tiles with torchvision, batched, on a device.

On CUDA, ``torchvision.io.decode_jpeg(device="cuda")`` decodes a whole batch of file tiles on
the GPU (nvJPEG), so the CPU only reads bytes. The tiles of a TIFF level are abbreviated JPEG
streams: the level's JPEGTables are merged into each, and for RGB-colourspace tiles (Aperio's
``photometric=RGB``) an Adobe APP14 marker with transform 0 tells the decoder not to convert
from YCbCr. Regions are stitched and resized on the device. On the CPU the same code gives
exactly tifffile's pixels (tested); it is used by default only on CUDA.

A tile whose stored stream is cut short (a truncated file, a byte count too small) or that
the decoder refuses raises :class:`~napari_deeppt.errors.SlideReadError` naming the file,
the level and the tile, as the ordinary reader does: nvJPEG or libjpeg would otherwise fill
the missing rows with grey.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...backends.stored import JpegTiles, jpeg_stream_problem, truncated_tile_error

__all__ = ["JpegBatch", "JpegTileReader"]

_ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"


class JpegTileReader:
    """Reads a :class:`~napari_deeppt.tiles.TileGrid`'s tiles by decoding file JPEG tiles."""

    def __init__(self, slide: Any, grid: Any, level: int, tiles: JpegTiles) -> None:
        self.slide, self.grid, self.level, self.tiles = slide, grid, level, tiles
        self.tile_h, self.tile_w = tiles.tile_shape
        self.level_h, self.level_w = tiles.level_shape
        self.per_row = math.ceil(self.level_w / self.tile_w)
        self.tables = tiles.tables
        self.rgb_colourspace = tiles.rgb_colourspace
        self.downsample = slide.downsamples[level]
        target_ds = grid.mpp / slide.mpp  # as Slide.read_plan: the same region size
        self.region_px = max(1, round(grid.tile_px * target_ds / self.downsample))

    @classmethod
    def for_grid(cls, slide: Any, grid: Any) -> JpegTileReader | None:
        """A reader when the level the grid reads from is JPEG-tiled in a TIFF, else None."""
        if slide.mpp is None:
            return None
        level = slide.read_plan(grid.tile_px, grid.tile_px, grid.mpp)[0]
        tiles = slide.jpeg_tiles(level)
        return None if tiles is None else cls(slide, grid, level, tiles)

    def _stream(self, index: int) -> bytes:
        count = int(self.tiles.counts[index])
        data = self.tiles.read(index)
        problem = jpeg_stream_problem(data, count)
        if problem:
            raise self._tile_error(index, problem)
        if self.tables:
            data = self.tables[:-2] + data[2:]  # SOI + tables + the tile's segments
        if self.rgb_colourspace:
            data = data[:2] + _ADOBE_RGB + data[2:]
        return data

    def _tile_error(self, index: int, why: str) -> Exception:
        row, col = divmod(int(index), self.per_row)
        return truncated_tile_error(
            self.slide.path,
            f"level {self.level}",
            row * self.tile_h,
            col * self.tile_w,
            (self.tile_h, self.tile_w),
            why,
        )

    def _decode_checked(self, streams: list[Any], keys: Any, device: Any) -> list[Any]:
        """Decode; if the decoder refuses the batch, name the first tile it refuses."""
        import torch

        try:
            return self._decode(streams, device)
        except Exception as exc:
            if keys is None:
                raise
            for key, stream in zip(keys, streams, strict=True):
                try:
                    self._decode([stream], torch.device("cpu"))
                except Exception as tile_exc:
                    why = f"its JPEG data does not decode ({tile_exc})"
                    raise self._tile_error(int(key), why) from tile_exc
            raise exc

    def _windows(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-left (row, col) in level pixels of each grid tile's region, as read_region."""
        xy = self.grid.xy[indices]
        dx, dy = self.slide.downsamples_xy[self.level]
        cols = np.floor(xy[:, 0] / dx).astype(np.int64)
        rows = np.floor(xy[:, 1] / dy).astype(np.int64)
        return rows, cols

    def _touched(self, indices: np.ndarray) -> tuple[np.ndarray, ...]:
        """Windows, first file-tile row/column, and ``(B, span_y, span_x)`` file-tile keys."""
        rows, cols = self._windows(indices)
        size = self.region_px
        n_rows = math.ceil(self.level_h / self.tile_h)
        # file-tile rows/columns each window touches, clipped to the level
        ty0 = np.clip(rows, 0, self.level_h - 1) // self.tile_h
        ty1 = np.clip(rows + size - 1, 0, self.level_h - 1) // self.tile_h
        tx0 = np.clip(cols, 0, self.level_w - 1) // self.tile_w
        tx1 = np.clip(cols + size - 1, 0, self.level_w - 1) // self.tile_w
        span_y = int((ty1 - ty0).max()) + 1 if len(indices) else 1
        span_x = int((tx1 - tx0).max()) + 1 if len(indices) else 1
        ty = np.minimum(ty0[:, None] + np.arange(span_y), n_rows - 1)  # (B, span_y)
        tx = np.minimum(tx0[:, None] + np.arange(span_x), self.per_row - 1)  # (B, span_x)
        keys = ty[:, :, None] * self.per_row + tx[:, None, :]
        return rows, cols, ty0, tx0, keys

    def fetch_keys(self, indices: Any) -> np.ndarray:
        """The file tiles (row-major keys) that grid tiles ``indices`` touch."""
        return self._touched(np.asarray(indices, np.int64))[-1].ravel()

    def fetch(self, indices: Any) -> JpegBatch:
        """Read (on the CPU, no decoding) the file tiles that a batch of grid tiles needs."""
        import torch

        indices = np.asarray(indices, np.int64)
        rows, cols, ty0, tx0, keys = self._touched(indices)
        unique, slots = np.unique(keys, return_inverse=True)
        # tiles a scanner never wrote (byte count 0) read as tifffile's fill value, 0: they
        # all point at one fill tile placed after the decoded ones
        present = self.tiles.counts[unique] > 0
        remap = np.where(present, np.cumsum(present) - 1, int(present.sum()))
        slots = remap[slots]
        streams = [
            torch.frombuffer(bytearray(self._stream(int(k))), dtype=torch.uint8)
            for k in unique[present]
        ]
        return JpegBatch(
            rows=rows,
            cols=cols,
            first_tile_row=ty0,
            first_tile_col=tx0,
            slots=slots.reshape(keys.shape),
            streams=streams,
            keys=unique[present],
        )

    @staticmethod
    def _decode(streams: list[Any], device: Any) -> list[Any]:
        from torchvision.io import decode_jpeg

        if not streams:
            return []
        with warnings.catch_warnings():
            # torchvision 0.29 deprecates its codecs in favour of TorchCodec; they still work
            warnings.simplefilter("ignore", DeprecationWarning)
            return list(decode_jpeg(streams, device=device))

    def check_decoder(self, device: Any, n_tiles: int = 4, tolerance: float = 1.0) -> str | None:
        """Compare the device's JPEG decoder with libjpeg-turbo on the CPU on a few file tiles.

        nvJPEG's IDCT may differ from libjpeg-turbo's by a grey level here and there; whether
        it honours the Adobe marker of RGB-colourspace tiles cannot be known in advance. So
        before a slide is decoded on a device, a few of its tiles are decoded both ways.

        Returns
        -------
        str or None
            None when the mean absolute difference is within ``tolerance`` grey levels,
            else why the device's decoding cannot be used.
        """
        import torch

        keys = np.unique(self.fetch_keys(np.arange(min(len(self.grid), 8))))
        keys = keys[self.tiles.counts[keys] > 0][:n_tiles]
        if not len(keys):
            return None  # nothing written to compare (the tiles read as the fill value)
        streams = [
            torch.frombuffer(bytearray(self._stream(int(k))), dtype=torch.uint8) for k in keys
        ]
        try:
            on_device = self._decode(streams, device)
        except Exception as exc:  # an unsupported stream, a missing nvJPEG...
            return f"decoding on {device} failed ({type(exc).__name__}: {exc})"
        reference = self._decode_checked(streams, keys, torch.device("cpu"))
        for a, b in zip(on_device, reference, strict=True):
            if tuple(a.shape) != tuple(b.shape):
                return f"decoding on {device} gave {tuple(a.shape)} px tiles, not {tuple(b.shape)}"
            error = (a.cpu().float() - b.float()).abs().mean().item()
            if error > tolerance:
                return (
                    f"decoding on {device} differs from libjpeg-turbo by {error:.1f} grey "
                    f"levels on average (tolerance {tolerance})"
                )
        return None

    def assemble(self, batch: JpegBatch, device: Any) -> Any:
        """Decode a fetched batch on ``device``: ``(B, tile_px, tile_px, 3)`` uint8."""
        import torch

        from .resample import resize_like_pillow

        th, tw, size = self.tile_h, self.tile_w, self.region_px
        decoded = self._decode_checked(batch.streams, batch.keys, device)
        n = len(decoded)
        # the decoded file tiles, channels last, then the fill tile for tiles never written
        fill = torch.zeros((1, th, tw, 3), dtype=torch.uint8, device=device)
        if n and all(tuple(t.shape) == (3, th, tw) for t in decoded):
            stack = torch.cat([torch.stack(decoded).permute(0, 2, 3, 1), fill]).contiguous()
        else:  # a writer that stored short edge tiles: pad them
            stack = torch.zeros((n + 1, th, tw, 3), dtype=torch.uint8, device=device)
            for k, tile in enumerate(decoded):
                h, w = min(th, tile.shape[1]), min(tw, tile.shape[2])
                stack[k, :h, :w] = tile[:, :h, :w].permute(1, 2, 0)
        out = torch.empty(
            (len(batch.rows), self.grid.tile_px, self.grid.tile_px, 3),
            dtype=torch.uint8,
            device=device,
        )
        offsets = np.arange(size)
        pix_y = batch.rows[:, None] + offsets  # (B, size) level rows of each region
        pix_x = batch.cols[:, None] + offsets
        cy = np.clip(pix_y, 0, self.level_h - 1)
        cx = np.clip(pix_x, 0, self.level_w - 1)

        def on_device(a: np.ndarray) -> Any:
            return torch.from_numpy(np.ascontiguousarray(a)).to(device)

        # per row / per column of each region (small): the file tile within the region's
        # span, and the offset of the pixel within that tile in the stacked tiles
        span_row = on_device(cy // th - batch.first_tile_row[:, None])
        span_col = on_device(cx // tw - batch.first_tile_col[:, None])
        row_offset = on_device((cy % th) * tw)
        col_offset = on_device(cx % tw)
        outside_y = (pix_y < 0) | (pix_y >= self.level_h)
        outside_x = (pix_x < 0) | (pix_x >= self.level_w)
        tile_start = on_device(batch.slots * (th * tw))  # first pixel of each touched tile
        pixels = stack.view(-1, 3)
        chunk = max(1, (1 << 22) // (size * size))  # bounds the per-pixel index tensor
        for lo in range(0, len(batch.rows), chunk):
            hi = min(lo + chunk, len(batch.rows))
            b = torch.arange(hi - lo, device=device)[:, None, None]
            linear = tile_start[lo:hi][b, span_row[lo:hi, :, None], span_col[lo:hi, None, :]]
            linear += row_offset[lo:hi, :, None]
            linear += col_offset[lo:hi, None, :]
            region = pixels.index_select(0, linear.view(-1)).view(hi - lo, size, size, 3)
            if outside_y[lo:hi].any() or outside_x[lo:hi].any():  # past the level's edge
                region.masked_fill_(on_device(outside_y[lo:hi])[:, :, None, None], 255)
                region.masked_fill_(on_device(outside_x[lo:hi])[:, None, :, None], 255)
            out[lo:hi] = resize_like_pillow(region, self.grid.tile_px, self.grid.tile_px)
        return out

    def read_batch(self, indices: Any, device: Any) -> Any:
        """``(B, tile_px, tile_px, 3)`` uint8 tiles on ``device``: fetch, then assemble."""
        return self.assemble(self.fetch(indices), device)


@dataclass
class JpegBatch:
    """What :meth:`JpegTileReader.fetch` read for one batch: the bytes and where they go."""

    rows: np.ndarray  # (B,) top row of each region, level pixels
    cols: np.ndarray  # (B,) left column
    first_tile_row: np.ndarray  # (B,) first file-tile row each region touches
    first_tile_col: np.ndarray
    slots: np.ndarray  # (B, span_y, span_x) index into streams of each touched file tile
    streams: list[Any]  # JPEG streams (uint8 tensors), one per distinct file tile written;
    # slot len(streams) stands for tiles never written (they read as 0)
    keys: np.ndarray | None = None  # (len(streams),) the file tile of each stream
