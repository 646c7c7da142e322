"""What every slide backend hands to :class:`napari_deeppt.slide.Slide`.

A backend opens one file format and returns :class:`SlideParts`: one :class:`LevelSource` per
stored pyramid level (finest first), the associated images, and the metadata it could parse.
It declares what it opens in a :class:`Backend`, registered in :mod:`.registry`. Everything
above this module is format-agnostic.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DeepPTError, SlideReadError
from .stored import JpegTiles, StoredChunks, touched_chunks

__all__ = ["Backend", "LevelSource", "SlideParts"]


class LevelSource:
    """A lazy ``(height, width, channels)`` view of one stored image in a slide file.

    Wraps whatever the backend reads with (a zarr array over tifffile's store, a zarr array
    of an OME-Zarr, a ``numpy.memmap``) and whatever axis order it stores (``YXS``, ``CYX``,
    ``TCZYX`` ...). Indexing returns numpy arrays in (row, column, channel) order; any failure to
    read or decode is re-raised as :class:`~napari_deeppt.errors.SlideReadError` naming the file,
    the level and the first tile that fails.

    Parameters
    ----------
    array
        Backend array: anything with ``shape``, ``dtype`` and numpy-style slicing.
    axes
        One upper-case letter per dimension of ``array``; must contain ``Y`` and ``X``.
        ``S`` or ``C`` is the channel axis; every other axis is read at index 0.
    path
        The slide file, for error messages.
    name
        What this image is (``"level 0"``, ``"label"`` ...), for error messages.
    chunks
        The file's own chunk (tile or strip) size as ``(rows, cols)``.
    n_channels
        Keep only the first ``n_channels`` channels (drops an alpha channel).
    """

    ndim = 3
    #: The level's stored JPEG tiles, when it is JPEG-tiled RGB (a batch decoder reads them).
    jpeg_tiles: JpegTiles | None = None
    #: The stored chunks behind this level, when the backend knows them (see ``stored.py``):
    #: then content digests hash raw bytes, and every read first checks for truncation.
    stored: StoredChunks | None = None

    def __init__(
        self,
        array: Any,
        axes: str,
        path: Path,
        name: str,
        chunks: tuple[int, int] | None = None,
        n_channels: int | None = None,
    ) -> None:
        axes = axes.upper()
        if len(axes) != len(array.shape):
            raise SlideReadError(
                f"{path}: {name} has shape {tuple(array.shape)} but axes {axes!r}; "
                "the file's metadata is inconsistent"
            )
        if "Y" not in axes or "X" not in axes:
            raise SlideReadError(f"{path}: {name} has no Y/X image axes (axes {axes!r})")
        self.array = array
        self.axes = axes
        self.path = Path(path)
        self.name = name
        self._channel_axis = next((axes.index(a) for a in "SC" if a in axes), None)
        full_channels = 1 if self._channel_axis is None else int(array.shape[self._channel_axis])
        self.n_channels = min(full_channels, n_channels or full_channels)
        height = int(array.shape[axes.index("Y")])
        width = int(array.shape[axes.index("X")])
        self.shape = (height, width, self.n_channels)
        self.dtype = np.dtype(array.dtype)
        default_chunks = (min(height, 512), min(width, 512))
        self.chunks = tuple(int(c) for c in chunks) if chunks else default_chunks

    def __repr__(self) -> str:
        return f"LevelSource({self.name}, shape={self.shape}, axes={self.axes!r})"

    def _backend_key(self, rows: slice, cols: slice) -> tuple[Any, ...]:
        key: list[Any] = []
        for i, axis in enumerate(self.axes):
            if axis == "Y":
                key.append(rows)
            elif axis == "X":
                key.append(cols)
            elif i == self._channel_axis:
                key.append(slice(0, self.n_channels))
            else:
                key.append(0)
        return tuple(key)

    def _to_yxc(self, block: np.ndarray) -> np.ndarray:
        kept = [a for i, a in enumerate(self.axes) if a in "YX" or i == self._channel_axis]
        order = [kept.index("Y"), kept.index("X")]
        if self._channel_axis is not None:
            order.append(kept.index(self.axes[self._channel_axis]))
            out = np.transpose(block, order)
        else:
            out = np.transpose(block, order)[..., np.newaxis]
        return np.ascontiguousarray(out)

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        """Read ``[rows, cols]`` (in-bounds slices with explicit start/stop) as (h, w, c)."""
        if self.stored is not None:  # a tile cut short would decode as grey rows: refuse
            height, width = rows.stop - rows.start, cols.stop - cols.start
            keys = touched_chunks(
                rows.start, cols.start, height, width, self.shape[:2], self.stored.chunk_shape
            )
            self.stored.check(keys)
        try:
            block = np.asarray(self.array[self._backend_key(rows, cols)])
        except DeepPTError:
            raise
        except Exception as exc:  # the backend's own error: say which file and tile
            raise self._locate_failure(rows, cols, exc) from exc
        return self._to_yxc(block)

    def content_digest(self, rows0: Any, cols0: Any, height: int, width: int) -> bytes:
        """Digest of every stored byte that windows of this level read, without decoding.

        Parameters
        ----------
        rows0, cols0
            Top-left corner of each window in this level's pixels (windows may reach past
            the edges; only the part inside is read).
        height, width
            Size of every window.

        Returns
        -------
        bytes
            Changes whenever a pixel inside a window can change: the raw bytes of the stored
            chunks the windows touch and everything that changes how they decode. Chunks no
            window touches are not read, so a change there keeps the digest.
        """
        digest = hashlib.blake2b(
            repr((self.shape, str(self.dtype), self.axes, self.n_channels)).encode(),
            digest_size=32,
        )
        chunk = self.stored.chunk_shape if self.stored is not None else self.chunks
        keys = touched_chunks(rows0, cols0, height, width, self.shape[:2], chunk)
        if self.stored is not None:
            digest.update(self.stored.describe())
            digest.update(self.stored.digest(keys))
            return digest.digest()
        crow, ccol = chunk  # no stored view: hash the decoded pixels of the touched chunks
        digest.update(keys.tobytes())
        for r, c in keys:
            r0, c0 = int(r) * crow, int(c) * ccol
            block = self.read(
                slice(r0, min(r0 + crow, self.shape[0])), slice(c0, min(c0 + ccol, self.shape[1]))
            )
            digest.update(np.ascontiguousarray(block).tobytes())
        return digest.digest()

    def _locate_failure(self, rows: slice, cols: slice, exc: Exception) -> SlideReadError:
        """Find the first native tile in the window that fails, for a precise message."""
        crow, ccol = self.chunks
        for r0 in range((rows.start // crow) * crow, rows.stop, crow):
            for c0 in range((cols.start // ccol) * ccol, cols.stop, ccol):
                r1 = min(r0 + crow, self.shape[0])
                c1 = min(c0 + ccol, self.shape[1])
                try:
                    np.asarray(self.array[self._backend_key(slice(r0, r1), slice(c0, c1))])
                except Exception as tile_exc:
                    return SlideReadError(
                        f"{self.path}: cannot decode {self.name}, tile at row {r0}, column {c0} "
                        f"({r1 - r0}×{c1 - c0} px): {type(tile_exc).__name__}: {tile_exc}. "
                        "The file is probably truncated or corrupt; re-copy or re-export it."
                    )
        return SlideReadError(
            f"{self.path}: cannot read {self.name} rows {rows.start}:{rows.stop}, "
            f"columns {cols.start}:{cols.stop}: {type(exc).__name__}: {exc}"
        )

    def __getitem__(self, key: Any) -> np.ndarray:
        """Numpy-style indexing in (row, column, channel) order (used by dask)."""
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (3 - len(key))
        rows, cols, chans = key
        if not isinstance(rows, slice) or not isinstance(cols, slice):
            rows = _as_slice(rows)
            cols = _as_slice(cols)
        r = slice(*rows.indices(self.shape[0])[:2])
        c = slice(*cols.indices(self.shape[1])[:2])
        if r.stop <= r.start or c.stop <= c.start:
            out = np.zeros(
                (max(r.stop - r.start, 0), max(c.stop - c.start, 0), self.n_channels), self.dtype
            )
        else:
            out = self.read(r, c)
        if rows.step not in (None, 1) or cols.step not in (None, 1):
            out = out[:: rows.step or 1, :: cols.step or 1]
        return out[:, :, chans]


def _as_slice(index: Any) -> slice:
    if isinstance(index, slice):
        return index
    index = int(index)
    return slice(index, index + 1)


@dataclass
class SlideParts:
    """Everything a backend could learn about a slide file."""

    levels: list[LevelSource]
    associated: dict[str, LevelSource] = field(default_factory=dict)
    mpp_xy: tuple[float, float] | None = None
    mpp_source: str = "none"
    objective_power: float | None = None
    vendor: str = "unknown"
    format: str = "unknown"
    compression: str = "unknown"
    properties: dict[str, Any] = field(default_factory=dict)
    closers: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class Backend:
    """One slide format: what it opens and how. :mod:`.registry` picks one for a path.

    Attributes
    ----------
    name
        Short name (``"tiff"``, ``"ome-zarr"``).
    title
        How people name the format (``"OME-Zarr"``), for messages.
    suffixes
        File name endings it reads, lower case; napari's reader offers these.
    directory
        True when a slide of this format is a directory (a Zarr store), False for a file.
    expects
        What it looks for, for the error when nothing opens a path (``"a TIFF/SVS file"``).
    can_open
        A cheap check of a path that exists (magic bytes, marker files), not a full parse.
    open
        Opens the path; raises :class:`~napari_deeppt.errors.SlideFormatError` on a file it
        cannot read.
    """

    name: str
    title: str
    suffixes: tuple[str, ...]
    directory: bool
    expects: str
    can_open: Callable[[Path], bool]
    open: Callable[[Path], SlideParts]
