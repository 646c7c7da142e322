"""Nested, group-level cross-validation and the final ensemble (DeepPT's protocol).

Outer folds of whole patients (or sections) give the held-out predictions the metrics are
computed on; within each, an autoencoder is fitted on the training folds only and the inner
folds' early-stopped regressors form an ensemble. The final model repeats this on everything.

Features stay on disk (:mod:`.feature_source`): each autoencoder trains on minibatches
streamed from the stores and one more pass encodes every tile (:mod:`.autoencoding`); the
regressors of an ensemble — of the whole run when the latents are small, as for spots —
train together in lockstep (:mod:`.regressors`).
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from ..errors import DeepPTError
from ..progress import CancelLike, ProgressLike, make_progress
from . import autoencoding
from .autoencoding import autoencoder_tiles, encode, fit_autoencoder, tile_sample
from .baseline import PCA_COMPONENTS, pca_ridge_heldout, sample_means
from .feature_source import FeatureSource
from .folds import group_folds
from .latents import LatentFile, Latents
from .metrics import gene_metrics, section_metrics, summarise
from .nn import MLPRegression
from .regressors import RegressorJob, fit_regressors
from .settings import TrainingSettings

__all__ = ["CrossValidation", "cross_validate"]

_LOCKSTEP_BYTES = 64 * 2**20  # every fit's latents together at most


def _slide_predictions(model: Any, latents: Latents, indices: np.ndarray) -> Any:
    """Each sample's mean tile prediction: the prediction of its mean latent (affine model)."""
    with torch.no_grad():
        return model(latents.means[torch.as_tensor(indices, device=latents.means.device)].cpu())


def _ensemble_jobs(
    latents: Latents,
    pool: np.ndarray,
    groups: np.ndarray,
    settings: TrainingSettings,
    seed: int,
    within: bool,
) -> list[RegressorJob]:
    """Inner-fold regressors over ``pool``, each early-stopped on its own held-out groups
    (patients; for spots, sections, scored within each section)."""
    rng = np.random.default_rng(seed)
    jobs = []
    for k, fold in enumerate(group_folds(groups[pool], settings.inner_folds, rng)):
        val_idx = pool[fold]
        sections = groups[val_idx] if within else None
        train_idx = np.setdiff1d(pool, val_idx)
        jobs.append(RegressorJob(latents, train_idx, val_idx, seed * 100 + k, sections))
    return jobs


def _ensemble_predict(
    states: list[dict], latents: Latents, indices: np.ndarray, n_genes: int, latent_dim: int
) -> np.ndarray:
    preds = []
    for state in states:
        model = MLPRegression(n_genes, in_dim=latent_dim)
        model.load_state_dict(state)
        preds.append(_slide_predictions(model.eval(), latents, indices).numpy())
    return np.mean(preds, axis=0)


class CrossValidation(NamedTuple):
    """What :func:`cross_validate` made: held-out predictions, metrics and the final model."""

    heldout: np.ndarray
    metrics: Any
    summary: dict[str, Any]
    per_section: Any  # genes × sections R for spots, None for bulk
    autoencoder: Any
    states: list[dict]


