"""The autoencoder's side of training, streamed: fit on minibatches read from the feature
stores, then one pass that encodes every tile into each sample's mean latent and the
regressors' tile sample.

Memory depends on block and buffer sizes, never on the cohort: an epoch visits the training
samples' blocks in a random order and shuffles them through a buffer of
``_BUFFER_ROWS`` tiles. With ``TrainingSettings.ae_tiles`` a per-sample sample of tiles
(drawn once, seeded) is written to a scratch store first, so an epoch reads only it.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..progress import CancelLike, check_cancelled
from .feature_source import FeatureSource
from .latents import LatentFile, Latents
from .nn import AutoEncoder, fused_adam
from .settings import TrainingSettings

__all__ = ["autoencoder_tiles", "encode", "fit_autoencoder", "tile_sample"]

_BLOCK_ROWS = 4096  # tiles read at a time (16 MB of float16 × 2048, 32 MB as float32)
_EPOCH_BLOCK_ROWS = _BLOCK_ROWS // 4  # tiles read at a time in an epoch: the scratch's chunks
_BUFFER_ROWS = 16384  # tiles shuffled together in an autoencoder epoch (as stored)


def tile_sample(counts: np.ndarray, most: int | None, seed: int) -> list[np.ndarray]:
    """Each sample's chosen tile offsets: all of them, or ``most`` drawn without replacement.

    Parameters
    ----------
    counts
        Tiles per sample.
    most
        Tiles per sample at most; None for all.
    seed
        Seeds the draw (the same for every fit of a run).

    Returns
    -------
    list of numpy.ndarray
        Sorted offsets into each sample's rows.
    """
    rng = np.random.default_rng(seed)
    return [
        np.arange(n) if most is None or n <= most else np.sort(rng.choice(n, most, replace=False))
        for n in np.asarray(counts, np.int64)
    ]


@contextlib.contextmanager
def autoencoder_tiles(source: FeatureSource, settings: TrainingSettings) -> Iterator[FeatureSource]:
    """The tiles the autoencoder fits on: ``source`` itself, or its ``ae_tiles`` sample per
    sample written to a scratch store (removed on exit) when any sample has more tiles.

    Parameters
    ----------
    source
        Every sample's tile features.
    settings
        Its ``ae_tiles`` (None: all tiles) and ``seed`` (the draw uses ``seed + 1``).

    Yields
    ------
    FeatureSource
        The chosen tiles, sample by sample, valid inside the ``with`` block only.
    """
    if settings.ae_tiles is None or int(source.counts.max(initial=0)) <= settings.ae_tiles:
        yield source
        return
    chosen = tile_sample(source.counts, settings.ae_tiles, settings.seed + 1)
    sizes = np.array([len(c) for c in chosen], np.int64)
    stops = np.cumsum(sizes)
    with tempfile.TemporaryDirectory(prefix="deeppt-ae-tiles-") as scratch:
        array = _scratch_array(Path(scratch) / "tiles.zarr", int(stops[-1]), source)
        writer = _ChunkWriter(array)
        starts = np.zeros(len(chosen), np.int64)  # where each sample's rows were written
        seen = np.zeros(len(chosen), bool)
        for block in source.blocks(np.arange(len(source)), _BLOCK_ROWS):
            rows = source.read(block, dtype=None)
            for i in _samples_as_read(block):  # a sample's rows follow one another
                mine = block.samples == i
                if not seen[i]:
                    starts[i], seen[i] = writer.position, True
                writer.append(rows[mine][np.isin(block.offsets[mine], chosen[i])])
        writer.close()
        if writer.position != int(stops[-1]):
            raise RuntimeError(f"scratch store: {writer.position} rows written, not {stops[-1]}")
        yield FeatureSource.from_parts([array], [(0, a, a + n) for a, n in zip(starts, sizes)])


def _samples_as_read(block: Any) -> np.ndarray:
    """The samples of a block in the order its rows come (not by sample number)."""
    _, first = np.unique(block.samples, return_index=True)
    return block.samples[np.sort(first)]


def _scratch_array(path: Path, rows: int, source: FeatureSource) -> Any:
    """The scratch store of the autoencoder's tiles: read every epoch, so uncompressed
    (zstd decoding ran at 0.18 GB/s against 1.2 GB/s uncompressed) and chunked as an
    epoch reads it."""
    import zarr

    return zarr.create_array(
        str(path),
        shape=(rows, source.dim),
        chunks=(_EPOCH_BLOCK_ROWS, source.dim),
        dtype=source.arrays[0].dtype,
        compressors=None,
        zarr_format=2,
    )


class _ChunkWriter:
    """Rows appended in order, written to ``array`` a whole chunk at a time (a chunk
    written in parts would be read back and rewritten for every part)."""

    def __init__(self, array: Any) -> None:
        self.array, self.at = array, 0
        self.buffer = np.empty((array.chunks[0], array.shape[1]), array.dtype)
        self.held = 0

    @property
    def position(self) -> int:
        """The row the next appended row will be."""
        return self.at + self.held

    def append(self, rows: np.ndarray) -> None:
        while len(rows):
            take = min(len(rows), len(self.buffer) - self.held)
            self.buffer[self.held : self.held + take] = rows[:take]
            self.held, rows = self.held + take, rows[take:]
            if self.held == len(self.buffer):
                self.close()

    def close(self) -> None:
        """Write what is held (the last, short chunk)."""
        if self.held:
            self.array[self.at : self.at + self.held] = self.buffer[: self.held]
            self.at, self.held = self.at + self.held, 0


def _by_sample(block: Any) -> Iterator[tuple[int, np.ndarray]]:
    """Each sample of a block, and the mask of its rows."""
    for i in np.unique(block.samples):
        yield int(i), block.samples == i


def fit_autoencoder(
    tiles: FeatureSource,
    train_idx: np.ndarray,
    settings: TrainingSettings,
    seed: int,
    cancel: CancelLike,
    device: torch.device | None = None,
) -> AutoEncoder:
    """DeepPT's autoencoder fitted (MSE, Adam) on the tiles of the ``train_idx`` samples.

    Parameters
    ----------
    tiles
        The tiles to fit on (:func:`autoencoder_tiles`).
    train_idx
        The samples whose tiles it sees.
    settings
        ``ae_epochs``, ``ae_batch``, ``lr`` and ``latent_dim``.
    seed
        Seeds the initialisation and the order of blocks and tiles.
    cancel
        Checked once per block.
    device
        Where it trains (default: the CPU). Its initialisation and the order of tiles are
        drawn on the CPU, so a seed gives the same start and tile order anywhere; rounding
        differs between devices, so runs on two devices drift apart over the epochs.

    Returns
    -------
    AutoEncoder
        In evaluation mode, on ``device``.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.default_generator.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = torch.device("cpu") if device is None else device
    model = AutoEncoder(tiles.dim, settings.latent_dim).to(device)
    # the CPU's fused Adam: one pass per tensor, a step ~20 % faster than the default
    fused = fused_adam(device.type) or None
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr, fused=fused)
    blocks = list(tiles.blocks(train_idx, _EPOCH_BLOCK_ROWS))
    for _ in range(settings.ae_epochs):
        for x in _shuffled_batches(tiles, blocks, settings.ae_batch, rng, generator, cancel):
            x = x.to(device, non_blocking=True)
            loss = torch.nn.functional.mse_loss(model(x), x)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval()


