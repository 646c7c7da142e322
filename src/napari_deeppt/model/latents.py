"""What the regressors train on: each sample's latent tiles (a sample of them) and means.

The autoencoder turns every tile of a sample into a latent vector. The regressors train on
at most ``TrainingSettings.regressor_tiles`` of a sample's latent tiles (drawn once per fit,
seeded), held as one padded ``(n_samples, S, latent_dim)`` tensor so a batch of samples is
one gather and pooling one masked mean. Validation and held-out predictions use ``means``,
the mean over *every* tile: the regressor is affine in evaluation (Linear, Dropout off,
Linear), so a sample's mean tile prediction is the prediction of its mean latent.

For a large cohort the kept tiles live in a :class:`LatentFile` instead (a scratch file,
one fixed-size record per sample, read a batch at a time), so memory does not grow with
the cohort: only ``means`` and ``counts`` (about 2 KB per sample) stay in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = ["LatentFile", "Latents"]


class Latents(NamedTuple):
    """Latent tiles of every sample, for one fitted autoencoder.

    Attributes
    ----------
    tiles
        ``(n_samples, S, latent_dim)`` float tensor (float16 or float32), or a
        :class:`LatentFile` of that shape (large cohorts): sample ``i``'s kept latent tiles
        in ``tiles[i, :counts[i]]``, zeros after. For spots ``S == 1``.
    counts
        ``(n_samples,)`` int64 tensor, the tiles kept per sample (≥ 1).
    means
        ``(n_samples, latent_dim)`` float32 tensor: the mean latent over all the sample's
        tiles, kept or not.
    single
        Every sample is one tile (spots): ``tiles[:, 0]`` equals ``means``.
    """

    tiles: Any
    counts: Any
    means: Any
    single: bool

    def to(self, device: Any) -> Latents:
        """These latents on ``device`` (tiles kept in a :class:`LatentFile` stay there:
        a batch's rows are moved when they are read)."""
        if self.single:  # the tiles are a view of the means: keep it so
            return Latents.from_means(self.means.to(device))
        tiles = self.tiles if isinstance(self.tiles, LatentFile) else self.tiles.to(device)
        return Latents(tiles, self.counts.to(device), self.means.to(device), False)

    @classmethod
    def from_means(cls, means: Any) -> Latents:
        """One tile per sample (spots): the tiles are the means."""
        import torch

        counts = torch.ones(len(means), dtype=torch.int64, device=means.device)
        return cls(means[:, None, :], counts, means, True)


class LatentFile:
    """``(n_samples, S, latent_dim)`` latent tiles in a scratch file, read rows at a time.

    Sample ``i`` is one record of ``S × latent_dim`` values at ``i × record`` bytes; the
    file is sized up front, so what was never written reads as zeros (the padding after a
    sample's kept tiles). Reads go through the page cache, not the process's memory: a
    batch costs its own rows only. Plain ``seek``/``readinto``, so it works on every OS.

    Parameters
    ----------
    path
        The file to create (its folder must exist); :meth:`close` removes it.
    shape
        ``(n_samples, S, latent_dim)``.
    dtype
        The stored torch dtype (float16 or float32).
    """

    def __init__(self, path: Path, shape: tuple[int, int, int], dtype: Any) -> None:
        import torch

        self.path, self.shape, self.dtype = Path(path), tuple(int(s) for s in shape), dtype
        self.device = torch.device("cpu")
        self._numpy = torch.empty(0, dtype=dtype).numpy().dtype
        self._record = self.shape[1] * self.shape[2] * self._numpy.itemsize
        try:
            self._file = open(self.path, "w+b", buffering=0)  # noqa: SIM115 (see close())
        except OSError as exc:
            raise self._unwritable(exc) from exc
        try:
            self._file.truncate(self.shape[0] * self._record)
        except BaseException as exc:
            self.close()  # a disk quota: nothing left open or behind
            if isinstance(exc, OSError):
                raise self._unwritable(exc) from exc
            raise

    def write(self, sample: int, first: int, values: Any) -> None:
        """Store ``values`` ``(k, latent_dim)`` as tiles ``first … first + k`` of ``sample``."""
        if not (0 <= sample < self.shape[0] and 0 <= first <= first + len(values) <= self.shape[1]):
            raise IndexError(f"tiles {first}…{first + len(values)} of sample {sample}: "
                             f"outside {self.shape[:2]}")  # fmt: skip
        data = memoryview(np.ascontiguousarray(values.to(self.dtype).numpy())).cast("B")
        self._file.seek(sample * self._record + first * self.shape[2] * self._numpy.itemsize)
        done = 0
        while done < len(data):  # a raw write may write less than asked
            try:
                written = self._file.write(data[done:])
            except OSError as exc:
                raise self._unwritable(exc) from exc
            if not written:
                raise self._unwritable(OSError(28, "no space left on the device"))
            done += written

    def _unwritable(self, exc: OSError) -> Exception:
        """The one-line error for a scratch file that cannot be written (full disk)."""
        from ..errors import OutputError

        return OutputError(
            f"cannot write training's scratch file {self.path} ({exc.strerror or exc}); "
            "free space there or set TMPDIR to a folder with room"
        )

    def __getitem__(self, rows: Any) -> Any:
        """The records of ``rows`` (a 1-D integer tensor) as one ``(len, S, D)`` tensor."""
        import torch

        if isinstance(rows, torch.Tensor):
            rows = rows.cpu()
        out = np.empty((len(rows), *self.shape[1:]), self._numpy)
        for position, row in enumerate(np.asarray(rows, np.int64).tolist()):
            if not 0 <= row < self.shape[0]:
                raise IndexError(f"latent row {row} of {self.shape[0]}")
            self._file.seek(row * self._record)
            view = memoryview(out[position]).cast("B")
            done = 0
            while done < self._record:  # a raw read may return less than asked
                got = self._file.readinto(view[done:])
                if not got:
                    raise OSError(f"{self.path}: record {row} is short (the file was changed)")
                done += got
        return torch.from_numpy(out)

    @property
    def nbytes(self) -> int:
        """The size of every record together (on disk, not in memory)."""
        return self.shape[0] * self._record

    def close(self) -> None:
        """Close and remove the file (again: nothing)."""
        self._file.close()
        self.path.unlink(missing_ok=True)
