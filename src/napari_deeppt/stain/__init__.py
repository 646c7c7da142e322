"""Stain normalisation of uint8 tile batches in torch, on CPU and CUDA alike (on the CPU the
fitted Macenko map is applied with numpy look-up tables: the same values to one grey level).

Macenko et al. (2009) with DeepPT's reference target by default; Reinhard et al. (2001)
colour transfer as the alternative. Inputs are ``(N, H, W, 3)`` (or one ``(H, W, 3)``) uint8
numpy arrays or torch tensors; the output has the input's type, shape, dtype and device.

Differences from the classic reference script, all deliberate:

- principal eigenvectors are given a canonical sign before angles are taken, so the result
  does not depend on the sign convention of the eigen-solver (the classic script can wrap
  its angles around ±π when the solver returns the negated vector);
- values above 255 are clamped to 255 (the classic script sets them to 254);
- a tile with too few stained pixels (fewer than ``min_fit_fraction`` of its pixels with all
  optical densities ≥ β), or a degenerate fit (a single colour), is returned unchanged and
  flagged instead of producing NaN or noise.
"""

from __future__ import annotations

from typing import Any

from .macenko import apply_od_transform, fit_macenko_target, macenko_normalize, macenko_transforms
from .reinhard import fit_reinhard_target, reinhard_normalize
from .targets import (
    DEEPPT_TARGET,
    DEFAULT_REINHARD_TARGET,
    MacenkoTarget,
    ReinhardTarget,
    StainMethod,
)

__all__ = [
    "DEEPPT_TARGET",
    "DEFAULT_REINHARD_TARGET",
    "MacenkoTarget",
    "ReinhardTarget",
    "StainMethod",
    "apply_od_transform",
    "fit_macenko_target",
    "fit_reinhard_target",
    "macenko_normalize",
    "macenko_transforms",
    "normalise",
    "reinhard_normalize",
]


def normalise(
    tiles: Any, method: StainMethod | str | None = "macenko", target: Any = None, **kwargs: Any
) -> Any:
    """Dispatch to :func:`macenko_normalize`, :func:`reinhard_normalize` or nothing (None).

    Parameters
    ----------
    tiles
        As for :func:`macenko_normalize`.
    method
        A :class:`StainMethod` or its value; None or ``"none"`` returns ``tiles`` unchanged.
    target, **kwargs
        The chosen function's target and keywords.

    Raises
    ------
    ValueError
        An unknown ``method``.
    """
    try:
        chosen = StainMethod.parse(method)
    except ValueError:
        raise ValueError(
            f"unknown stain normalisation {method!r}; use 'macenko', 'reinhard' or None"
        ) from None
    if chosen is StainMethod.NONE:
        return tiles
    if chosen is StainMethod.MACENKO:
        return macenko_normalize(tiles, target, **kwargs)
    return reinhard_normalize(tiles, target, **kwargs)
