"""DeepPT's networks.

- :class:`AutoEncoder`: Linear(D→512)+ReLU encoder, Linear(512→D)+ReLU decoder, MSE.
- :class:`MLPRegression`: Linear(512→512), Dropout(0.2), Linear(512→n_genes), output bias
  initialised to the training mean of each gene; applied per tile, averaged over a slide.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

__all__ = ["AutoEncoder", "MLPRegression", "fused_adam"]


class AutoEncoder(nn.Module):
    """DeepPT's feature autoencoder (D → latent → D, ReLU after each layer).

    Parameters
    ----------
    in_dim
        Feature dimension D.
    latent_dim
        Latent dimension (DeepPT: 512).
    """

    def __init__(self, in_dim: int = 2048, latent_dim: int = 512) -> None:
        super().__init__()
        self.in_dim, self.latent_dim = in_dim, latent_dim
        self.encoder = nn.Sequential(nn.Linear(in_dim, latent_dim), nn.ReLU())
        self.decoder = nn.Sequential(nn.Linear(latent_dim, in_dim), nn.ReLU())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The latent features of ``x`` ``(n, D)`` → ``(n, latent_dim)``."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class MLPRegression(nn.Module):
    """DeepPT's regressor: Linear(512→512), Dropout(0.2), Linear(512→n_genes).

    It has no non-linearity, so in evaluation it is affine: the mean of a slide's tile
    predictions is the prediction of its mean tile, which cross-validation uses to score
    validation samples in one pass (adding an activation would need that path changed).

    Parameters
    ----------
    n_genes
        Outputs.
    in_dim, hidden, dropout
        Input (latent) dimension, hidden width and dropout rate.
    output_bias
        Initial bias of the output layer (the training mean of each gene), or None.
    """

    def __init__(
        self,
        n_genes: int,
        in_dim: int = 512,
        hidden: int = 512,
        dropout: float = 0.2,
        output_bias: Any = None,
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.Dropout(dropout), nn.Linear(hidden, n_genes)
        )
        if output_bias is not None:
            with torch.no_grad():
                self.net[2].bias.copy_(torch.as_tensor(output_bias, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@functools.cache
def fused_adam(device_type: str) -> bool:
    """Whether this torch has a fused Adam for ``device_type`` that training uses.

    The CPU's (torch ≥ 2.4) updates each tensor in one pass, where torch's default on the
    CPU (a loop over tensors) makes several; elsewhere training keeps torch's default
    (the regressors: foreach, their step counts living on the CPU).

    Parameters
    ----------
    device_type
        ``torch.device.type`` of the training device (``"cpu"``, ``"cuda"`` ...).
    """
    if device_type != "cpu":
        return False
    param = nn.Parameter(torch.ones(2))
    param.grad = torch.ones(2)
    try:
        torch.optim.Adam([param], lr=0.0, fused=True).step()
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return False
    return True
