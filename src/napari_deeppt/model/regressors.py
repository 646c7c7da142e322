"""Many regressors trained together, in lockstep, as stacked models.

Cross-validation fits one :class:`~.nn.MLPRegression` per inner fold, per outer fold and for
the final ensemble. Each is small, so fitting them one after another spends most of a step
on Python and optimiser overhead. :func:`fit_regressors` trains them in lockstep groups:
a group's parameters are stacked along a leading model axis, a step is one batched matrix
product per layer (forward and backward written out), and one fused Adam call updates every
model of the group that had a batch. On the CPU a group is as many models as fit about a
cache (a step is bound by memory traffic, see :func:`_groups`); elsewhere, every model.

Each model still trains exactly as alone: its own initialisation (seeded), its own batch
order, its own loss (the stacked loss is the sum of the models' losses, so each gradient is
its model's own) and its own Adam state and step count. A model with no batch left in an
epoch's step is not updated at that step (neither its parameters nor its moments nor its
step count), and a model that early-stops is dropped from the stack, so it costs nothing
afterwards. Models are kept in order of decreasing batches per epoch: the models that still
have a batch at a step are a prefix of the stack, and a step works on views of that prefix.
Only the dropout masks depend on the group (one generator per group, seeded by its jobs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.optim.adam import adam

from ..progress import CancelLike, check_cancelled
from .latents import LatentFile, Latents
from .metrics import validation_r
from .nn import MLPRegression, fused_adam
from .settings import TrainingSettings

__all__ = ["RegressorJob", "fit_regressors"]

_KEYS = ("net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias")
_WEIGHTS = (True, False, True, False)  # stacked transposed, (in, out): see _Stack
_BETAS = (0.9, 0.999)
_EPS = 1e-8
_GROUP_BYTES = 20 * 2**20  # CPU: a lockstep group's parameters, gradients and moments


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
        Seeds its initialisation and its batch order.
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


class _Stack:
    """The stacked parameters, Adam moments and step counts of the models still training.

    ``params``, ``exp_avg`` and ``exp_avg_sq`` hold one tensor per parameter of
    :class:`~.nn.MLPRegression` (``_KEYS``), each ``(K, *shape)``, the weights transposed
    to ``(K, in, out)``: a batched product ``x @ w`` then has a contiguous gradient, which
    torch's fused CPU Adam needs (it reads a strided gradient in the wrong order, silently:
    torch 2.14). ``steps[p][k]`` is model ``k``'s step count for parameter ``p``;
    ``jobs[k]`` is the position of model ``k``'s job.
    """

    def __init__(self, params: list[torch.Tensor], jobs: list[int]) -> None:
        self.params = params
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self.steps = [[torch.tensor(0.0) for _ in jobs] for _ in params]
        self.jobs = jobs
        self._views()

    def _views(self) -> None:
        """Each model's slice of every tensor, for the optimiser (views, no copies)."""
        self.views = [[list(t.unbind(0)) for t in group] for group in self.state()]

    def state(self) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """The stacked parameters and moments."""
        return self.params, self.exp_avg, self.exp_avg_sq

    def keep(self, models: list[int]) -> None:
        """Drop every model not in ``models`` (stopped), keeping their order."""
        rows = torch.as_tensor(models, dtype=torch.int64, device=self.params[0].device)
        for group in self.state():
            group[:] = [t.index_select(0, rows).contiguous() for t in group]
        self.steps = [[steps[k] for k in models] for steps in self.steps]
        self.jobs = [self.jobs[k] for k in models]
        self._views()

    def model_state(self, k: int) -> dict[str, torch.Tensor]:
        """A copy of model ``k``'s parameters, as an :class:`~.nn.MLPRegression` state dict."""
        return {
            key: (p[k].T if weight else p[k]).to(
                "cpu", torch.float32, copy=True, memory_format=torch.contiguous_format
            )
            for key, weight, p in zip(_KEYS, _WEIGHTS, self.params)
        }


def _init_stack(
    jobs: list[RegressorJob], order: list[int], targets: torch.Tensor, latent_dim: int
) -> _Stack:
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
        for key, weight in zip(_KEYS, _WEIGHTS)
    ]
    return _Stack(params, list(order))