def cross_validate(
    features: FeatureSource | list[Any],
    targets: Any,
    groups: np.ndarray,
    genes: list[str],
    options: TrainingSettings,
    progress: ProgressLike,
    cancel: CancelLike,
    within: bool = False,
    device: torch.device | None = None,
) -> CrossValidation:
    """Outer folds by group (held-out predictions, metrics), then the final model on all.

    Parameters
    ----------
    features
        Where every sample's tiles are (:class:`~.feature_source.FeatureSource`: rows of
        feature stores, streamed), or a list whose item ``i`` is sample ``i``'s
        ``(n_tiles, D)`` array (one tile for a spot).
    targets
        ``(n_samples, n_genes)`` float32 tensor of transformed expression.
    groups
        ``(n_samples,)`` patient (bulk) or section (spots) of each sample: folds hold out
        whole groups.
    genes
        Gene names, for the metrics.
    options
        Fold counts, optimisation settings and the seed.
    progress, cancel
        See :mod:`napari_deeppt.progress`.
    within
        Spots: R is computed within each section (:func:`~.metrics.section_metrics`),
        for early stopping too; otherwise pooled over samples (DeepPT).
    device
        Where the autoencoders and regressors train (default: the CPU). What it returns is
        on the CPU either way.

    Returns
    -------
    CrossValidation

    Raises
    ------
    DeepPTError
        Training diverged (non-finite predictions or weights).
    """
    source = features if isinstance(features, FeatureSource) else FeatureSource.in_memory(features)
    n = len(source)
    outer = group_folds(groups, options.outer_folds, np.random.default_rng(options.seed))
    seed = options.seed
    fits = [
        _Fit(np.setdiff1d(np.arange(n), test), (seed + k, seed + 17 * (k + 1)), test)
        for k, test in enumerate(outer)
    ] + [_Fit(np.arange(n), (seed, seed), None)]  # the final model
    heldout = np.zeros(tuple(targets.shape), np.float32)
    device = torch.device("cpu") if device is None else device
    _fit_all(fits, source, targets, groups, options, (progress, cancel), within, heldout, device)
    final = fits[-1]
    metrics, per_section, summary = _heldout_metrics(heldout, targets, genes, groups, within)
    _add_baseline(metrics, summary, source, targets, outer, groups, within, options.seed)
    for state in [final.autoencoder.state_dict(), *final.states]:
        weights = np.concatenate([v.numpy().ravel() for v in state.values()])
        _require_finite(weights, options, "the final model")
    return CrossValidation(heldout, metrics, summary, per_section, final.autoencoder, final.states)


def _fit_all(
    fits: list[_Fit],
    source: FeatureSource,
    targets: Any,
    groups: np.ndarray,
    options: TrainingSettings,
    reporting: tuple[ProgressLike, CancelLike],
    within: bool,
    heldout: np.ndarray,
    device: torch.device,
) -> None:
    """Each fit's autoencoder, latents and ensemble; the outer folds' held-out predictions.

    The regressors of every fit train in one lockstep when all their latents fit in
    ``_LOCKSTEP_BYTES`` (spots, small cohorts); otherwise each fit's train on their own, on
    latent tiles kept in a scratch file (memory then does not grow with the cohort).
    Everything trains on ``device``; each autoencoder is moved to the CPU once encoded.
    """
    progress, cancel = reporting
    kept = tile_sample(source.counts, options.regressor_tiles, options.seed + 2)
    one_fit = _latents_bytes(kept, source.counts, options.latent_dim)
    together = one_fit * len(fits) <= _LOCKSTEP_BYTES
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(
            make_progress(progress, 2 * len(fits), "cross-validation", unit="step")
        )
        ae_tiles = stack.enter_context(autoencoder_tiles(source, options))
        folder = None
        if not together:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="deeppt-")))
        pending: list[_Fit] = []
        for k, fit in enumerate(fits):
            autoencoder = fit_autoencoder(
                ae_tiles, fit.train, options, fit.seeds[0], cancel, device
            )
            file = None if folder is None else folder / f"latents{k}.bin"
            latents = encode(autoencoder, source, kept, cancel, scratch=file)
            if isinstance(latents.tiles, LatentFile):
                stack.callback(latents.tiles.close)  # before its folder goes
            fit.autoencoder, latents = autoencoder.cpu(), latents.to(device)
            fit.jobs = _ensemble_jobs(latents, fit.train, groups, options, fit.seeds[1], within)
            del latents  # the fit's jobs hold it until they are trained, no longer
            pending.append(fit)
            bar.update()
            if fit is fits[-1] or not together:
                _train_pending(pending, targets, options, cancel, heldout, targets.shape[1])
                bar.update(len(pending))
                pending = []


