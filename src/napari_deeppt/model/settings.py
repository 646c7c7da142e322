"""The settings of a training run: cross-validation and optimisation (DeepPT's defaults)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real

__all__ = ["TrainingSettings"]


@dataclass(frozen=True)
class TrainingSettings:
    """Cross-validation and optimisation settings (DeepPT's defaults).

    Attributes
    ----------
    outer_folds, inner_folds
        Patient- (or section-) level folds: the outer folds give the held-out predictions,
        each inner fold early-stops one model of the ensemble.
    max_epochs, patience
        Regressor epochs, and epochs without a better validation R before stopping.
    lr
        Adam's learning rate (autoencoder and regressor).
    batch_slides
        Samples (slides or spots) per regressor batch.
    ae_epochs, ae_batch
        Autoencoder epochs (0: untrained) and tiles per batch.
    ae_tiles
        Tiles per sample (at most) that fit the autoencoder, drawn once per run (seeded)
        and streamed from disk every epoch; None: every tile. Bounds the time an epoch
        takes on cohorts of thousands of tiles per slide.
    regressor_tiles
        Latent tiles per sample (at most, drawn once per run) the regressors train on;
        None: every tile. Validation and held-out predictions always use every tile.
    latent_dim
        The autoencoder's latent dimension.
    seed
        Seeds folds, initialisation, batch order and dropout masks.

    Raises
    ------
    ValueError
        A setting below its minimum, or ``lr`` not a finite number > 0, named with its value.
    """

    outer_folds: int = 5
    inner_folds: int = 5
    max_epochs: int = 200
    patience: int = 20
    lr: float = 1e-4
    batch_slides: int = 16
    ae_epochs: int = 30
    ae_batch: int = 256
    ae_tiles: int | None = 256
    regressor_tiles: int | None = 128
    latent_dim: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        least = dict.fromkeys(
            ("max_epochs", "patience", "batch_slides", "ae_batch", "latent_dim"), 1
        )
        least.update(outer_folds=2, inner_folds=2, ae_epochs=0)  # ae_epochs=0: untrained
        for name, minimum in least.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
                raise ValueError(f"{name} must be a whole number ≥ {minimum}, got {value!r}")
        for name in ("ae_tiles", "regressor_tiles"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, Integral) or value < 1):
                raise ValueError(f"{name} must be a whole number ≥ 1 or None, got {value!r}")
        if not (isinstance(self.lr, Real) and self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