def _adam(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avg: list[torch.Tensor],
    exp_avg_sq: list[torch.Tensor],
    steps: list[torch.Tensor],
    lr: float,
    fused: bool,
) -> None:
    """torch.optim.Adam's update of each tensor, with each tensor's own step count."""
    adam(
        params,
        grads,
        exp_avg,
        exp_avg_sq,
        [],
        steps,
        foreach=None if fused else True,
        fused=fused or None,
        amsgrad=False,
        beta1=_BETAS[0],
        beta2=_BETAS[1],
        lr=lr,
        weight_decay=0.0,
        eps=_EPS,
        maximize=False,
    )


class _Epoch(NamedTuple):
    """One epoch's batches of every model: padded to the same number of steps and rows."""

    samples: torch.Tensor  # (K, T, B) sample index (0 where padded)
    rows: torch.Tensor  # (K, T, B) row in _Data.tiles
    weight: torch.Tensor  # (K, T, B) 1 / (rows in the batch × genes), 0 where padded
    active: list[int]  # models with a batch at each step (a prefix of the stack)


def _epoch(
    stack: _Stack,
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


class _Batch(NamedTuple):
    """One step's inputs of the models with a batch (``a`` of them)."""

    x: torch.Tensor  # (a, B * S, D) float32 tiles
    pool: torch.Tensor | None  # (a * B, 1, S): each tile's weight in its sample's mean
    keep: torch.Tensor | None  # (a, B * S, H): dropout's kept units, scaled by 1 / (1 - p)


def _batch(data: _Data, rows: torch.Tensor, hidden: int, dropout: float, gen: Any) -> _Batch:
    """Gather the tiles of ``rows`` ``(a, B)`` and draw each tile's dropout mask."""
    a, size = rows.shape
    x = data.tiles[rows.reshape(-1)].to(data.device, torch.float32)
    tiles = 1 if data.single else x.shape[1]
    x = x.reshape(a, size * tiles, -1)
    keep = None
    if dropout > 0:  # as torch's dropout: keep a unit with probability 1 - p
        keep = _uniform((a, size * tiles, hidden), gen, x.device)
        keep = keep.ge_(dropout).div_(1.0 - dropout)
    if data.single:
        return _Batch(x, None, keep)
    counts = data.counts[rows.reshape(-1)]
    kept = torch.arange(tiles, device=x.device)[None, :] < counts[:, None]
    return _Batch(x, (kept / counts[:, None]).reshape(a * size, 1, tiles), keep)


def _uniform(shape: tuple[int, ...], gen: Any, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) float32 numbers: from numpy's PCG64 ``gen`` on the CPU (about twice
    as fast as torch's CPU generator, whose numbers are drawn one at a time), else from the
    device's torch ``gen``."""
    if isinstance(gen, np.random.Generator):
        return torch.from_numpy(gen.random(shape, dtype=np.float32)).to(device)
    return torch.empty(shape, device=device).uniform_(generator=gen)


def _dropout_generator(seed: int, device: torch.device) -> Any:
    """The generator of a group's dropout masks (see :func:`_uniform`)."""
    if device.type == "cpu":
        return np.random.default_rng(seed)
    return torch.Generator(device=device).manual_seed(seed)


def _gradients(
    params: list[torch.Tensor], batch: _Batch, truth: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Each model's loss ``(a,)`` and the gradients of their sum, written out by hand.

    Per tile: ``h = x @ w1 + b1``, dropout; per sample: the mean over its tiles (pooled
    before the output layer: the same, as that layer is linear), ``pred = mean @ w2 + b2``;
    loss: ``sum(weight * (pred - truth)²)``, ``weight`` = 1 / (samples × genes) of the
    model's batch (0 for padding), the MSE of each model.
    """
    w1, b1, w2, b2 = params
    a, rows, hidden = batch.x.shape[0], truth.shape[1], w1.shape[2]
    h = torch.baddbmm(b1[:, None, :], batch.x, w1)
    if batch.keep is not None:
        h.mul_(batch.keep)
    pooled = h if batch.pool is None else torch.bmm(batch.pool, h.view(a * rows, -1, hidden))
    pooled = pooled.view(a, rows, hidden)
    residual = torch.baddbmm(b2[:, None, :], pooled, w2).sub_(truth)
    scaled = residual * weight[:, :, None]
    losses = (residual * scaled).sum(dim=(1, 2))
    d_pred = scaled.mul_(2.0)
    d_h = torch.bmm(d_pred, w2.transpose(1, 2))
    if batch.pool is not None:  # each tile gets its weight's share of its sample's gradient
        d_h = (batch.pool.transpose(1, 2) * d_h.view(a * rows, 1, hidden)).view(a, -1, hidden)
    if batch.keep is not None:
        d_h.mul_(batch.keep)
    grads = [
        torch.bmm(batch.x.transpose(1, 2), d_h),
        d_h.sum(dim=1),
        torch.bmm(pooled.transpose(1, 2), d_pred),
        d_pred.sum(dim=1),
    ]
    return losses, grads


def _step(
    stack: _Stack,
    data: _Data,
    targets: torch.Tensor,
    epoch: _Epoch,
    t: int,
    settings: TrainingSettings,
    dropout: float,
    gen: Any,
) -> torch.Tensor:
    """One training step of the models with a batch at step ``t``: their losses ``(a,)``."""
    a = epoch.active[t]
    params = [p[:a] for p in stack.params]
    batch = _batch(data, epoch.rows[:a, t], params[0].shape[2], dropout, gen)
    losses, grads = _gradients(params, batch, targets[epoch.samples[:a, t]], epoch.weight[:a, t])
    grads = [g for grad in grads for g in grad.contiguous().unbind(0)]  # a no-op: see _Stack
    params, exp_avg, exp_avg_sq = (
        [v for views in group for v in views[:a]] for group in stack.views
    )
    steps = [s for steps in stack.steps for s in steps[:a]]
    _adam(params, grads, exp_avg, exp_avg_sq, steps, settings.lr, fused_adam(data.device.type))
    return losses


def _scores(
    stack: _Stack, jobs: list[RegressorJob], targets: torch.Tensor, last_loss: torch.Tensor
) -> list[float]:
    """Each model's validation score (eval mode): mean R, or -loss with ≤ 2 samples."""
    scores = []
    w1, b1, w2, b2 = stack.params
    with torch.no_grad():
        for k, j in enumerate(stack.jobs):
            job = jobs[j]
            if len(job.val_idx) <= 2:
                score = -float(last_loss[k])
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
    states whatever the global RNG. Only the dropout masks depend on the group a job trains
    in (one generator per group, seeded by its jobs' seeds).

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
    for group in _groups(jobs, targets.shape[1], settings.latent_dim):
        _fit_group(jobs, group, targets, settings, cancel, dropout, best)
    return [tuple(b) for b in best]


def _groups(jobs: list[RegressorJob], genes: int, latent_dim: int) -> list[list[int]]:
    """The jobs in lockstep groups, most training samples first.

    A lockstep step is bound by memory traffic: every model's parameters, gradients and
    Adam moments are read and written once a step. On the CPU the models of a group are
    as many as fit ``_GROUP_BYTES`` (about a cache), so that a group's steps run from the
    cache (2 cores, 512 latents: 4 models a step take 0.37 ms each, 24 models 0.47 ms each).
    Other devices take every job in one group.
    """
    order = sorted(range(len(jobs)), key=lambda k: -len(jobs[k].train_idx))  # stable
    if jobs[0].latents.means.device.type != "cpu":
        return [order]
    hidden = 512  # MLPRegression's
    model_bytes = 4 * 4 * (latent_dim * hidden + hidden + hidden * genes + genes)
    size = max(1, _GROUP_BYTES // model_bytes)
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
    seed = np.random.SeedSequence([int(jobs[k].seed) for k in group]).generate_state(1)[0]
    gen = _dropout_generator(int(seed), data.device)
    waited = dict.fromkeys(group, 0)
    for epoch_index in range(settings.max_epochs):
        check_cancelled(cancel, "training")
        epoch = _epoch(stack, jobs, rngs, data, settings.batch_slides, targets.shape[1])
        last_loss = torch.full((len(stack.jobs),), float("nan"))
        for t in range(len(epoch.active)):
            losses = _step(stack, data, targets, epoch, t, settings, dropout, gen)
            last_loss[: epoch.active[t]] = losses.cpu()
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
