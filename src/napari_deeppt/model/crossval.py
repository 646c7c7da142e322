"""Nested, group-level cross-validation and the final ensemble (DeepPT's protocol).

Outer folds of whole patients (or sections) give the held-out predictions the metrics are
computed on; within each, an autoencoder is fitted on the training folds only and the inner
folds' early-stopped regressors form an ensemble. The final model repeats this on everything.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from ..errors import DeepPTError
from ..progress import CancelLike, ProgressLike, check_cancelled, make_progress
from .folds import group_folds
from .metrics import gene_metrics, section_metrics, summarise, validation_r
from .nn import AutoEncoder, MLPRegression
from .settings import TrainingSettings

__all__ = ["CrossValidation", "cross_validate"]


def _fit_autoencoder(tiles: Any, settings: TrainingSettings, seed: int, cancel: CancelLike) -> Any:
    gen = torch.Generator().manual_seed(seed)
    torch.default_generator.manual_seed(seed)
    model = AutoEncoder(tiles.shape[1], settings.latent_dim)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr)
    for _ in range(settings.ae_epochs):
        check_cancelled(cancel, "training")
        order = torch.randperm(tiles.shape[0], generator=gen)
        for start in range(0, tiles.shape[0], settings.ae_batch):
            x = tiles[order[start : start + settings.ae_batch]]
            loss = torch.nn.functional.mse_loss(model(x), x)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval()


class Latents(NamedTuple):
    """Every sample's latent tiles, and the mean latent of each sample.

    The regressor is affine in evaluation (Linear, Dropout off, Linear), so a sample's mean
    tile prediction is the prediction of its mean latent tile: validation and held-out
    predictions are one forward pass over ``means`` rather than one per sample
    (``tests/test_training_speed.py`` holds the two equal).
    """

    tiles: list[Any]
    means: Any  # (n_samples, latent_dim)
    single: bool  # one tile per sample (spots): a batch is a row selection


def _slide_predictions(model: Any, latents: Latents, indices: np.ndarray) -> Any:
    with torch.no_grad():
        return model(latents.means[torch.as_tensor(indices)])


def _batch_tiles(latents: Latents, batch: np.ndarray) -> tuple[Any, Any, Any]:
    """The batch's tiles, the sample of each tile, and each sample's tile count."""
    if latents.single:
        rows = torch.as_tensor(batch)
        return latents.means[rows], torch.arange(len(batch)), torch.ones(len(batch))
    counts = torch.tensor([latents.tiles[i].shape[0] for i in batch])
    x = torch.cat([latents.tiles[i] for i in batch])
    return x, torch.repeat_interleave(torch.arange(len(batch)), counts), counts


def _fit_regressor(
    latents: Latents,
    targets: Any,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    settings: TrainingSettings,
    seed: int,
    cancel: CancelLike,
    val_sections: np.ndarray | None = None,
) -> tuple[dict[str, Any], float, int]:
    """One regressor, early-stopped on the mean validation R (within ``val_sections``)."""
    torch.default_generator.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = MLPRegression(
        targets.shape[1], in_dim=settings.latent_dim, output_bias=targets[train_idx].mean(dim=0)
    )
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr, foreach=True)
    truth_val = targets[val_idx].numpy()
    best_r, best_state, best_epoch, waited = -np.inf, None, 0, 0
    for epoch in range(settings.max_epochs):
        check_cancelled(cancel, "training")
        model.train()
        order = rng.permutation(train_idx)
        for start in range(0, len(order), settings.batch_slides):
            batch = order[start : start + settings.batch_slides]
            x, segment, counts = _batch_tiles(latents, batch)
            tile_pred = model(x)
            slide_pred = (
                tile_pred
                if latents.single
                else torch.zeros(len(batch), tile_pred.shape[1]).index_add_(0, segment, tile_pred)
                / counts[:, None]
            )
            loss = torch.nn.functional.mse_loss(slide_pred, targets[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        model.eval()
        r = (
            validation_r(
                _slide_predictions(model, latents, val_idx).numpy(), truth_val, val_sections
            )
            if len(val_idx) > 2
            else -float(loss.detach())
        )
        r = -np.inf if np.isnan(r) else float(r)
        if r > best_r or best_state is None:
            best_r, best_epoch, waited = r, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            waited += 1
            if waited >= settings.patience:
                break
    return best_state, best_r, best_epoch


def _ensemble(
    latents: Latents,
    targets: Any,
    pool: np.ndarray,
    groups: np.ndarray,
    settings: TrainingSettings,
    seed: int,
    cancel: CancelLike,
    within: bool = False,
) -> list[dict]:
    """Inner-fold models over ``pool``, each early-stopped on its own held-out groups
    (patients; for spots, sections, scored within each section)."""
    rng = np.random.default_rng(seed)
    folds = group_folds(groups[pool], settings.inner_folds, rng)
    states = []
    for k, fold in enumerate(folds):
        val_idx = pool[fold]
        train_idx = np.setdiff1d(pool, val_idx)
        state, _, _ = _fit_regressor(
            latents,
            targets,
            train_idx,
            val_idx,
            settings,
            seed * 100 + k,
            cancel,
            groups[val_idx] if within else None,
        )
        states.append(state)
    return states


def _encode(autoencoder: Any, features: list[Any], chunk_tiles: int = 65536) -> Latents:
    """Every sample's latent tiles and their means, encoded in chunks of samples."""
    tiles: list[Any] = []
    with torch.no_grad():
        start = 0
        while start < len(features):
            stop, size = start, 0
            while stop < len(features) and (size == 0 or size + len(features[stop]) <= chunk_tiles):
                size += len(features[stop])
                stop += 1
            encoded = autoencoder.encode(torch.cat(features[start:stop]))
            tiles.extend(encoded.split([len(f) for f in features[start:stop]]))
            start = stop
    means = torch.stack([t.mean(dim=0) for t in tiles])
    return Latents(tiles, means, all(len(t) == 1 for t in tiles))


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
    features: list[Any],
    targets: Any,
    groups: np.ndarray,
    genes: list[str],
    options: TrainingSettings,
    progress: ProgressLike,
    cancel: CancelLike,
    within: bool = False,
) -> CrossValidation:
    """Outer folds by group (held-out predictions, metrics), then the final model on all.

    Parameters
    ----------
    features
        ``features[i]``: the ``(n_tiles, D)`` float32 tensor of sample ``i`` (one tile for
        a spot).
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

    Returns
    -------
    CrossValidation

    Raises
    ------
    DeepPTError
        Training diverged (non-finite predictions or weights).
    """
    n = len(features)
    outer = group_folds(groups, options.outer_folds, np.random.default_rng(options.seed))
    heldout = np.zeros(tuple(targets.shape), np.float32)
    fit = {"groups": groups, "options": options, "cancel": cancel, "within": within}
    with make_progress(progress, options.outer_folds + 1, "cross-validation", unit="fold") as bar:
        for k, test_idx in enumerate(outer):
            train_idx = np.setdiff1d(np.arange(n), test_idx)
            seeds = (options.seed + k, options.seed + 17 * (k + 1))
            _, latents, states = _fit_fold(features, targets, train_idx, seeds, **fit)
            heldout[test_idx] = _ensemble_predict(
                states, latents, test_idx, len(genes), options.latent_dim
            )
            _require_finite(heldout[test_idx], options, f"outer fold {k + 1}")
            bar.update()
        metrics, per_section, summary = _heldout_metrics(heldout, targets, genes, groups, within)
        seeds = (options.seed, options.seed)
        autoencoder, _, states = _fit_fold(features, targets, np.arange(n), seeds, **fit)
        for state in [autoencoder.state_dict(), *states]:
            weights = np.concatenate([v.numpy().ravel() for v in state.values()])
            _require_finite(weights, options, "the final model")
        bar.update()
    return CrossValidation(heldout, metrics, summary, per_section, autoencoder, states)


