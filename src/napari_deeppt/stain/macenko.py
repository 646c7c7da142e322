"""Macenko et al. (2009): stain vectors fitted per tile, mapped onto a reference target."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import DeepPTError
from .targets import DEEPPT_TARGET, MacenkoTarget, _as_batch, _return

__all__ = ["apply_od_transform", "fit_macenko_target", "macenko_normalize", "macenko_transforms"]


def _masked_percentiles(values: Any, valid: Any, qs: tuple[float, ...]) -> list[Any]:
    """numpy-style (linear) percentiles of each row over its valid entries.

    Only the order statistics the percentiles interpolate between are found: the few
    smallest for ``q`` ≤ 50 and the few largest otherwise (``topk``, not a sort of the row:
    Macenko's 1st and 99th percentiles of 8,192 angles need about 80 of each).
    """
    import torch

    n = values.shape[1]
    count = valid.sum(dim=1).clamp(min=1)
    out = []
    for q in qs:
        pos = (q / 100.0) * (count - 1).to(values.dtype)
        lo = pos.floor().long()
        hi = torch.minimum(lo + 1, count - 1)
        frac = pos - lo.to(values.dtype)
        low_end = q <= 50.0
        if not low_end:  # ranks from the top: the i-th smallest of c is the (c-1-i)-th largest
            lo, hi = count - 1 - lo, count - 1 - hi
        # enough ranks for any count ≤ n (bounded from n alone: no wait for a GPU), +1 for
        # rounding: lo ≤ floor(p·(n-1)) from the bottom, ≤ ceil((1-p)·(n-1)) from the top
        share = q / 100.0 if low_end else 1.0 - q / 100.0
        k = min(n, math.ceil(share * (n - 1)) + 2)
        fill = float("inf") if low_end else float("-inf")  # invalid entries rank last
        filled = torch.where(valid, values, torch.full_like(values, fill))
        ordered = torch.topk(filled, k, dim=1, largest=not low_end, sorted=True).values
        v_lo = ordered.gather(1, lo[:, None])[:, 0]
        v_hi = ordered.gather(1, hi[:, None])[:, 0]
        out.append(v_lo + frac * (v_hi - v_lo))
    return out


def _percentile_rows(values: Any, q: float) -> Any:
    """numpy-style percentile along the last axis of a (..., P) tensor, without a full sort."""
    import torch

    n = values.shape[-1]
    pos = (q / 100.0) * (n - 1)
    lo = int(np.floor(pos))
    frac = pos - lo
    k = n - lo  # the lo-th smallest is the k-th largest
    top = torch.topk(values, k=min(k, n), dim=-1, largest=True, sorted=True).values
    v_lo = top[..., -1]
    v_hi = top[..., -2] if k >= 2 else v_lo
    return v_lo + frac * (v_hi - v_lo)


def _fit_macenko(
    od: Any, alpha: float, beta: float, min_fit_fraction: float
) -> tuple[Any, Any, Any]:
    """Stain matrices (N, 3, 2), 99th-percentile concentrations (N, 2), fitted flags (N,).

    ``od`` is channel-first, ``(N, 3, P)``: every per-pixel step then runs over contiguous
    rows of P values (on a CPU 2-12x faster per step than over rows of 3 channels).
    """
    import torch

    p = od.shape[2]
    valid = (od >= beta).all(dim=1)
    count = valid.sum(dim=1)
    w = valid.to(od.dtype)[:, None, :]
    denom = count.clamp(min=2).to(od.dtype)
    mean = (od * w).sum(dim=2) / denom[:, None]
    centred = (od - mean[:, :, None]) * w
    cov = centred @ centred.transpose(1, 2) / (denom - 1)[:, None, None]
    cov = torch.nan_to_num(cov)
    _, vectors = torch.linalg.eigh(cov.double())
    vectors = vectors.to(od.dtype)[:, :, 1:3]  # the two largest, ascending order
    # canonical signs: principal axis into positive OD, second axis with positive red part
    sign0 = torch.where(vectors[:, :, 1].sum(dim=1) < 0, -1.0, 1.0).to(od.dtype)
    sign1 = torch.where(vectors[:, 0, 0] < 0, -1.0, 1.0).to(od.dtype)
    vectors = vectors * torch.stack([sign1, sign0], dim=1)[:, None, :]
    projected = vectors.transpose(1, 2) @ od  # (N, 2, P)
    phi = torch.atan2(projected[:, 1], projected[:, 0])
    min_phi, max_phi = _masked_percentiles(phi, valid, (alpha, 100 - alpha))
    v_min = (vectors @ torch.stack([torch.cos(min_phi), torch.sin(min_phi)], 1)[..., None])[..., 0]
    v_max = (vectors @ torch.stack([torch.cos(max_phi), torch.sin(max_phi)], 1)[..., None])[..., 0]
    first_is_h = (v_min[:, 0] > v_max[:, 0])[:, None, None]
    he = torch.where(first_is_h, torch.stack([v_min, v_max], 2), torch.stack([v_max, v_min], 2))
    gram = he.transpose(1, 2) @ he
    det = torch.linalg.det(gram.double()).to(od.dtype)
    fitted = (
        (count >= max(2, int(min_fit_fraction * p))) & (max_phi - min_phi > 1e-3) & (det > 1e-6)
    )
    safe_he = torch.where(
        fitted[:, None, None], he, torch.eye(3, 2, dtype=od.dtype, device=od.device)
    )
    concentrations = torch.linalg.pinv(safe_he) @ od  # (N, 2, P)
    max_c = _percentile_rows(concentrations, 99.0)
    fitted &= torch.isfinite(he).all(dim=(1, 2)) & (max_c > 1e-6).all(dim=1)
    return safe_he, max_c, fitted


def macenko_normalize(
    tiles: Any,
    target: MacenkoTarget | None = None,
    *,
    return_fitted: bool = False,
    device: Any = None,
    min_fit_fraction: float = 0.01,
    fit_max_pixels: int | None = 8192,
) -> Any:
    """Macenko stain normalisation of a batch of uint8 RGB tiles.

    Each tile's stain vectors and 99th-percentile concentrations are fitted, which makes its
    normalisation one 3×3 linear map in optical density:
    ``OD_out = HERef · diag(maxCRef / maxC) · pinv(HE) · OD``, applied to every pixel.

    Parameters
    ----------
    tiles
        ``(N, H, W, 3)`` or ``(H, W, 3)`` uint8, numpy or torch.
    target
        Reference stains; :data:`DEEPPT_TARGET` when None. See :func:`fit_macenko_target`.
    return_fitted
        Also return a boolean ``(N,)`` array: False for tiles left unnormalised.
    device
        Where to compute (a torch device or name); by default where the tiles are.
    min_fit_fraction
        A tile needs at least this fraction of stained pixels to be fitted.
    fit_max_pixels
        Fit on an evenly strided subsample of at most this many pixels per tile (every 6th
        pixel of a 512² tile each way; the percentiles barely move and the fit is ~20×
        faster). None fits on every pixel.

    Returns
    -------
    same type, shape and dtype as ``tiles`` (and the flags if ``return_fitted``).
    """
    transform, fitted, batch, was_numpy, single = macenko_transforms(
        tiles,
        target,
        device=device,
        min_fit_fraction=min_fit_fraction,
        fit_max_pixels=fit_max_pixels,
    )
    out = apply_od_transform(batch, transform, fitted, (target or DEEPPT_TARGET).io)
    result = _return(out, was_numpy, single)
    if return_fitted:
        flags = fitted.cpu().numpy() if was_numpy else fitted
        return result, (flags[0] if single else flags)
    return result


def macenko_transforms(
    tiles: Any,
    target: MacenkoTarget | None = None,
    *,
    device: Any = None,
    min_fit_fraction: float = 0.01,
    fit_max_pixels: int | None = 8192,
) -> tuple[Any, Any, Any, bool, bool]:
    """Fit every tile and return its ``(3, 3)`` optical-density map.

    The map may be applied to a resized copy of the tiles with :func:`apply_od_transform`
    (what the feature pipeline does to save work).

    Parameters
    ----------
    tiles, target, device, min_fit_fraction, fit_max_pixels
        As for :func:`macenko_normalize`.

    Returns
    -------
    tuple
        ``(transforms (N, 3, 3), fitted (N,), tiles as a uint8 tensor (N, H, W, 3),
        was_numpy, was_single)``.
    """
    import torch

    target = target or DEEPPT_TARGET
    batch, was_numpy, single = _as_batch(tiles, device)
    n, h, w, _ = batch.shape
    sampled = batch
    if fit_max_pixels is not None and h * w > fit_max_pixels:
        step = int(np.ceil(np.sqrt(h * w / fit_max_pixels)))
        sampled = batch[:, ::step, ::step]
    pixels = sampled.shape[1] * sampled.shape[2]  # explicit: an empty batch reshapes too
    channels = sampled.permute(0, 3, 1, 2).reshape(n, 3, pixels)  # channel-first: (N, 3, P)
    od = _od_lut(target.io, batch.device)[channels.long()]
    if n == 0:
        return (
            torch.zeros(0, 3, 3, device=batch.device),
            torch.zeros(0, dtype=torch.bool),
            batch,
            was_numpy,
            single,
        )
    he, max_c, fitted = _fit_macenko(od, target.alpha, target.beta, min_fit_fraction)
    ref = torch.tensor(target.stain_matrix, dtype=torch.float32, device=batch.device)
    ref_max = torch.tensor(target.max_concentrations, dtype=torch.float32, device=batch.device)
    scale = ref_max / max_c.clamp(min=1e-6)  # (N, 2)
    transform = ref @ (scale[:, :, None] * torch.linalg.pinv(he))  # (N, 3, 3)
    return transform, fitted, batch, was_numpy, single


def _od_lut(io: float, device: Any) -> Any:
    import torch

    values = torch.arange(256, dtype=torch.float32, device=device)
    return -torch.log((values + 1.0) / io)


def apply_od_transform(tiles: Any, transform: Any, fitted: Any, io: float = 240.0) -> Any:
    """Apply per-tile OD maps to uint8 tiles ``(N, H, W, 3)``; unfitted tiles pass through.

    Output channel ``c`` of a pixel is ``io · exp(-Σ_k T[c, k] · OD(v_k))``. ``T[c, k] ·
    OD(v)`` takes 256 values per tile, so it is tabulated once per tile. On a CPU each pixel
    then costs three look-ups of ``exp(-T[:, k] · OD(v_k))`` and two products (numpy, no
    exponential per pixel: about 5× faster than the sum below on one core); elsewhere three
    look-ups of ``T[c, k] · OD(v)``, two additions and an exponential. Both give the direct
    formula's uint8 values, to within one grey level from rounding at the uint8 cut.

    Parameters
    ----------
    tiles
        uint8 torch tensor ``(N, H, W, 3)`` (not numpy).
    transform, fitted
        ``(N, 3, 3)`` maps and ``(N,)`` flags from :func:`macenko_transforms`.
    io
        The target's background intensity.

    Returns
    -------
    torch.Tensor
        uint8 ``(N, H, W, 3)`` on ``tiles``' device.
    """
    if tiles.shape[0] == 0:
        return tiles
    if tiles.device.type == "cpu":
        return _apply_od_products(tiles, transform, fitted, io)
    return _apply_od_sums(tiles, transform, fitted, io)


def _apply_od_sums(tiles: Any, transform: Any, fitted: Any, io: float) -> Any:
    """:func:`apply_od_transform` in torch: tabulated OD terms summed, then one exponential."""
    import torch

    n, h, w, _ = tiles.shape
    table = transform.to(torch.float32)[:, :, :, None] * _od_lut(io, tiles.device)  # (N,3,3,256)
    index = tiles.reshape(n, h * w, 3).long()
    out = torch.empty((n, h * w, 3), dtype=torch.float32, device=tiles.device)
    for c in range(3):
        channel = torch.gather(table[:, c, 0], 1, index[..., 0])
        channel += torch.gather(table[:, c, 1], 1, index[..., 1])
        channel += torch.gather(table[:, c, 2], 1, index[..., 2])
        out[..., c] = channel
    out = out.neg_().exp_().mul_(io).clamp_(0, 255).to(torch.uint8).reshape(n, h, w, 3)
    return torch.where(fitted.to(tiles.device)[:, None, None, None], out, tiles)


# A tile's float32 factors stay products of three: with every |exponent| ≤ this, a product
# that overflows (sum > 88.7) ends above 255 and one that underflows ends below 1 anyway.
_FACTOR_EXPONENT_BOUND = 80.0


def _apply_od_products(tiles: Any, transform: Any, fitted: Any, io: float) -> Any:
    """:func:`apply_od_transform` on the CPU: per tile, three look-ups of the factors
    ``exp(-T[:, k] · OD(v_k))`` (``io`` folded into the first) multiplied together. A tile
    whose exponents leave ±80 (a degenerate fit) takes the sum path instead."""
    import torch

    n, h, w, _ = tiles.shape
    source = tiles.contiguous()
    pixels = source.numpy().reshape(n, h * w, 3)
    # exponents[i, k, v, c] = -T[i, c, k] · OD(v), + log(io) for k = 0
    maps = transform.detach().to("cpu", torch.float64).numpy().transpose(0, 2, 1)
    exponents = -maps[:, :, None, :] * _od_lut(io, "cpu").double().numpy()[None, None, :, None]
    exponents[:, 0] += np.log(io)
    with np.errstate(invalid="ignore"):
        safe = np.isfinite(exponents).all(axis=(1, 2, 3))
        safe &= np.abs(np.nan_to_num(exponents)).max(axis=(1, 2, 3)) <= _FACTOR_EXPONENT_BOUND
    factors = np.exp(np.where(safe[:, None, None, None], exponents, 0.0)).astype(np.float32)
    done = fitted.detach().cpu().numpy().astype(bool)
    out = pixels.copy()
    for i in np.flatnonzero(done & safe):
        value = np.take(factors[i, 0], pixels[i, :, 0], axis=0)  # (P, 3)
        value *= np.take(factors[i, 1], pixels[i, :, 1], axis=0)
        value *= np.take(factors[i, 2], pixels[i, :, 2], axis=0)
        out[i] = np.clip(value, 0, 255, out=value)  # truncated to uint8, as torch's cast
    result = torch.from_numpy(out.reshape(n, h, w, 3))
    rest = np.flatnonzero(done & ~safe)
    if len(rest):
        index = torch.from_numpy(rest)
        result[index] = _apply_od_sums(source[index], transform[index].cpu(), fitted[index], io)
    return result


def fit_macenko_target(
    image: Any, io: float = 240.0, alpha: float = 1.0, beta: float = 0.15
) -> MacenkoTarget:
    """Fit a Macenko target from one reference image or region.

    Parameters
    ----------
    image
        uint8 ``(H, W, 3)`` RGB, numpy or torch, with H&E-stained tissue in it.
    io, alpha, beta
        Background intensity, percentile of the stain angles and OD threshold of glass.

    Returns
    -------
    MacenkoTarget
        Stain matrix and maximum concentrations (``DeepPTError``: too little tissue).
    """
    batch, _, _ = _as_batch(image, None)
    if batch.shape[0] != 1:
        raise DeepPTError("fit the target from one image (H, W, 3), not a batch")
    od = _od_lut(io, batch.device)[batch.reshape(1, -1, 3).transpose(1, 2).long()]
    he, max_c, fitted = _fit_macenko(od, alpha, beta, min_fit_fraction=0.01)
    if not bool(fitted[0]):
        raise DeepPTError(
            "the reference image has too little stained tissue (or a single "
            "colour) to fit stain vectors; choose a region with H&E tissue"
        )
    matrix = tuple(tuple(float(v) for v in row) for row in he[0].tolist())
    return MacenkoTarget(matrix, tuple(float(v) for v in max_c[0].tolist()), io, alpha, beta)
