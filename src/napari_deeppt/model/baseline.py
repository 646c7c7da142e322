"""HEST-Benchmark's linear probe: PCA to 256 components, then ridge, per fold.

Jaume et al. (NeurIPS 2024, HEST-1k) compare patch encoders by how well a linear model on
their features predicts expression: features standardised and reduced to 256 principal
components on the training fold, then ridge regression with ``alpha = 100 / (components ×
genes)``, scored by per-gene Pearson R on the held-out fold. Training reports it beside
DeepPT's held-out R on the same features and folds; :mod:`napari_deeppt.extractor_benchmark`
runs it for several extractors on a user's spots.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .feature_source import FeatureSource

__all__ = ["PCA_COMPONENTS", "pca_ridge_heldout", "sample_means"]

PCA_COMPONENTS = 256


def pca_ridge_heldout(
    features: np.ndarray,
    targets: np.ndarray,
    folds: Sequence[np.ndarray],
    components: int = PCA_COMPONENTS,
    seed: int = 0,
) -> np.ndarray:
    """Held-out predictions of the PCA + ridge probe, each fold trained on the others.

    Parameters
    ----------
    features
        ``(n_samples, D)`` features (a spot's tile, or a slide's mean tile).
    targets
        ``(n_samples, n_genes)`` expression on the scale it is scored on.
    folds
        The held-out indices of each fold (they partition the samples).
    components
        Principal components kept (fewer when a training fold has fewer samples or features).
    seed
        Seeds the randomised SVD of a large PCA.

    Returns
    -------
    numpy.ndarray
        ``(n_samples, n_genes)`` float32: each sample predicted by the fold that held it out.
    """
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features = np.asarray(features, np.float32)
    targets = np.asarray(targets, np.float64)
    heldout = np.zeros(targets.shape, np.float32)
    everyone = np.arange(len(features))
    for test in folds:
        train = np.setdiff1d(everyone, test)
        k = max(1, min(components, len(train) - 1, features.shape[1]))
        probe = make_pipeline(
            StandardScaler(),
            PCA(n_components=k, random_state=seed),
            Ridge(alpha=100.0 / (k * targets.shape[1]), solver="lsqr", random_state=seed),
        )
        probe.fit(features[train], targets[train])
        heldout[test] = probe.predict(features[test])
    return heldout


def sample_means(source: FeatureSource, max_rows: int) -> np.ndarray:
    """Each sample's mean feature, read block by block (memory: a block and the means).

    Parameters
    ----------
    source
        Where every sample's tiles are.
    max_rows
        Rows read at a time.

    Returns
    -------
    numpy.ndarray
        ``(n_samples, D)`` float32.
    """
    sums = np.zeros((len(source), source.dim), np.float64)
    for block in source.blocks(np.arange(len(source)), max_rows):
        starts = np.flatnonzero(np.diff(block.samples, prepend=-1))  # a run per sample
        sums[block.samples[starts]] += np.add.reduceat(
            source.read(block), starts, axis=0, dtype=np.float64
        )
    return (sums / source.counts[:, None]).astype(np.float32)
