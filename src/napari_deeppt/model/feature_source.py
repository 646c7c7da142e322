"""Training features where they lie: which rows of which feature store each sample is.

Training never holds a cohort's features in memory. A :class:`FeatureSource` names, for
every sample, a run of rows in a feature array — a zarr store written by feature extraction
(the cache, ``deeppt features --formats zarr`` or a cohort run), read lazily — and hands
them out in :class:`Block` s of consecutive rows, at most ``max_rows`` at a time, so memory
depends on the block size, never on the cohort. In-memory arrays (tests, benchmarks) are
handed out the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Block", "FeatureSource"]


@dataclass(frozen=True)
class Block:
    """Consecutive rows ``start:stop`` of array ``array``, and the sample of each row.

    Attributes
    ----------
    array, start, stop
        Which array of the source, and which of its rows.
    samples
        ``(stop - start,)`` the sample index of each row.
    offsets
        ``(stop - start,)`` each row's position within its sample's rows.
    """

    array: int
    start: int
    stop: int
    samples: np.ndarray
    offsets: np.ndarray


@dataclass(frozen=True, eq=False)
class FeatureSource:
    """Every sample's tile features as a run of rows of one of ``arrays``.

    Attributes
    ----------
    arrays
        Feature arrays ``(rows, dim)``: zarr arrays (read on demand) or numpy arrays.
    array, start, stop
        ``(n_samples,)`` int arrays: sample ``i`` is ``arrays[array[i]][start[i]:stop[i]]``.
    """

    arrays: tuple[Any, ...]
    array: np.ndarray
    start: np.ndarray
    stop: np.ndarray

    @classmethod
    def in_memory(cls, features: list[Any]) -> FeatureSource:
        """One array per sample: ``features[i]`` is sample ``i``'s ``(n_tiles, dim)`` tiles."""
        arrays = tuple(np.asarray(f) for f in features)
        n = len(arrays)
        counts = np.array([len(a) for a in arrays], np.int64)
        return cls(arrays, np.arange(n), np.zeros(n, np.int64), counts)

    @classmethod
    def from_parts(cls, arrays: list[Any], parts: list[tuple[int, int, int]]) -> FeatureSource:
        """Samples as ``(array index, start, stop)`` rows of ``arrays``, in sample order."""
        table = np.asarray(parts, np.int64).reshape(-1, 3)
        return cls(tuple(arrays), table[:, 0], table[:, 1], table[:, 2])

    def __len__(self) -> int:
        return len(self.array)

    @property
    def dim(self) -> int:
        """Features per tile."""
        return int(self.arrays[0].shape[1])

    @property
    def counts(self) -> np.ndarray:
        """Tiles per sample."""
        return self.stop - self.start

    @property
    def nbytes(self) -> int:
        """The stored size of every sample's features."""
        itemsize = np.dtype(self.arrays[0].dtype).itemsize
        return int(self.counts.sum()) * self.dim * itemsize

    def blocks(self, samples: np.ndarray, max_rows: int = 16384) -> Iterator[Block]:
        """The rows of ``samples`` in blocks of at most ``max_rows`` consecutive rows.

        Samples whose rows follow one another in the same array share a block (a
        section's spots); a sample with more rows than ``max_rows`` spans several.
        """
        chosen = np.asarray(samples, np.int64)
        order = chosen[np.lexsort((self.start[chosen], self.array[chosen]))]
        pending: list[tuple[int, int, int]] = []  # (sample, first offset, rows)
        for i in order:
            offset, count = 0, int(self.counts[i])
            while offset < count:
                if pending and not self._follows(pending, i, offset, max_rows):
                    yield self._block(pending)
                    pending = []
                room = max_rows - sum(rows for _, _, rows in pending)
                take = min(count - offset, room)
                pending.append((int(i), offset, take))
                offset += take
        if pending:
            yield self._block(pending)

    def _follows(self, pending: list[tuple[int, int, int]], i: int, offset: int, cap: int) -> bool:
        """Whether sample ``i``'s rows from ``offset`` continue the pending block."""
        last, last_offset, last_rows = pending[-1]
        end = self.start[last] + last_offset + last_rows
        same_run = self.array[i] == self.array[last] and self.start[i] + offset == end
        return bool(same_run and sum(rows for _, _, rows in pending) < cap)

    def _block(self, pending: list[tuple[int, int, int]]) -> Block:
        first, first_offset, _ = pending[0]
        start = int(self.start[first] + first_offset)
        samples = np.concatenate([np.full(rows, i) for i, _, rows in pending])
        offsets = np.concatenate([np.arange(o, o + rows) for _, o, rows in pending])
        return Block(int(self.array[first]), start, start + len(samples), samples, offsets)

    def read(self, block: Block, dtype: Any = np.float32) -> np.ndarray:
        """The block's rows, as ``dtype`` (None: as stored)."""
        rows = self.arrays[block.array][block.start : block.stop]
        return np.asarray(rows, dtype=dtype)