def _fit_fold(
    features: list[Any],
    targets: Any,
    train_idx: np.ndarray,
    seeds: tuple[int, int],
    groups: np.ndarray,
    options: TrainingSettings,
    cancel: CancelLike,
    within: bool,
) -> tuple[Any, Latents, list[dict]]:
    """The autoencoder (fitted on ``train_idx`` only), every sample's latents, the ensemble."""
    autoencoder_seed, ensemble_seed = seeds
    tiles = torch.cat([features[i] for i in train_idx])
    autoencoder = _fit_autoencoder(tiles, options, autoencoder_seed, cancel)
    latents = _encode(autoencoder, features)
    states = _ensemble(latents, targets, train_idx, groups, options, ensemble_seed, cancel, within)
    return autoencoder, latents, states


def _heldout_metrics(
    heldout: np.ndarray, targets: Any, genes: list[str], groups: np.ndarray, within: bool
) -> tuple[Any, Any, dict[str, Any]]:
    """Per-gene metrics, per-section R (spots; else None) and their summary."""
    if within:
        metrics, per_section = section_metrics(heldout, targets.numpy(), genes, groups)
        return metrics, per_section, summarise(metrics, "within-section mean")
    metrics = gene_metrics(heldout, targets.numpy(), genes)
    return metrics, None, summarise(metrics, "pooled")


def _require_finite(values: np.ndarray, options: TrainingSettings, where: str) -> None:
    """Refuse a diverged run: NaN/inf predictions or weights are never kept or scored."""
    if not np.isfinite(values).all():
        raise DeepPTError(
            f"training diverged: {where} has non-finite predictions or weights with "
            f"lr={options.lr:g}; lower lr (DeepPT: 1e-4) and train again"
        )
