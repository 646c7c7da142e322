"""Tiles → model input: stain normalisation, resize and normalisation of a batch on its device.

Stain normalisation is fitted on each full-resolution tile (as DeepPT does) and, because a
Macenko fit is a per-tile 3×3 map in optical density, applied after the resize to the model's
input size, which saves ~5× the work; it differs from normalise-then-resize only through the
non-linearity of averaging within one output pixel.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DeepPTError
from ..stain import (
    DEEPPT_TARGET,
    DEFAULT_REINHARD_TARGET,
    MacenkoTarget,
    ReinhardTarget,
    StainMethod,
)

__all__ = ["RESIZE", "preprocess_batch", "preview_mosaic", "resize_uint8", "stain_config"]

#: How tiles are resized to the model's input (recorded in the feature cache key).
RESIZE = "bilinear-antialias"


def stain_config(stain: Any, fit_max_pixels: int | None) -> dict[str, Any]:
    """The stain normalisation a run applies, as the dict its provenance and cache key hold.

    Parameters
    ----------
    stain
        A :class:`~napari_deeppt.stain.StainMethod` or its value (``"macenko"`` with DeepPT's
        target, ``"reinhard"``, ``"none"``), None/False, or a ``MacenkoTarget`` or
        ``ReinhardTarget``.
    fit_max_pixels
        Pixels per tile used to fit Macenko.

    Returns
    -------
    dict
        ``{"method": None}``, or the target's :meth:`as_dict` with how it is applied.
    """
    if isinstance(stain, MacenkoTarget | ReinhardTarget):
        target = stain
    else:
        try:
            method = StainMethod.parse(stain)
        except (ValueError, TypeError):
            raise DeepPTError(
                f"unknown stain normalisation {stain!r}; use 'macenko', 'reinhard', None, "
                "or a MacenkoTarget/ReinhardTarget"
            ) from None
        if method is StainMethod.NONE:
            return {"method": None}
        target = DEEPPT_TARGET if method is StainMethod.MACENKO else DEFAULT_REINHARD_TARGET
    if isinstance(target, MacenkoTarget):
        return {**target.as_dict(), "fit_max_pixels": fit_max_pixels, "applied": "after resize"}
    return {**target.as_dict(), "applied": "after resize"}


def resize_uint8(batch: Any, size: int) -> Any:
    """Antialiased bilinear resize of uint8 ``(B, H, W, 3)`` tiles to ``(B, size, size, 3)``.

    On the CPU torch resizes uint8 channels-last images directly (a vectorised path ~30×
    faster than going through float); elsewhere through float32, rounded back to uint8.

    Parameters
    ----------
    batch
        uint8 torch tensor ``(B, H, W, 3)``.
    size
        The output side in pixels.

    Returns
    -------
    torch.Tensor
        uint8 ``(B, size, size, 3)``, a channels-last view (``batch`` itself when it already
        has that size).
    """
    import torch
    import torch.nn.functional as F

    if batch.shape[1] == size and batch.shape[2] == size:
        return batch
    images = batch.permute(0, 3, 1, 2)  # a channels-last view, no copy
    if batch.device.type == "cpu":
        out = F.interpolate(
            images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    else:
        out = F.interpolate(
            images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        out = out.round_().clamp_(0, 255).to(torch.uint8)
    return out.permute(0, 2, 3, 1)


def preprocess_batch(batch: Any, spec: Any, stain: dict[str, Any]) -> Any:
    """uint8 tiles on the device → the model's normalised input.

    Parameters
    ----------
    batch
        ``(B, H, W, 3)`` uint8 tensor.
    spec
        The :class:`~napari_deeppt.features.extractors.ExtractorSpec` (input size, mean, std).
    stain
        A dict made by :func:`stain_config`.

    Returns
    -------
    torch.Tensor
        ``(B, 3, S, S)`` float, channels-last in memory.
    """
    import torch

    from ..stain import apply_od_transform, macenko_transforms, reinhard_normalize

    size = spec.input_size
    method = stain.get("method")
    transform = fitted = None
    if method == StainMethod.MACENKO:
        target = MacenkoTarget.from_dict(stain)
        transform, fitted, _, _, _ = macenko_transforms(
            batch, target, fit_max_pixels=stain["fit_max_pixels"]
        )
    resized = resize_uint8(batch, size)
    if method == StainMethod.MACENKO:
        resized = apply_od_transform(resized.contiguous(), transform, fitted, stain["io"])
    elif method == StainMethod.REINHARD:
        resized = reinhard_normalize(resized.contiguous(), ReinhardTarget.from_dict(stain))
    x = resized.permute(0, 3, 1, 2).float()  # channels-last in memory, as resized is
    # (x / 255 - mean) / std in one pass instead of three (equal to float32 rounding)
    scale = [1.0 / (255.0 * s) for s in spec.std]
    shift = [-m / s for m, s in zip(spec.mean, spec.std, strict=True)]
    scale_t, shift_t = (torch.tensor(v, device=x.device).view(1, 3, 1, 1) for v in (scale, shift))
    return torch.addcmul(shift_t, x, scale_t).contiguous(memory_format=torch.channels_last)


def preview_mosaic(
    slide: Any,
    grid: Any,
    n: int = 8,
    method: StainMethod | str = "macenko",
    seed: int = 0,
    thumb_px: int = 256,
    *,
    gap_px: int = 0,
    progress: Any = None,
    cancel: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random kept tiles, raw (top row) over normalised (bottom row).

    Parameters
    ----------
    slide, grid
        The slide and its tile grid.
    n, method, seed
        How many tiles (at most), the normalisation, and the seed that picks the tiles.
    thumb_px
        Side of each tile in the mosaic.
    gap_px
        White gap between neighbouring tiles and between the two rows.
    progress, cancel
        Progress report per tile read, and a cancel token (see :mod:`napari_deeppt.progress`).

    Returns
    -------
    mosaic, chosen
        The mosaic ``(2·thumb_px + gap_px, n·thumb_px + (n - 1)·gap_px, 3)`` uint8 and the
        tiles' grid indices.
    """
    from ..progress import check_cancelled, make_progress
    from ..slide import resize_rgb
    from ..stain import normalise

    if len(grid) == 0:
        raise DeepPTError("the tile grid is empty: nothing to preview")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(grid), size=min(n, len(grid)), replace=False))
    tiles = []
    with make_progress(progress, len(chosen), "reading tiles") as bar:
        for index in chosen:
            check_cancelled(cancel, "the preview")
            tiles.append(grid.read_tile(slide, int(index)))
            bar.update()
    raw = np.stack(tiles)
    normalised = normalise(raw, method)
    side = thumb_px + gap_px
    mosaic = np.full((2 * side - gap_px, len(chosen) * side - gap_px, 3), 255, np.uint8)
    for row, batch in enumerate((raw, normalised)):
        for column, tile in enumerate(batch):
            mosaic[row * side : row * side + thumb_px, column * side : column * side + thumb_px] = (
                resize_rgb(tile, thumb_px, thumb_px)
            )
    return mosaic, chosen
