"""What the regressors train on: each sample's latent tiles (a sample of them) and means.

The autoencoder turns every tile of a sample into a latent vector. The regressors train on
at most ``TrainingSettings.regressor_tiles`` of a sample's latent tiles (drawn once per fit,
seeded), held as one padded ``(n_samples, S, latent_dim)`` tensor so a batch of samples is
one gather and pooling one masked mean. Validation and held-out predictions use ``means``,
the mean over *every* tile: the regressor is affine in evaluation (Linear, Dropout off,
Linear), so a sample's mean tile prediction is the prediction of its mean latent.
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["Latents"]


class Latents(NamedTuple):
    """Latent tiles of every sample, for one fitted autoencoder.

    Attributes
    ----------
    tiles
        ``(n_samples, S, latent_dim)`` float tensor (float16 or float32): sample ``i``'s kept
        latent tiles in ``tiles[i, :counts[i]]``, zeros after. For spots ``S == 1``.
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

    @classmethod
    def from_means(cls, means: Any) -> Latents:
        """One tile per sample (spots): the tiles are the means."""
        import torch

        return cls(means[:, None, :], torch.ones(len(means), dtype=torch.int64), means, True)
