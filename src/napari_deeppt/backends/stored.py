"""The stored (undecoded) chunks behind a level: digests of their bytes, truncation checks.

A cache may only reuse a result if every pixel it was computed from is unchanged. Decoding a
slide to check that would cost as much as the work the cache saves, so each backend says
which stored chunks (TIFF tiles or strips, Zarr chunk files) a set of pixel windows touches
and digests their raw bytes, plus everything else that changes how they decode (compression,
JPEG tables, photometric, predictor, dtype ...). Reads are plain ``os.pread`` calls in file
order and hashing is BLAKE2b, a small fraction of the cost of decoding the same tiles.

The same knowledge makes truncation an error instead of grey rows: a TIFF tile whose data
runs past the end of the file, or a JPEG tile whose stream does not end with the EOI marker
(libjpeg only warns, "premature end of data", and fills the rest), raises
:class:`~napari_deeppt.errors.SlideReadError` naming the file, the level and the tile.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SlideReadError

__all__ = [
    "JpegTiles",
    "RawFile",
    "StoredChunks",
    "TiffSegments",
    "ZarrChunks",
    "jpeg_stream_problem",
    "touched_chunks",
    "truncated_tile_error",
]

#: Adjacent reads are merged while the gap between them is at most this many bytes ...
MERGE_GAP = 1 << 16
#: ... and the merged read at most this long.
MAX_READ = 1 << 24
#: Uncompressed rows stored back to back are digested in chunks of about this many bytes.
UNCOMPRESSED_ROWS_BYTES = 1 << 20
#: TIFF tags that locate data (offsets, byte counts, sub-directories), not what it decodes to.
LOCATION_TAGS = frozenset({273, 279, 288, 289, 324, 325, 330, 34665, 34853, 40965})
JPEG = 7


def touched_chunks(
    rows0: Any, cols0: Any, height: int, width: int, shape: tuple[int, int], chunk: Any
) -> np.ndarray:
    """``(n, 2)`` (chunk row, chunk column) pairs that any window touches, row-major, unique.

    Parameters
    ----------
    rows0, cols0
        Top-left corner of each window, in pixels of the level (may lie outside it).
    height, width
        Window size in pixels (all windows have one size).
    shape
        ``(rows, cols)`` of the level; windows are clipped to it.
    chunk
        ``(rows, cols)`` of one stored chunk.
    """
    (h, w), (ch, cw) = shape, (int(chunk[0]), int(chunk[1]))
    if np.ndim(rows0) == 0 and np.ndim(cols0) == 0:  # one window (every read): directly
        r0, r1 = max(int(rows0), 0), min(int(rows0) + height, h)
        c0, c1 = max(int(cols0), 0), min(int(cols0) + width, w)
        ys, xs = range(r0 // ch, (r1 - 1) // ch + 1), range(c0 // cw, (c1 - 1) // cw + 1)
        pairs = [(y, x) for y in ys for x in xs] if r1 > r0 and c1 > c0 else []
        return np.array(pairs, np.int64).reshape(-1, 2)
    rows0 = np.atleast_1d(np.asarray(rows0, np.int64))
    cols0 = np.atleast_1d(np.asarray(cols0, np.int64))
    r0, r1 = np.clip(rows0, 0, h), np.clip(rows0 + height, 0, h)
    c0, c1 = np.clip(cols0, 0, w), np.clip(cols0 + width, 0, w)
    inside = (r1 > r0) & (c1 > c0)
    if not inside.any():
        return np.zeros((0, 2), np.int64)
    ty0, ty1 = r0[inside] // ch, (r1[inside] - 1) // ch + 1
    tx0, tx1 = c0[inside] // cw, (c1[inside] - 1) // cw + 1
    # mark each window's block of chunks in a difference array; its 2-D cumsum is the cover
    cover = np.zeros((-(-h // ch) + 1, -(-w // cw) + 1), np.int64)
    np.add.at(cover, (ty0, tx0), 1)
    np.add.at(cover, (ty0, tx1), -1)
    np.add.at(cover, (ty1, tx0), -1)
    np.add.at(cover, (ty1, tx1), 1)
    cover = cover.cumsum(0).cumsum(1)[:-1, :-1]
    return np.argwhere(cover > 0).astype(np.int64)


def truncated_tile_error(
    path: Path, level: str, row: int, col: int, size: tuple[int, int], why: str
) -> SlideReadError:
    """The one message for a tile whose stored data is cut short.

    Parameters
    ----------
    path
        The slide file.
    level
        The level as messages name it (``"level 0"``, a store's name).
    row, col
        The tile's top-left pixel in that level (pixels, not tile numbers).
    size
        The tile's ``(height, width)`` in pixels.
    why
        What is wrong, e.g. :func:`jpeg_stream_problem`'s answer.

    Returns
    -------
    SlideReadError
        To be raised by the caller.
    """
    return SlideReadError(
        f"{path}: {level}, tile at row {row}, column {col} ({size[0]}×{size[1]} px): {why}. "
        "The file is truncated or corrupt; re-copy or re-export it."
    )


def jpeg_stream_problem(data: bytes, count: int) -> str | None:
    """Why a stored JPEG stream is not whole (short read, no EOI marker), or None.

    Parameters
    ----------
    data
        The bytes read for the stream (or only its end); trailing zero padding is ignored.
    count
        How many bytes the file says the stream has; fewer in ``data`` is a short read.

    Returns
    -------
    str or None
        The problem (``"its JPEG data is cut short ..."``), a ``why`` for
        :func:`truncated_tile_error`.
    """
    if len(data) < count:
        return f"its data ends {count - len(data)} bytes past the end of the file"
    end = bytes(data).rstrip(b"\0")  # some writers pad a stream with zeros
    if not end.endswith(b"\xff\xd9"):
        return "its JPEG data is cut short (no end-of-image marker)"
    return None


class RawFile:
    """Positional reads from one file (no shared file position: safe from any thread)."""

    def __init__(self, path: Path, size: int | None = None) -> None:
        self.path = Path(path)
        self.size = int(size if size is not None else os.path.getsize(path))
        self._fd: int | None = None
        self._lock = threading.Lock()

    def pread(self, count: int, offset: int) -> bytes:
        """Up to ``count`` bytes at ``offset`` (fewer only at the end of the file)."""
        if self._fd is None:
            with self._lock:
                if self._fd is None:
                    self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        parts, done = [], 0
        while done < count:
            part = os.pread(self._fd, count - done, offset + done)
            if not part:
                break
            parts.append(part)
            done += len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


@dataclass(frozen=True, eq=False)
class JpegTiles:
    """The stored JPEG tiles of one level, undecoded: what a batch JPEG decoder takes.

    Tile ``k`` (row-major) covers level rows ``[r·th, (r+1)·th)`` and columns
    ``[c·tw, (c+1)·tw)`` with ``r, c = divmod(k, ceil(level width / tw))``. Each tile is an
    abbreviated JPEG stream whose quantisation and Huffman tables may sit in ``tables``.

    Attributes
    ----------
    tile_shape : tuple of int
        ``(rows, cols)`` of one tile, ``(th, tw)``.
    level_shape : tuple of int
        ``(rows, cols)`` of the level.
    tables : bytes or None
        The level's shared JPEG tables (TIFF ``JPEGTables``), a stream of its own.
    rgb_colourspace : bool
        The tiles hold RGB, not YCbCr (Aperio's ``photometric=RGB``): a decoder must not
        convert their colours.
    offsets, counts : numpy.ndarray
        Where each tile's bytes start and how many there are; a count of 0 is a tile never
        written (it reads as 0).
    raw : RawFile
        The file they are read from.
    """

    tile_shape: tuple[int, int]
    level_shape: tuple[int, int]
    tables: bytes | None
    rgb_colourspace: bool
    offsets: np.ndarray
    counts: np.ndarray
    raw: RawFile

    def read(self, index: int) -> bytes:
        """The stored bytes of tile ``index``: fewer than its count when the file is cut short."""
        return self.raw.pread(int(self.counts[index]), int(self.offsets[index]))


class StoredChunks:
    """The stored chunks of one level, as a backend knows them.

    Attributes
    ----------
    chunk_shape : tuple of int
        ``(rows, cols)`` of one stored chunk, in level pixels.
    """

    chunk_shape: tuple[int, int] = (1, 1)

    def describe(self) -> bytes:
        """Everything besides the chunks' bytes that changes the decoded pixels."""
        raise NotImplementedError

    def digest(self, keys: np.ndarray) -> bytes:
        """Digest of the stored bytes of chunks ``keys`` (``(n, 2)`` rows/columns)."""
        raise NotImplementedError

    def check(self, keys: np.ndarray) -> None:
        """Raise :class:`SlideReadError` if a chunk's stored data is cut short."""


class TiffSegments(StoredChunks):
    """The tiles (or strips) of one TIFF page.

    Raises ``ValueError`` for layouts it does not know (volumetric tiles, odd offset counts);
    the caller then digests decoded pixels instead.
    """

    def __init__(self, page: Any, raw: RawFile, name: str) -> None:
        separate, depth, length, width, _ = (int(v) for v in page.shaped)
        if depth != 1:
            raise ValueError("volumetric TIFF pages are not segmented by (row, column)")
        self.raw, self.name = raw, name
        if page.is_tiled:
            self.chunk_shape = (int(page.tilelength), int(page.tilewidth))
        else:
            self.chunk_shape = (min(int(page.rowsperstrip) or length, length), width)
        self.rows = -(-length // self.chunk_shape[0])
        self.cols = -(-width // self.chunk_shape[1])
        self.planes = separate
        self.offsets = np.asarray(page.dataoffsets, np.int64)
        self.counts = np.asarray(page.databytecounts, np.int64)
        if len(self.offsets) != self.planes * self.rows * self.cols:
            raise ValueError("segment count does not match the page's geometry")
        self._split_uncompressed_rows(page, length, width)
        self.jpeg = int(page.compression) == JPEG
        self._verified = np.zeros(len(self.offsets), bool)
        self._description = _describe_page(page)

    def _split_uncompressed_rows(self, page: Any, length: int, width: int) -> None:
        """Uncompressed rows stored back to back: chunks of ``UNCOMPRESSED_ROWS_BYTES``.

        A plain uncompressed TIFF is often one strip of every row; digesting it whole for
        a grid that reads a few rows would hash the whole file. Its bytes are rows in
        order, so rows ``[r0, r1)`` are bytes ``[start + r0·row, start + r1·row)``.
        """
        row = width * int(page.samplesperpixel) * page.dtype.itemsize
        contiguous = np.array_equal(self.offsets[1:], (self.offsets + self.counts)[:-1])
        if (
            int(page.compression) != 1
            or page.is_tiled
            or self.planes != 1
            or int(page.bitspersample) % 8
            or int(getattr(page, "fillorder", 1)) != 1
            or not contiguous
            or int(self.counts.sum()) < length * row
        ):
            return
        rows = max(1, UNCOMPRESSED_ROWS_BYTES // row)
        starts = np.arange(0, length, rows, dtype=np.int64)
        self.chunk_shape, self.rows, self.cols = (rows, width), len(starts), 1
        self.offsets = int(self.offsets[0]) + starts * row
        self.counts = np.minimum(rows, length - starts) * row

    def describe(self) -> bytes:
        return self._description

    def _segments(self, keys: np.ndarray) -> np.ndarray:
        keys = np.asarray(keys, np.int64).reshape(-1, 2)
        flat = keys[:, 0] * self.cols + keys[:, 1]
        per_plane = self.rows * self.cols
        return (np.arange(self.planes)[:, None] * per_plane + flat[None, :]).ravel()

    def _error(self, segment: int, why: str) -> SlideReadError:
        row, col = divmod(segment % (self.rows * self.cols), self.cols)
        ch, cw = self.chunk_shape
        return truncated_tile_error(self.raw.path, self.name, row * ch, col * cw, (ch, cw), why)

    def check(self, keys: np.ndarray) -> None:
        segments = self._segments(keys)
        for segment in segments[~self._verified[segments]]:
            offset, count = int(self.offsets[segment]), int(self.counts[segment])
            if count and offset + count > self.raw.size:
                raise self._error(segment, _past_end(offset, count, self.raw.size))
            if count and self.jpeg:
                tail = self.raw.pread(min(count, 64), offset + count - min(count, 64))
                if not tail.rstrip(b"\0") and count > 64:  # long zero padding: look further
                    tail = self.raw.pread(min(count, 1 << 16), offset + count - min(count, 1 << 16))
                problem = jpeg_stream_problem(tail, len(tail))
                if problem:
                    raise self._error(segment, problem)
            self._verified[segment] = True

    def digest(self, keys: np.ndarray) -> bytes:
        segments = np.unique(self._segments(keys))
        offsets, counts = self.offsets[segments], self.counts[segments]
        past = np.flatnonzero(offsets + counts > self.raw.size)
        if len(past):
            first = past[0]
            why = _past_end(int(offsets[first]), int(counts[first]), self.raw.size)
            raise self._error(int(segments[first]), why)
        digests = _digest_ranges(self.raw, offsets, counts, self._check_stream(segments))
        out = hashlib.blake2b(segments.tobytes(), digest_size=32)
        out.update(counts.tobytes())
        out.update(digests)
        return out.digest()

    def _check_stream(self, segments: np.ndarray) -> Any:
        if not self.jpeg:
            return None

        def check(i: int, data: bytes) -> None:
            problem = jpeg_stream_problem(data, len(data))
            if problem:
                raise self._error(int(segments[i]), problem)
            self._verified[int(segments[i])] = True

        return check


def _past_end(offset: int, count: int, size: int) -> str:
    return (
        f"its data ends at byte {offset + count}, past the end of the file ({size} bytes)"
        if offset < size
        else f"its data at byte {offset} lies past the end of the file ({size} bytes)"
    )


def _digest_ranges(raw: RawFile, offsets: np.ndarray, counts: np.ndarray, check: Any) -> bytes:
    """16-byte BLAKE2b of each ``[offset, offset + count)``, concatenated in input order.

    Reads in file order, merging neighbours into one read; a range stored once and shared by
    many tiles (legal in TIFF) is read and hashed once.
    """
    digests: list[bytes] = [b""] * len(offsets)
    done: dict[tuple[int, int], bytes] = {}
    order = np.argsort(offsets, kind="stable")
    i = 0
    while i < len(order):
        start = int(offsets[order[i]])
        end, j = start + int(counts[order[i]]), i + 1
        while j < len(order):  # extend the read over close neighbours
            o, n = int(offsets[order[j]]), int(counts[order[j]])
            if o > end + MERGE_GAP or max(end, o + n) - start > MAX_READ:
                break
            end, j = max(end, o + n), j + 1
        block = memoryview(raw.pread(end - start, start)) if end > start else memoryview(b"")
        for k in order[i:j]:
            o, n = int(offsets[k]), int(counts[k])
            if (o, n) not in done:
                data = block[o - start : o - start + n]
                if check is not None and n:
                    check(int(k), data)
                done[(o, n)] = hashlib.blake2b(data, digest_size=16).digest()
            digests[k] = done[(o, n)]
        i = j
    return b"".join(digests)


def _describe_page(page: Any) -> bytes:
    """Every tag of a page except those that only locate data, plus its decoded geometry."""
    parts = [
        repr((tuple(page.shaped), str(page.dtype), page.parent.byteorder, bool(page.is_tiled)))
    ]
    for tag in sorted(page.tags.values(), key=lambda t: t.code):
        if tag.code not in LOCATION_TAGS:
            parts.append(f"{tag.code}:{tag.dtype}:{tag.count}:{_plain(tag.value)}")
    return "\n".join(parts).encode("utf-8", "backslashreplace")


def _plain(value: Any) -> str:
    """A complete text form of a tag value (``repr`` elides the middle of large arrays)."""
    if isinstance(value, np.ndarray):
        return f"{value.dtype.str}{value.shape}:{value.tobytes().hex()}"
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, (list, tuple)):
        return "(" + ",".join(_plain(v) for v in value) + ")"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=_plain)
    return repr(value)


class ZarrChunks(StoredChunks):
    """The chunk files (or shard files) of a Zarr array in a local directory store."""

    def __init__(self, array: Any, axes: str, n_channels: int, root: Path) -> None:
        storage = tuple(int(n) for n in (getattr(array, "shards", None) or array.chunks))
        self.axes, self.storage, self.shape = axes, storage, tuple(int(n) for n in array.shape)
        self.chunk_shape = (storage[axes.index("Y")], storage[axes.index("X")])
        self.directory = Path(root) / str(array.path)
        self.encode = array.metadata.encode_chunk_key
        channel = next((axes.index(a) for a in "SC" if a in axes), None)
        self.channel_axis = channel
        self.channel_chunks = 1 if channel is None else -(-n_channels // storage[channel])
        meta = json.dumps(array.metadata.to_dict(), sort_keys=True, default=str)
        self._description = f"{meta}\n{axes}\n{n_channels}".encode()

    def describe(self) -> bytes:
        return self._description

    def _keys(self, row: int, col: int) -> list[str]:
        out = []
        for c in range(self.channel_chunks):
            coords = [
                row if a == "Y" else col if a == "X" else c if i == self.channel_axis else 0
                for i, a in enumerate(self.axes)
            ]
            out.append(self.encode(tuple(coords)))
        return out

    def digest(self, keys: np.ndarray) -> bytes:
        out = hashlib.blake2b(digest_size=32)
        for row, col in np.asarray(keys, np.int64).reshape(-1, 2):
            for key in self._keys(int(row), int(col)):
                try:
                    data = (self.directory / key).read_bytes()
                except FileNotFoundError:  # never written: reads as the fill value
                    out.update(f"{key}:missing\n".encode())
                    continue
                except OSError as exc:
                    raise SlideReadError(
                        f"{self.directory / key}: cannot read this chunk ({exc.strerror or exc})"
                    ) from exc
                out.update(f"{key}:{len(data)}:".encode())
                out.update(hashlib.blake2b(data, digest_size=16).digest())
        return out.digest()
