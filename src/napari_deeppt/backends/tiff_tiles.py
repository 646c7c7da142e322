"""One TIFF page read tile by tile through tifffile's segment decoder, with decoded tiles
kept in a bounded cache.

A grid whose tiles do not line up with the file's decodes the file tiles on their borders
for every grid tile that touches them: 513 px regions (512 px at 0.5 µm/px from a 0.499
µm/px scan) over Aperio's 240 px tiles touch 9 to 16 file tiles each, about twice the file
tiles their area covers. Reading in grid order, a neighbour then finds them decoded.
OpenSlide and QuPath keep such a tile cache for the same reason.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np

__all__ = ["TILE_CACHE_BYTES", "DecodedTileCache", "TiffTileArray", "new_tile_cache"]

#: Decoded tiles kept per slide file (all its levels), in bytes: enough for about three rows
#: of 240 px file tiles across a 40,000 px wide level, so the next row of grid tiles finds
#: the tiles it shares with the row above (a wider level keeps those along a row only).
TILE_CACHE_BYTES = 128 * 2**20


class DecodedTileCache:
    """A thread-safe least-recently-used map from a file tile's key to its decoded pixels,
    holding at most ``max_bytes`` (a tile larger than that is not kept).

    Parameters
    ----------
    max_bytes
        The bound on the decoded bytes kept; 0 keeps nothing.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self._tiles: OrderedDict[Any, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> np.ndarray | None:
        """The decoded tile, marked as just used, or None."""
        with self._lock:
            tile = self._tiles.get(key)
            if tile is not None:
                self._tiles.move_to_end(key)
            return tile

    def put(self, key: Any, tile: np.ndarray) -> None:
        """Keep ``tile`` (made read-only: it is shared), dropping the least recently used."""
        if tile.nbytes > self.max_bytes:
            return
        tile.setflags(write=False)
        with self._lock:
            old = self._tiles.pop(key, None)
            self.nbytes -= 0 if old is None else old.nbytes
            self._tiles[key] = tile
            self.nbytes += tile.nbytes
            while self.nbytes > self.max_bytes:
                _, dropped = self._tiles.popitem(last=False)
                self.nbytes -= dropped.nbytes

    def __len__(self) -> int:
        return len(self._tiles)


def new_tile_cache() -> DecodedTileCache:
    """A cache of ``TILE_CACHE_BYTES`` (its value now), for one slide file's levels."""
    return DecodedTileCache(TILE_CACHE_BYTES)


class TiffTileArray:
    """Read-only numpy-style access to one TIFF page through tifffile's segment decoder.

    It reads and decodes exactly the tiles (or strips) a slice touches, with
    ``TiffPage.decode`` (public in every tifffile of the last years), keeping decoded tiles
    in ``cache`` (shared by the levels of one file; by default one of its own). Axes are
    ``YXS``.
    """

    def __init__(self, page: Any, cache: DecodedTileCache | None = None) -> None:
        separate, depth, length, width, samples = page.shaped
        if separate != 1 or depth != 1:
            raise ValueError("planar-separate or volumetric pages are not supported here")
        self.page = page
        self.shape = (int(length), int(width), int(samples))
        self.dtype = page.dtype
        self.tiled = bool(page.is_tiled)
        self.segment = (
            (int(page.tilelength), int(page.tilewidth))
            if self.tiled
            else (int(page.rowsperstrip), int(width))
        )
        self.cache = new_tile_cache() if cache is None else cache

    def __getitem__(self, key: tuple[slice, slice, slice]) -> Any:
        rows, cols, chans = key
        out = np.zeros((rows.stop - rows.start, cols.stop - cols.start, self.shape[2]), self.dtype)
        seg_h, seg_w = self.segment
        per_row = -(-self.shape[1] // seg_w)
        for sy in range(rows.start // seg_h, (rows.stop - 1) // seg_h + 1):
            for sx in range(cols.start // seg_w, (cols.stop - 1) // seg_w + 1):
                segment = self._segment(sy * per_row + sx if self.tiled else sy)
                if segment is None:
                    continue
                y0, x0 = sy * seg_h, sx * seg_w
                r0, r1 = max(rows.start, y0), min(rows.stop, y0 + segment.shape[0])
                c0, c1 = max(cols.start, x0), min(cols.stop, x0 + segment.shape[1])
                out[r0 - rows.start : r1 - rows.start, c0 - cols.start : c1 - cols.start] = segment[
                    r0 - y0 : r1 - y0, c0 - x0 : c1 - x0
                ]
        return out[:, :, chans]

    def _segment(self, index: int) -> np.ndarray | None:
        """File tile (or strip) ``index`` decoded, ``(length, width, samples)``; None when
        the file has no data for it (the region stays zero, as tifffile reads it)."""
        key = (id(self), index)
        segment = self.cache.get(key)
        if segment is not None:
            return segment
        fh = self.page.parent.filehandle
        offset, count = self.page.dataoffsets[index], self.page.databytecounts[index]
        with fh.lock:
            fh.seek(offset)
            data = fh.read(count) if count else None
        segment, _, _ = self.page.decode(data, index, jpegtables=self.page.jpegtables)
        if segment is None:
            return None
        segment = segment.reshape(segment.shape[-3:])
        self.cache.put(key, segment)
        return segment
