"""Reinhard et al. (2001): colour transfer in lαβ space from tissue pixels."""

from __future__ import annotations

from typing import Any

import numpy as np

from .targets import DEFAULT_REINHARD_TARGET, ReinhardTarget, _as_batch, _return

__all__ = ["fit_reinhard_target", "reinhard_normalize"]


_RGB_TO_LMS = np.array(
    [[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]]
)
_LOG_LMS_TO_LAB = np.diag([1 / np.sqrt(3), 1 / np.sqrt(6), 1 / np.sqrt(2)]) @ np.array(
    [[1, 1, 1], [1, 1, -2], [1, -1, 0]]
)


def _to_lab(pixels: Any) -> Any:
    import torch

    m = torch.tensor(_RGB_TO_LMS, dtype=torch.float32, device=pixels.device)
    lab = torch.tensor(_LOG_LMS_TO_LAB, dtype=torch.float32, device=pixels.device)
    lms = (pixels / 255.0) @ m.T
    return torch.log10(lms.clamp(min=1e-4)) @ lab.T


def _from_lab(values: Any) -> Any:
    import torch

    inv_lab = torch.tensor(
        np.linalg.inv(_LOG_LMS_TO_LAB), dtype=torch.float32, device=values.device
    )
    inv_m = torch.tensor(np.linalg.inv(_RGB_TO_LMS), dtype=torch.float32, device=values.device)
    lms = torch.pow(10.0, values @ inv_lab.T)
    return (lms @ inv_m.T) * 255.0


def _tissue_lab_stats(pixels: Any, background: int) -> tuple[Any, Any, Any, Any, Any]:
    """lαβ values (N, P, 3), mean and std over tissue pixels (N, 1, 3), tissue mask (N, P),
    and whether each tile had enough tissue to use it (N, 1)."""
    import torch

    p = pixels.shape[1]
    lab = _to_lab(pixels)
    tissue = pixels.mean(dim=2) < background
    enough = tissue.sum(dim=1, keepdim=True) >= max(16, 0.01 * p)
    weights = torch.where(enough, tissue, torch.ones_like(tissue)).float()[..., None]
    count = weights.sum(dim=1, keepdim=True)
    mean = (lab * weights).sum(dim=1, keepdim=True) / count
    var = (((lab - mean) ** 2) * weights).sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)
    return lab, mean, var.sqrt().clamp(min=1e-6), tissue, enough


def fit_reinhard_target(image: Any, background: int = 220) -> ReinhardTarget:
    """lαβ mean and standard deviation of the tissue in a reference image.

    Parameters
    ----------
    image
        uint8 RGB ``(H, W, 3)``, numpy or torch (the pixels of a ``(N, H, W, 3)`` batch are
        pooled into one target).
    background
        Pixels with a mean intensity below it are tissue (the statistics' pixels).

    Returns
    -------
    ReinhardTarget
    """
    batch, _, _ = _as_batch(image, None)
    _, mean, std, _, _ = _tissue_lab_stats(batch.reshape(1, -1, 3).float(), background)
    return ReinhardTarget(tuple(mean[0, 0].tolist()), tuple(std[0, 0].tolist()))  # type: ignore[arg-type]


def reinhard_normalize(
    tiles: Any, target: ReinhardTarget | None = None, *, device: Any = None, background: int = 220
) -> Any:
    """Reinhard colour transfer: match each tile's lαβ mean/std to ``target``.

    Statistics come from tissue pixels only (mean intensity below ``background``), and glass
    is left as it was, so mostly-empty tiles are not tinted; a tile with almost no tissue
    uses all its pixels.

    Parameters
    ----------
    tiles
        uint8 ``(H, W, 3)`` or ``(N, H, W, 3)`` RGB, numpy or torch.
    target
        The lαβ means and spreads to match (:data:`DEFAULT_REINHARD_TARGET` when None).
    device, background
        Where torch computes (the tiles' own by default); the intensity of glass.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        The tiles normalised, in the type and shape given.
    """
    import torch

    target = target or DEFAULT_REINHARD_TARGET
    batch, was_numpy, single = _as_batch(tiles, device)
    n, h, w, _ = batch.shape
    if n == 0:
        return _return(batch, was_numpy, False)
    pixels = batch.reshape(n, h * w, 3).float()
    lab, mean, std, tissue, enough = _tissue_lab_stats(pixels, background)
    t_mean = torch.tensor(target.mean, device=lab.device)
    t_std = torch.tensor(target.std, device=lab.device)
    out = _from_lab((lab - mean) / std * t_std + t_mean).round().clamp(0, 255)
    keep_glass = (~tissue & enough)[..., None]
    out = torch.where(keep_glass, pixels, out).to(torch.uint8).reshape(n, h, w, 3)
    return _return(out, was_numpy, single)
