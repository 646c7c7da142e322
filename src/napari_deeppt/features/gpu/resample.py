"""Pillow's BOX/BILINEAR resize of uint8 RGB, batched in torch, bit for bit.

:func:`napari_deeppt.slide.resize_rgb` (Pillow, on the CPU) resizes a region read at the
slide's nearest level to the grid's resolution. Tiles decoded on the device
(:mod:`napari_deeppt.features.gpu.jpeg`) must become the *same* pixels, or features would depend
on whether a GPU decoded the slide. This module reproduces Pillow's two-pass separable
resampling exactly: the same filter coefficients (``precompute_coeffs``), the same 22-bit
fixed-point rounding (``normalize_coeffs_8bpc``), horizontal pass first, uint8 in between.
Integer arithmetic in int32 cannot overflow: the coefficients of one output pixel sum to
about 2**22, times 255.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["pillow_coefficients", "resize_like_pillow"]

_PRECISION_BITS = 32 - 8 - 2


def _box(x: float) -> float:
    return 1.0 if -0.5 < x <= 0.5 else 0.0


def _bilinear(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


_FILTERS = {"box": (_box, 0.5), "bilinear": (_bilinear, 1.0)}


def pillow_coefficients(in_size: int, out_size: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's taps for resizing ``in_size`` → ``out_size`` samples.

    Parameters
    ----------
    in_size, out_size
        Samples along the axis before and after.
    kind
        ``"box"`` or ``"bilinear"``.

    Returns
    -------
    first, weights
        ``first[i]``: the first input sample of output ``i``; ``weights[i, t]``: the 22-bit
        fixed-point weight of input ``first[i] + t`` (zero past the filter's end).
    """
    function, filter_support = _FILTERS[kind]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = filter_support * filterscale
    ksize = math.ceil(support) * 2 + 1
    first = np.zeros(out_size, np.int64)
    weights = np.zeros((out_size, ksize), np.int64)
    ss = 1.0 / filterscale
    for i in range(out_size):
        centre = (i + 0.5) * scale
        xmin = max(int(centre - support + 0.5), 0)
        xmax = min(int(centre + support + 0.5), in_size) - xmin
        taps = [function((x + xmin - centre + 0.5) * ss) for x in range(xmax)]
        total = sum(taps)
        for x, w in enumerate(taps):
            w = w / total if total != 0.0 else w
            weights[i, x] = (
                int(-0.5 + w * (1 << _PRECISION_BITS))
                if w < 0
                else int(0.5 + w * (1 << _PRECISION_BITS))
            )
        first[i] = xmin
    return first, weights


def _resample_axis(images: Any, out_size: int, axis: int, kind: str) -> Any:
    import torch

    in_size = images.shape[axis]
    first, weights = pillow_coefficients(in_size, out_size, kind)
    acc = None
    for t in range(weights.shape[1]):
        w = weights[:, t]
        if not w.any():
            continue
        index = torch.as_tensor(np.minimum(first + t, in_size - 1), device=images.device)
        shape = [1] * images.dim()
        shape[axis] = out_size
        tap = torch.as_tensor(w, dtype=torch.int32, device=images.device).view(shape)
        term = images.index_select(axis, index).to(torch.int32) * tap
        acc = term if acc is None else acc.add_(term)
    assert acc is not None
    acc.add_(1 << (_PRECISION_BITS - 1)).bitwise_right_shift_(_PRECISION_BITS)
    return acc.clamp_(0, 255).to(torch.uint8)


def resize_like_pillow(batch: Any, width: int, height: int) -> Any:
    """Resize uint8 ``(B, H, W, C)`` images as :func:`~napari_deeppt.slide.resize_rgb` does.

    BOX when shrinking both ways, else BILINEAR (Pillow's choice in ``resize_rgb``); the
    result equals Pillow's exactly, on any device.

    Parameters
    ----------
    batch
        uint8 torch tensor ``(B, H, W, C)``.
    width, height
        The output size in pixels.

    Returns
    -------
    torch.Tensor
        uint8 ``(B, height, width, C)`` on ``batch``'s device (``batch`` itself when it
        already has that size).
    """
    in_h, in_w = int(batch.shape[1]), int(batch.shape[2])
    if in_w == width and in_h == height:
        return batch
    kind = "box" if width < in_w and height < in_h else "bilinear"
    # horizontal pass first, rounded to uint8, then vertical: Pillow's order (it skips rows
    # the vertical pass never reads, which changes nothing)
    if in_w != width:
        batch = _resample_axis(batch, width, 2, kind)
    if in_h != height:
        batch = _resample_axis(batch, height, 1, kind)
    return batch
