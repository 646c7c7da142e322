"""The maths of lockstep training: many :class:`~.nn.MLPRegression` stacked as one.

A group's parameters are stacked along a leading model axis (:class:`Stack`); a step is one
batched product per layer, forward and backward written out (:func:`gradients`), and one
fused Adam call over every model of the group that had a batch (:func:`apply_adam`). How
many models share a step (:func:`group_size`) changes nothing but speed: each model draws
its own dropout masks.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch.optim.adam import adam

__all__ = ["KEYS", "WEIGHTS", "Batch", "Stack", "apply_adam", "gradients", "group_size"]

KEYS = ("net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias")
WEIGHTS = (True, False, True, False)  # stacked transposed, (in, out): see Stack
HIDDEN = 512  # MLPRegression's
_BETAS = (0.9, 0.999)
_EPS = 1e-8
_CACHE_BYTES = 20 * 2**20  # CPU: a group's parameters, gradients and moments in about a cache


class Stack:
    """The stacked parameters, Adam moments and step counts of the models still training.

    ``params``, ``exp_avg`` and ``exp_avg_sq`` hold one tensor per parameter of
    :class:`~.nn.MLPRegression` (``KEYS``), each ``(K, *shape)``, the weights transposed
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
            for key, weight, p in zip(KEYS, WEIGHTS, self.params)
        }


def adam_update(
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


class Batch(NamedTuple):
    """One step's inputs of the models with a batch (``a`` of them)."""

    x: torch.Tensor  # (a, B * S, D) float32 tiles
    pool: torch.Tensor | None  # (a * B, 1, S): each tile's weight in its sample's mean
    keep: torch.Tensor | None  # (a, B * S, H): dropout's kept units, scaled by 1 / (1 - p)


def gradients(
    params: list[torch.Tensor], batch: Batch, truth: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Each model's loss ``(a,)`` and the gradients of their sum, written out by hand.

    Per tile: ``h = x @ w1 + b1``, dropout; per sample: the mean over its tiles (pooled
    before the output layer: the same, as that layer is linear), ``pred = mean @ w2 + b2``;
    loss: ``sum(weight * (pred - truth)²)``, ``weight`` = 1 / (samples × genes) of the
    model's batch (0 for padding), the MSE of each model.

    Parameters
    ----------
    params
        The stacked ``w1, b1, w2, b2`` of the ``a`` models (weights transposed).
    batch
        Their tiles, pooling weights and dropout masks (:class:`Batch`).
    truth
        ``(a, B, genes)`` targets of each model's batch.
    weight
        ``(a, B)`` each sample's weight in its model's loss.
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


def apply_adam(stack: Stack, grads: list[torch.Tensor], a: int, lr: float, fused: bool) -> None:
    """Adam's update of the first ``a`` models of ``stack`` with their stacked ``grads``
    (one tensor per parameter, ``(a, *shape)``), each model with its own step count.

    Parameters
    ----------
    stack
        The models.
    grads
        As :func:`gradients` returns them.
    a
        The models that had a batch (a prefix of the stack).
    lr
        Adam's learning rate.
    fused
        Use torch's fused CPU Adam (:func:`~.nn.fused_adam`), else foreach.
    """
    flat = [g for grad in grads for g in grad.contiguous().unbind(0)]  # a no-op: see Stack
    params, exp_avg, exp_avg_sq = (
        [v for views in group for v in views[:a]] for group in stack.views
    )
    steps = [s for steps in stack.steps for s in steps[:a]]
    adam_update(params, flat, exp_avg, exp_avg_sq, steps, lr, fused)


def model_bytes(genes: int, latent_dim: int) -> int:
    """One model's parameters, gradients and two Adam moments (float32), in bytes."""
    return 4 * 4 * (latent_dim * HIDDEN + HIDDEN + HIDDEN * genes + genes)


def group_size(n_jobs: int, genes: int, latent_dim: int, device: Any) -> int:
    """How many models train in one lockstep group: chosen for speed alone.

    Every job on a GPU. On the CPU as many as fit about a cache (``_CACHE_BYTES``): a step
    reads and writes every model's parameters, gradients and Adam moments (2 cores, 1,006
    spots, a step's products and Adam alone: 0.37–0.40 ms a model in groups of 4, 0.47 ms
    in one of 24, on two AMD EPYC hosts; whole runs on the second were too noisy, ±40 %
    run to run, to tell the sizes apart).

    Parameters
    ----------
    n_jobs
        Models to train.
    genes, latent_dim
        Their output and input sizes.
    device
        The training device.
    """
    if torch.device(device).type != "cpu":
        return max(1, n_jobs)
    return min(max(1, n_jobs), max(1, _CACHE_BYTES // model_bytes(genes, latent_dim)))
