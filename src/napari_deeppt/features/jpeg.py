"""Grid tiles decoded from the slide's own JPEG tiles with torchvision, batched, on a device.

On CUDA, ``torchvision.io.decode_jpeg(device="cuda")`` decodes a whole batch of file tiles on
the GPU (nvJPEG), so the CPU only reads bytes. The tiles of a TIFF level are abbreviated JPEG
streams: the level's JPEGTables are merged into each, and for RGB-colourspace tiles (Aperio's
``photometric=RGB``) an Adobe APP14 marker with transform 0 tells the decoder not to convert
from YCbCr. Regions are stitched and resized on the device. On the CPU the same code gives
exactly tifffile's pixels (tested); it is used by default only on CUDA.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

__all__ = ["JpegTileReader"]

_ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"


class JpegTileReader:
    """Reads a :class:`~napari_deeppt.tiles.TileGrid`'s tiles by decoding file JPEG tiles."""

    def __init__(self, slide: Any, grid: Any, level: int, page: Any) -> None:
        self.slide, self.grid, self.level, self.page = slide, grid, level, page
        self.tile_h, self.tile_w = int(page.tilelength), int(page.tilewidth)
        self.level_h, self.level_w = int(page.imagelength), int(page.imagewidth)
        self.per_row = math.ceil(self.level_w / self.tile_w)
        self.tables = page.jpegtables
        self.rgb_colourspace = int(page.photometric) == 2
        self.downsample = slide.downsamples[level]
        target_ds = grid.mpp / slide.mpp
        self.region_px = max(1, round(grid.tile_px * target_ds / self.downsample))

    @classmethod
    def for_grid(cls, slide: Any, grid: Any) -> JpegTileReader | None:
        """A reader when the level the grid reads from is JPEG-tiled in a TIFF, else None."""
        if slide.mpp is None:
            return None
        level = slide.best_level_for_downsample(grid.mpp / slide.mpp)
        source = slide._sources[level] if level < len(slide._sources) else None
        page = getattr(source, "tiff_page", None)
        if page is None or int(page.compression) != 7 or not page.is_tiled:
            return None
        if page.samplesperpixel != 3 or page.planarconfig != 1 or page.imagedepth != 1:
            return None
        return cls(slide, grid, level, page)

    def _stream(self, index: int) -> bytes:
        page = self.page
        fh = page.parent.filehandle
        with fh.lock:
            fh.seek(page.dataoffsets[index])
            data = fh.read(page.databytecounts[index])
        if self.tables:
            data = self.tables[:-2] + data[2:]  # SOI + tables + the tile's segments
        if self.rgb_colourspace:
            data = data[:2] + _ADOBE_RGB + data[2:]
        return data

    def _window(self, i: int) -> tuple[int, int]:
        x, y = self.grid.xy[i]
        dx, dy = self.slide.downsamples_xy[self.level]
        return math.floor(x / dx), math.floor(y / dy)

    def read_batch(self, indices: Any, device: Any) -> Any:
        """``(B, tile_px, tile_px, 3)`` uint8 tiles on ``device``."""
        import torch
        from torchvision.io import decode_jpeg

        from .engine import resize_uint8

        size = self.region_px
        windows = [self._window(int(i)) for i in indices]
        needed: dict[int, int] = {}
        for c0, r0 in windows:
            for ty in range(
                max(r0, 0) // self.tile_h, min(r0 + size, self.level_h) // self.tile_h + 1
            ):
                for tx in range(
                    max(c0, 0) // self.tile_w, min(c0 + size, self.level_w) // self.tile_w + 1
                ):
                    if ty * self.tile_h < self.level_h and tx * self.tile_w < self.level_w:
                        needed.setdefault(ty * self.per_row + tx, len(needed))
        streams = [torch.frombuffer(bytearray(self._stream(k)), dtype=torch.uint8) for k in needed]
        with warnings.catch_warnings():
            # torchvision 0.29 deprecates its codecs in favour of TorchCodec; they still work
            warnings.simplefilter("ignore", DeprecationWarning)
            decoded = decode_jpeg(streams, device=device) if streams else []
        out = torch.full((len(windows), size, size, 3), 255, dtype=torch.uint8, device=device)
        for b, (c0, r0) in enumerate(windows):
            for k, slot in needed.items():
                ty, tx = divmod(k, self.per_row)
                y0, x0 = ty * self.tile_h, tx * self.tile_w
                ya, yb = max(r0, y0), min(r0 + size, y0 + self.tile_h, self.level_h)
                xa, xb = max(c0, x0), min(c0 + size, x0 + self.tile_w, self.level_w)
                if ya >= yb or xa >= xb:
                    continue
                tile = decoded[slot]  # (3, h, w)
                out[b, ya - r0 : yb - r0, xa - c0 : xb - c0] = tile[
                    :, ya - y0 : yb - y0, xa - x0 : xb - x0
                ].permute(1, 2, 0)
        return resize_uint8(out, self.grid.tile_px) if size != self.grid.tile_px else out


def reference_tiles(slide: Any, grid: Any, indices: Any) -> np.ndarray:
    """The same tiles through the ordinary reader, for comparison."""
    return np.stack([grid.read_tile(slide, int(i)) for i in indices])