def _shuffled_batches(
    tiles: FeatureSource,
    blocks: list[Any],
    batch: int,
    rng: np.random.Generator,
    generator: torch.Generator,
    cancel: CancelLike,
) -> Iterator[torch.Tensor]:
    """One epoch's minibatches (float32): blocks in a random order, shuffled through a
    buffer of tiles as stored; a batch is copied out of it, never the whole buffer."""
    buffer: list[torch.Tensor] = []
    held = 0
    for k in rng.permutation(len(blocks)):
        check_cancelled(cancel, "training")
        buffer.append(torch.from_numpy(tiles.read(blocks[k], dtype=None)))
        held += len(buffer[-1])
        if held >= _BUFFER_ROWS:
            pool, buffer = torch.cat(buffer), []
            order = torch.randperm(len(pool), generator=generator)
            full = len(pool) // batch * batch
            for start in range(0, full, batch):
                yield pool[order[start : start + batch]].float()
            buffer, held = [pool[order[full:]]], len(pool) - full
            del pool
    if held:
        pool = torch.cat(buffer)
        order = torch.randperm(len(pool), generator=generator)
        for start in range(0, len(pool), batch):
            yield pool[order[start : start + batch]].float()


def encode(
    autoencoder: AutoEncoder,
    source: FeatureSource,
    kept: list[np.ndarray],
    cancel: CancelLike = None,
    dtype: torch.dtype = torch.float16,
    scratch: Path | None = None,
) -> Latents:
    """Every sample's mean latent over all its tiles, and its ``kept`` latent tiles.

    Parameters
    ----------
    autoencoder
        The fitted autoencoder.
    source
        Every sample's features, read block by block.
    kept
        Each sample's tile offsets the regressors train on (:func:`tile_sample`).
    cancel
        Checked once per block.
    dtype
        Storage of the kept latent tiles (the means are float32).
    scratch
        Keep the latent tiles in this new file (a :class:`~.latents.LatentFile`, which
        the caller closes, removing it) instead of in memory: memory then does not grow with
        the cohort. Spots keep only their means either way.

    Returns
    -------
    Latents
        On the CPU, wherever the autoencoder is (encoding runs on its device).
    """
    n, width = len(source), autoencoder.latent_dim
    sums = torch.zeros(n, width, dtype=torch.float64)
    if bool((source.counts == 1).all()):
        kept = []  # spots: the tiles are the means
    slots = max((len(k) for k in kept), default=1)
    tiles: Any = torch.zeros(n if kept and scratch is None else 0, slots, width, dtype=dtype)
    if kept and scratch is not None:
        tiles = LatentFile(scratch, (n, slots, width), dtype)
    try:
        _encode_blocks(autoencoder, source, kept, tiles, sums, cancel)
    except BaseException:
        if isinstance(tiles, LatentFile):
            tiles.close()  # a failed or cancelled encoding leaves no file behind
        raise
    means = (sums / torch.from_numpy(source.counts)[:, None]).float()
    if not kept:
        return Latents.from_means(means)
    counts = torch.tensor([len(k) for k in kept], dtype=torch.int64)
    return Latents(tiles, counts, means, False)


def _encode_blocks(
    autoencoder: AutoEncoder,
    source: FeatureSource,
    kept: list[np.ndarray],
    tiles: Any,
    sums: torch.Tensor,
    cancel: CancelLike,
) -> None:
    """Encode every block on the autoencoder's device: add each tile's latent to its
    sample's ``sums`` and put the ``kept`` ones in ``tiles`` (a tensor or a LatentFile)."""
    device = next(autoencoder.parameters()).device
    with torch.no_grad():
        for block in source.blocks(np.arange(len(source)), _BLOCK_ROWS):
            check_cancelled(cancel, "training")
            features = torch.from_numpy(source.read(block)).to(device)
            latent = autoencoder.encode(features).cpu()
            sums.index_add_(0, torch.from_numpy(block.samples), latent.double())
            for i, mine in _by_sample(block) if kept else ():
                rows = np.flatnonzero(mine)[np.isin(block.offsets[mine], kept[i])]
                if len(rows):
                    first = int(np.searchsorted(kept[i], block.offsets[rows[0]]))
                    if isinstance(tiles, LatentFile):
                        tiles.write(i, first, latent[rows])
                    else:
                        tiles[i, first : first + len(rows)] = latent[rows].to(tiles.dtype)
