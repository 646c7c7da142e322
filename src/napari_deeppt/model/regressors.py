"""Many regressors trained together, in lockstep, as stacked models.

Cross-validation fits one :class:`~.nn.MLPRegression` per inner fold, per outer fold and for
the final ensemble. Each is small, so fitting them one after another spends most of a step
on Python and optimiser overhead. :func:`fit_regressors` trains them in lockstep groups:
a group's parameters are stacked along a leading model axis, a step is one batched matrix
product per layer (forward and backward written out), and one fused Adam call updates every
model of the group that had a batch (the maths: :mod:`.lockstep`). How many models share a
group is chosen for speed alone (:func:`~.lockstep.group_size`): on the CPU as many as fit
about a cache, on a GPU every model.

Each model still trains exactly as alone: its own initialisation (seeded), its own batch
order, its own loss (the stacked loss is the sum of the models' losses, so each gradient is
its model's own) and its own Adam state and step count. A model with no batch left in an
epoch's step is not updated at that step (neither its parameters nor its moments nor its
step count), and a model that early-stops is dropped from the stack, so it costs nothing
afterwards. Models are kept in order of decreasing batches per epoch: the models that still
have a batch at a step are a prefix of the stack, and a step works on views of that prefix.
Each draws its own dropout masks (a generator per model, seeded by its job), so a model's
result does not depend on the group it trains in (beyond the rounding of batched products
of another size).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from ..progress import CancelLike, check_cancelled
from .latents import LatentFile, Latents
from .lockstep import KEYS, WEIGHTS, Batch, Stack, apply_adam, gradients, group_size
from .metrics import validation_r
from .nn import MLPRegression, fused_adam
from .settings import TrainingSettings

__all__ = ["RegressorJob", "fit_regressors"]


@dataclass(frozen=True)
class RegressorJob:
    """One regressor to fit: its latents, training and validation samples, and seed.

    Attributes
    ----------
    latents
        The latent tiles and means of every sample (of the autoencoder of its fold).
    train_idx
        Indices of the samples it trains on.
    val_idx
        Indices of the samples it early-stops on.
    seed
        Seeds its initialisation, its batch order and its dropout masks.
    val_sections
        The section of each validation sample (spots: R within each section), or None
        (bulk slides: R pooled over the samples).
    """

    latents: Latents
    train_idx: np.ndarray
    val_idx: np.ndarray
    seed: int
    val_sections: np.ndarray | None = None


class _Data(NamedTuple):
    """Jobs' latent tiles in one tensor (or one :class:`~.latents.LatentFile`): job ``k``'s
    sample ``i`` is row ``offsets[k] + i``."""

    tiles: Any  # (rows, S, D) tensor or LatentFile, or a (rows, D) tensor for single
    counts: torch.Tensor  # (rows,) float32
    offsets: np.ndarray  # (n_jobs,) int64
    single: bool
    device: torch.device  # where the models train (the latents' means are)


def _pool_data(jobs: list[RegressorJob], group: list[int]) -> _Data:
    """Concatenate the distinct latents of the jobs in ``group`` (no copy for one)."""
    distinct: dict[int, int] = {}
    sources: list[Latents] = []
    offsets = np.zeros(len(jobs), dtype=np.int64)
    for k in group:
        if id(jobs[k].latents) not in distinct:
            distinct[id(jobs[k].latents)] = len(sources)
            sources.append(jobs[k].latents)
        offsets[k] = distinct[id(jobs[k].latents)] * sources[0].tiles.shape[0]
    shapes = {tuple(source.tiles.shape) for source in sources}
    if len(shapes) != 1 or len({source.single for source in sources}) != 1:
        raise ValueError(f"the jobs' latents differ in shape or kind: {sorted(shapes)}")
    single, device = sources[0].single, sources[0].means.device
    tiles = [source.tiles[:, 0] if single else source.tiles for source in sources]
    counts = [torch.as_tensor(source.counts).to(device, torch.float32) for source in sources]
    if len(sources) > 1:
        if any(isinstance(t, LatentFile) for t in tiles):
            raise ValueError("latents kept in files train one fit at a time, not together")
        return _Data(torch.cat(tiles), torch.cat(counts), offsets, single, device)
    return _Data(tiles[0], counts[0], offsets, single, device)


def _init_stack(
    jobs: list[RegressorJob], order: list[int], targets: torch.Tensor, latent_dim: int
) -> Stack:
    """Each job's fresh, seeded :class:`~.nn.MLPRegression`, stacked in ``order``."""
    models = []
    with torch.random.fork_rng(devices=[]):
        for k in order:
            torch.manual_seed(jobs[k].seed)
            bias = targets[torch.as_tensor(jobs[k].train_idx)].mean(dim=0)
            models.append(MLPRegression(targets.shape[1], in_dim=latent_dim, output_bias=bias))
    device = jobs[0].latents.means.device
    params = [
        torch.stack([m.state_dict()[key].T if weight else m.state_dict()[key] for m in models])
        .to(device, torch.float32)
        .contiguous()
        for key, weight in zip(KEYS, WEIGHTS)
    ]
    return Stack(params, list(order))


