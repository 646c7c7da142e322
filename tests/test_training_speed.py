"""The vectorised training paths compute what the per-sample ones did (issue 13, item 2)."""

from __future__ import annotations

import numpy as np
import torch

from napari_deeppt.model import autoencoding
from napari_deeppt.model.autoencoding import encode, tile_sample
from napari_deeppt.model.crossval import _slide_predictions
from napari_deeppt.model.feature_source import FeatureSource
from napari_deeppt.model.nn import AutoEncoder, MLPRegression


def _encode(autoencoder, features, block_rows, monkeypatch):
    """Every tile kept, read ``block_rows`` at a time."""
    monkeypatch.setattr(autoencoding, "_BLOCK_ROWS", block_rows)
    source = FeatureSource.in_memory(features)
    kept = tile_sample(source.counts, None, 0)
    return encode(autoencoder, source, kept, dtype=torch.float32)


def _samples(counts, dim=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(n, dim, generator=generator) for n in counts]


def test_a_sample_prediction_is_the_prediction_of_its_mean_latent(monkeypatch):
    """The regressor is affine in evaluation, so predicting each tile and averaging equals
    predicting the mean tile: validation is one forward pass, not one per sample."""
    torch.manual_seed(0)
    autoencoder, model = AutoEncoder(32, 16).eval(), MLPRegression(5, in_dim=16).eval()
    features = _samples([7, 1, 300, 2])
    latents = _encode(autoencoder, features, 64, monkeypatch)  # several blocks
    indices = np.array([2, 0, 3])
    with torch.no_grad():
        per_sample = torch.stack(
            [model(autoencoder.encode(features[i])).mean(dim=0) for i in indices]
        )
    torch.testing.assert_close(
        _slide_predictions(model, latents, indices), per_sample, rtol=1e-5, atol=1e-5
    )
    assert not latents.single


def test_chunked_encoding_keeps_every_sample_and_its_order(monkeypatch):
    autoencoder = AutoEncoder(32, 16).eval()
    features = _samples([1] * 50)
    latents = _encode(autoencoder, features, 7, monkeypatch)
    with torch.no_grad():
        expected = [autoencoder.encode(f) for f in features]
    assert latents.single and len(latents.tiles) == 50
    for got, want in zip(latents.tiles, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(latents.means, torch.cat(expected))