@dataclass(eq=False)
class _Fit:
    """One autoencoder and its ensemble: an outer fold (``test`` held out) or the final."""

    train: np.ndarray
    seeds: tuple[int, int]  # autoencoder, ensemble
    test: np.ndarray | None
    autoencoder: Any = None
    jobs: list[RegressorJob] = field(default_factory=list)
    states: list[dict] = field(default_factory=list)


def _latents_bytes(kept: list[np.ndarray], counts: np.ndarray, latent_dim: int) -> int:
    """The size of one fit's latents in memory (:func:`~.autoencoding.encode`): float16
    kept tiles and float32 means. Spots' tiles are a view of their means, but counted
    as float32 tiles and means, as before the tiles could live in a file: the same
    cohorts keep training every fit together as before (which changes their speed and
    memory, not their models)."""
    if bool((np.asarray(counts) == 1).all()):
        return len(kept) * latent_dim * 8
    slots = max((len(k) for k in kept), default=0)
    return len(kept) * latent_dim * (2 * slots + 4)


def _train_pending(
    pending: list[_Fit],
    targets: Any,
    options: TrainingSettings,
    cancel: CancelLike,
    heldout: np.ndarray,
    n_genes: int,
) -> None:
    """Train the pending fits' regressors together; fill their held-out predictions and
    close (remove) any latent file of theirs."""
    results = fit_regressors([job for fit in pending for job in fit.jobs], targets, options, cancel)
    for fit in pending:
        fit.states = [state for state, _, _ in results[: len(fit.jobs)]]
        results = results[len(fit.jobs) :]
        if fit.test is not None:
            latents = fit.jobs[0].latents
            heldout[fit.test] = _ensemble_predict(
                fit.states, latents, fit.test, n_genes, options.latent_dim
            )
            _require_finite(heldout[fit.test], options, "an outer fold")
        if isinstance(fit.jobs[0].latents.tiles, LatentFile):
            fit.jobs[0].latents.tiles.close()  # its scratch file goes now, not at the end
        fit.jobs = []  # their latents are no longer needed


def _heldout_metrics(
    heldout: np.ndarray, targets: Any, genes: list[str], groups: np.ndarray, within: bool
) -> tuple[Any, Any, dict[str, Any]]:
    """Per-gene metrics, per-section R (spots; else None) and their summary."""
    if within:
        metrics, per_section = section_metrics(heldout, targets.numpy(), genes, groups)
        return metrics, per_section, summarise(metrics, "within-section mean")
    metrics = gene_metrics(heldout, targets.numpy(), genes)
    return metrics, None, summarise(metrics, "pooled")


def _add_baseline(
    metrics: Any,
    summary: dict[str, Any],
    source: FeatureSource,
    targets: Any,
    outer: list[np.ndarray],
    groups: np.ndarray,
    within: bool,
    seed: int,
) -> None:
    """HEST's PCA + ridge probe on the same samples' mean features and the same outer
    folds, as ``metrics["baseline_r"]`` and ``summary["baseline_median_r"]``."""
    truth = targets.numpy()
    means = sample_means(source, autoencoding._BLOCK_ROWS)  # read as encoding reads
    heldout = pca_ridge_heldout(means, truth, outer, seed=seed)
    genes = list(metrics.index)
    if within:
        baseline, _ = section_metrics(heldout, truth, genes, groups)
    else:
        baseline = gene_metrics(heldout, truth, genes)
    metrics["baseline_r"] = baseline["pearson_r"].to_numpy()
    r = metrics["baseline_r"].dropna()
    summary["baseline_median_r"] = float(r.median()) if len(r) else float("nan")
    summary["baseline"] = f"PCA-{PCA_COMPONENTS} + ridge (HEST) on the same features and folds"


def _require_finite(values: np.ndarray, options: TrainingSettings, where: str) -> None:
    """Refuse a diverged run: NaN/inf predictions or weights are never kept or scored."""
    if not np.isfinite(values).all():
        raise DeepPTError(
            f"training diverged: {where} has non-finite predictions or weights with "
            f"lr={options.lr:g}; lower lr (DeepPT: 1e-4) and train again"
        )