class _Epoch(NamedTuple):
    """One epoch's batches of every model: padded to the same number of steps and rows."""

    samples: torch.Tensor  # (K, T, B) sample index (0 where padded)
    rows: torch.Tensor  # (K, T, B) row in _Data.tiles
    weight: torch.Tensor  # (K, T, B) 1 / (rows in the batch × genes), 0 where padded
    active: list[int]  # models with a batch at each step (a prefix of the stack)


def _epoch(
    stack: Stack,
    jobs: list[RegressorJob],
    rngs: dict[int, Any],
    data: _Data,
    batch: int,
    genes: int,
) -> _Epoch:
    """Each model's permutation of its training samples, cut into batches of ``batch``."""
    sizes = np.array([len(jobs[k].train_idx) for k in stack.jobs])
    n_batches = -(-sizes // batch)
    width = int(n_batches.max()) * batch
    samples = np.zeros((len(sizes), width), dtype=np.int64)
    for row, k in enumerate(stack.jobs):
        samples[row, : sizes[row]] = rngs[k].permutation(jobs[k].train_idx)
    position = np.arange(width)
    valid = position[None, :] < sizes[:, None]
    in_batch = np.minimum(batch, sizes[:, None] - (position[None, :] // batch) * batch)
    weight = np.where(valid, 1.0 / (np.maximum(in_batch, 1) * genes), 0.0)
    shape = (len(sizes), width // batch, batch)
    device = stack.params[0].device
    return _Epoch(
        torch.as_tensor(samples.reshape(shape), device=device),
        torch.as_tensor(
            (samples + data.offsets[stack.jobs][:, None]).reshape(shape), device=device
        ),
        torch.as_tensor(weight.reshape(shape), dtype=torch.float32, device=device),
        [int((n_batches > t).sum()) for t in range(shape[1])],
    )


def _batch(data: _Data, rows: torch.Tensor, hidden: int, dropout: float, gens: list[Any]) -> Batch:
    """Gather the tiles of ``rows`` ``(a, B)`` and draw each tile's dropout mask, model
    ``i``'s from its own generator ``gens[i]``."""
    a, size = rows.shape
    x = data.tiles[rows.reshape(-1)].to(data.device, torch.float32)
    tiles = 1 if data.single else x.shape[1]
    x = x.reshape(a, size * tiles, -1)
    keep = None
    if dropout > 0:  # as torch's dropout: keep a unit with probability 1 - p
        keep = _uniform((a, size * tiles, hidden), gens, x.device)
        keep = keep.ge_(dropout).div_(1.0 - dropout)
    if data.single:
        return Batch(x, None, keep)
    counts = data.counts[rows.reshape(-1)]
    kept = torch.arange(tiles, device=x.device)[None, :] < counts[:, None]
    return Batch(x, (kept / counts[:, None]).reshape(a * size, 1, tiles), keep)


def _uniform(shape: tuple[int, ...], gens: list[Any], device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) float32 numbers, ``shape[0]`` blocks each from its own generator:
    numpy's PCG64 on the CPU (about twice as fast as torch's CPU generator, whose numbers
    are drawn one at a time), else the device's torch generators."""
    if isinstance(gens[0], np.random.Generator):
        out = np.empty(shape, np.float32)
        for gen, block in zip(gens, out, strict=True):
            gen.random(dtype=np.float32, out=block)
        return torch.from_numpy(out).to(device)
    drawn = torch.empty(shape, device=device)
    for gen, block in zip(gens, drawn, strict=True):
        block.uniform_(generator=gen)
    return drawn


def _dropout_seed(seed: int) -> int:
    """A job's dropout seed: its own (masks do not depend on the group it trains in) and
    apart from its batch order's (``seed`` itself)."""
    return int(np.random.SeedSequence([int(seed), 1]).generate_state(1)[0])


def _dropout_generator(seed: int, device: torch.device) -> Any:
    """The generator of one model's dropout masks (see :func:`_uniform`)."""
    if device.type == "cpu":
        return np.random.default_rng(seed)
    return torch.Generator(device=device).manual_seed(seed)


def _step(
    stack: Stack,
    data: _Data,
    targets: torch.Tensor,
    epoch: _Epoch,
    t: int,
    settings: TrainingSettings,
    dropout: float,
    gens: dict[int, Any],
) -> torch.Tensor:
    """One training step of the models with a batch at step ``t``: their losses ``(a,)``."""
    a = epoch.active[t]
    params = [p[:a] for p in stack.params]
    mine = [gens[j] for j in stack.jobs[:a]]
    batch = _batch(data, epoch.rows[:a, t], params[0].shape[2], dropout, mine)
    losses, grads = gradients(params, batch, targets[epoch.samples[:a, t]], epoch.weight[:a, t])
    apply_adam(stack, grads, a, settings.lr, fused_adam(data.device.type))
    return losses


def _scores(
    stack: Stack, jobs: list[RegressorJob], targets: torch.Tensor, last_loss: torch.Tensor
) -> list[float]:
    """Each model's validation score (eval mode): mean R, or -loss with ≤ 2 samples."""
    scores = []
    w1, b1, w2, b2 = stack.params
    with torch.no_grad():
        for k, j in enumerate(stack.jobs):
            job = jobs[j]
            if len(job.val_idx) <= 2:
                score = -float(last_loss[k].item())
            else:
                rows = torch.as_tensor(job.val_idx, device=w1.device)
                hidden = torch.addmm(b1[k], job.latents.means[rows].to(w1.dtype), w1[k])
                pred = torch.addmm(b2[k], hidden, w2[k]).cpu().numpy()
                truth = targets[rows].cpu().numpy()
                score = validation_r(pred, truth, job.val_sections)
            scores.append(-np.inf if np.isnan(score) else float(score))
    return scores


def _check(jobs: list[RegressorJob], targets: torch.Tensor) -> None:
    for k, job in enumerate(jobs):
        if len(job.train_idx) == 0:
            raise ValueError(f"regressor job {k} has no training samples")
        if job.latents.means.shape[0] != targets.shape[0]:
            raise ValueError(
                f"regressor job {k}: {job.latents.means.shape[0]} samples of latents but "
                f"{targets.shape[0]} of targets"
            )


def fit_regressors(
    jobs: list[RegressorJob],
    targets: torch.Tensor,
    settings: TrainingSettings,
    cancel: CancelLike = None,
    *,
    dropout: float = 0.2,
) -> list[tuple[dict[str, torch.Tensor], float, int]]:
    """Fit one early-stopped :class:`~.nn.MLPRegression` per job, in lockstep groups.

    Each job trains as it would alone (see the module's notes); the same jobs give the same
    states whatever the global RNG and whichever jobs train beside them (each job's dropout
    masks come from its own generator, seeded by its seed).

    Parameters
    ----------
    jobs
        The regressors to fit; their latents may differ (one autoencoder per outer fold) but
        have the same shape.
    targets
        ``(n_samples, n_genes)`` float32 targets, indexed like the latents' samples.
    settings
        ``lr``, ``batch_slides``, ``max_epochs``, ``patience`` and ``latent_dim``.
    cancel
        Checked once per epoch.
    dropout
        Dropout rate in training (:class:`~.nn.MLPRegression`'s 0.2; 0 for tests).

    Returns
    -------
    list of (dict, float, int)
        For each job, in order: the state dict of its best epoch (CPU float32, loadable by
        ``MLPRegression(n_genes, in_dim=settings.latent_dim)``), that epoch's validation
        score (mean R, or minus the epoch's last training loss with ≤ 2 validation samples;
        NaN counts as -inf) and the epoch (0-based).

    Raises
    ------
    ValueError
        A job without training samples, or latents and targets of different lengths.
    CancelledError
        ``cancel`` said so.
    """
    if not jobs:
        return []
    _check(jobs, targets)
    targets = targets.to(jobs[0].latents.means.device, torch.float32)
    best: list[Any] = [None] * len(jobs)  # (state, score, epoch) of each job
    for group in _groups(jobs, targets.shape[1], settings):
        _fit_group(jobs, group, targets, settings, cancel, dropout, best)
    return [tuple(b) for b in best]


def _groups(jobs: list[RegressorJob], genes: int, settings: TrainingSettings) -> list[list[int]]:
    """The jobs in lockstep groups (:func:`~.lockstep.group_size`), most training samples
    first."""
    order = sorted(range(len(jobs)), key=lambda k: -len(jobs[k].train_idx))  # stable
    device = jobs[0].latents.means.device
    size = group_size(len(jobs), genes, settings.latent_dim, device)
    return [order[start : start + size] for start in range(0, len(order), size)]


def _fit_group(
    jobs: list[RegressorJob],
    group: list[int],
    targets: torch.Tensor,
    settings: TrainingSettings,
    cancel: CancelLike,
    dropout: float,
    best: list[Any],
) -> None:
    """Train the jobs of ``group`` in lockstep until each stops; fill in their ``best``."""
    data = _pool_data(jobs, group)
    stack = _init_stack(jobs, group, targets, settings.latent_dim)
    rngs = {k: np.random.default_rng(jobs[k].seed) for k in group}
    gens = {k: _dropout_generator(_dropout_seed(jobs[k].seed), data.device) for k in group}
    waited = dict.fromkeys(group, 0)
    for epoch_index in range(settings.max_epochs):
        check_cancelled(cancel, "training")
        epoch = _epoch(stack, jobs, rngs, data, settings.batch_slides, targets.shape[1])
        # kept on the device: no wait for the device at every step, one read an epoch
        last_loss = torch.full((len(stack.jobs),), float("nan"), device=data.device)
        for t in range(len(epoch.active)):
            losses = _step(stack, data, targets, epoch, t, settings, dropout, gens)
            last_loss[: epoch.active[t]] = losses.detach()
        going = []
        for k, score in enumerate(_scores(stack, jobs, targets, last_loss)):
            j = stack.jobs[k]
            if best[j] is None or score > best[j][1]:
                best[j], waited[j] = (stack.model_state(k), score, epoch_index), 0
            else:
                waited[j] += 1
            if waited[j] < settings.patience:
                going.append(k)
        if not going:
            return
        if len(going) < len(stack.jobs):
            stack.keep(going)
