"""Macenko and Reinhard stain normalisation: known answers, a numpy reference, edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_deeppt.stain import (
    DEEPPT_TARGET,
    DEFAULT_REINHARD_TARGET,
    MacenkoTarget,
    ReinhardTarget,
    StainMethod,
    fit_macenko_target,
    fit_reinhard_target,
    macenko_normalize,
    reinhard_normalize,
)
from napari_deeppt.testing import STAIN_VECTORS, default_sample_spec

HE_REF = np.array(DEEPPT_TARGET.stain_matrix)
MAXC_REF = np.array(DEEPPT_TARGET.max_concentrations)


def reference_macenko(img: np.ndarray, io=240, alpha=1, beta=0.15) -> np.ndarray:
    """Plain numpy Macenko (the classic script's steps), with canonical eigenvector signs."""
    h, w, _ = img.shape
    od = -np.log((img.reshape(-1, 3).astype(np.float64) + 1) / io)
    od_hat = od[~np.any(od < beta, axis=1)]
    _, vecs = np.linalg.eigh(np.cov(od_hat.T))
    vecs = vecs[:, 1:3].copy()
    if vecs[:, 1].sum() < 0:
        vecs[:, 1] *= -1
    if vecs[0, 0] < 0:
        vecs[:, 0] *= -1
    that = od_hat @ vecs
    phi = np.arctan2(that[:, 1], that[:, 0])
    min_phi, max_phi = np.percentile(phi, alpha), np.percentile(phi, 100 - alpha)
    v_min = vecs @ np.array([np.cos(min_phi), np.sin(min_phi)])
    v_max = vecs @ np.array([np.cos(max_phi), np.sin(max_phi)])
    he = np.array([v_min, v_max]).T if v_min[0] > v_max[0] else np.array([v_max, v_min]).T
    conc = np.linalg.lstsq(he, od.T, rcond=None)[0]
    max_c = np.percentile(conc, 99, axis=1)
    conc2 = conc * (MAXC_REF / max_c)[:, None]
    out = io * np.exp(-HE_REF @ conc2)
    return np.clip(out, 0, 255).T.reshape(h, w, 3).astype(np.uint8)


def stained_tile(stain_matrix: np.ndarray, seed: int, size: int = 96, io=240) -> np.ndarray:
    """A tile made by Beer–Lambert from known stains and random concentrations."""
    rng = np.random.default_rng(seed)
    conc_h = rng.gamma(2.0, 0.35, size=(size, size))
    conc_e = rng.gamma(2.0, 0.3, size=(size, size))
    conc_h[: size // 6] = 0.0  # a strip of glass
    conc_e[: size // 6] = 0.0
    od = conc_h[..., None] * stain_matrix[:, 0] + conc_e[..., None] * stain_matrix[:, 1]
    return np.clip(io * np.exp(-od), 0, 255).astype(np.uint8)


def test_agrees_with_numpy_reference():
    spec = default_sample_spec(4096, 4096, 0.5, seed=1)
    tiles = np.stack(
        [spec.render(1200 + 90 * i, 1700, 128, 128) for i in range(4)]
        + [stained_tile(STAIN_VECTORS, seed=5, size=128)]
    )
    ours = macenko_normalize(tiles, fit_max_pixels=None)
    for tile, out in zip(tiles, ours):
        expected = reference_macenko(tile)
        diff = np.abs(out.astype(int) - expected.astype(int))
        assert diff.max() <= 2, diff.max()  # float32 vs float64 and truncation
        assert diff.mean() < 0.1


def test_restained_tile_returns_to_reference():
    """A tile stained with other (known) stain vectors comes back to the reference colours."""
    other = np.array([[0.65, 0.07], [0.70, 0.99], [0.29, 0.11]])
    other /= np.linalg.norm(other, axis=0)
    reference_tile = stained_tile(HE_REF, seed=3)
    restained = stained_tile(other, seed=3)
    assert np.abs(restained.astype(int) - reference_tile.astype(int)).mean() > 10
    normalised = macenko_normalize(restained, fit_max_pixels=None)
    target = macenko_normalize(reference_tile, fit_max_pixels=None)
    assert np.abs(normalised.astype(int) - target.astype(int)).mean() < 3
    fitted = fit_macenko_target(restained)
    recovered = np.array(fitted.stain_matrix)
    for k in range(2):  # the fitted stain vectors are the ones we used
        cosine = recovered[:, k] @ other[:, k] / np.linalg.norm(recovered[:, k])
        assert cosine > 0.98


def test_subsampled_fit_is_close_to_full_fit():
    spec = default_sample_spec(4096, 4096, 0.5, seed=2)
    tiles = np.stack([spec.render(1000 + 300 * i, 1500, 512, 512) for i in range(3)])
    full = macenko_normalize(tiles, fit_max_pixels=None).astype(int)
    fast = macenko_normalize(tiles).astype(int)
    assert np.abs(full - fast).mean() < 1.0


@pytest.mark.parametrize("colour", [(255, 255, 255), (0, 0, 0), (200, 100, 150), (240, 240, 240)])
def test_unfittable_tiles_are_unchanged_and_flagged(colour):
    tiles = np.zeros((3, 32, 32, 3), np.uint8) + np.array(colour, np.uint8)
    out, fitted = macenko_normalize(tiles, return_fitted=True)
    assert not fitted.any()
    assert np.array_equal(out, tiles)


def test_mixed_batch_flags_only_bad_tiles():
    good = stained_tile(STAIN_VECTORS, seed=1, size=64)
    white = np.full_like(good, 250)
    out, fitted = macenko_normalize(np.stack([good, white, good]), return_fitted=True)
    assert fitted.tolist() == [True, False, True]
    assert np.array_equal(out[1], white)
    assert np.isfinite(out.astype(float)).all()


def test_types_shapes_and_devices_round_trip():
    import torch

    tile = stained_tile(STAIN_VECTORS, seed=2, size=48)
    single = macenko_normalize(tile)
    assert single.shape == tile.shape and single.dtype == np.uint8
    tensor = macenko_normalize(torch.from_numpy(np.stack([tile, tile])))
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.uint8
    assert np.array_equal(tensor[0].numpy(), single)
    with pytest.raises(Exception, match="uint8"):
        macenko_normalize(tile.astype(np.float32))


@pytest.mark.parametrize("side", [64, 512])  # 512: the fit samples a strided subset
def test_an_empty_batch_gives_empty_maps_and_tiles(side):
    """No tiles in, no maps and no tiles out (small tiles fit on every pixel, large ones on
    a strided sample: both paths)."""
    from napari_deeppt.stain import macenko_transforms

    empty = np.zeros((0, side, side, 3), np.uint8)
    transform, fitted, _, _, _ = macenko_transforms(empty)
    assert tuple(transform.shape) == (0, 3, 3) and tuple(fitted.shape) == (0,)
    out, flags = macenko_normalize(empty, return_fitted=True)
    assert out.shape == empty.shape and out.dtype == np.uint8 and flags.shape == (0,)


def test_tiles_without_pixels_are_refused_in_one_line():
    from napari_deeppt.errors import DeepPTError

    with pytest.raises(DeepPTError, match="at least one pixel"):
        fit_macenko_target(np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(DeepPTError, match="at least one pixel"):
        macenko_normalize(np.zeros((2, 0, 5, 3), np.uint8))


def test_fit_target_refuses_blank_image():
    with pytest.raises(Exception, match="too little stained tissue"):
        fit_macenko_target(np.full((64, 64, 3), 245, np.uint8))


def test_reinhard_matches_target_statistics():
    source = stained_tile(STAIN_VECTORS, seed=4, size=128)
    reference = stained_tile(np.array([[0.65, 0.07], [0.70, 0.99], [0.29, 0.11]]), seed=9, size=128)
    target = fit_reinhard_target(reference)
    out = reinhard_normalize(source, target)
    achieved = fit_reinhard_target(out)
    np.testing.assert_allclose(achieved.mean, target.mean, atol=0.02)
    np.testing.assert_allclose(achieved.std, target.std, rtol=0.1, atol=0.01)
    assert reinhard_normalize(np.stack([source, source])).shape == (2, 128, 128, 3)


def test_targets_round_trip_through_their_dicts():
    """What a provenance or a model bundle records rebuilds the same target."""
    assert MacenkoTarget.from_dict(DEEPPT_TARGET.as_dict()) == DEEPPT_TARGET
    assert ReinhardTarget.from_dict(DEFAULT_REINHARD_TARGET.as_dict()) == DEFAULT_REINHARD_TARGET
    extra = {**DEEPPT_TARGET.as_dict(), "fit_max_pixels": 8192, "applied": "after resize"}
    assert MacenkoTarget.from_dict(extra) == DEEPPT_TARGET


def test_stain_methods_accept_their_values():
    assert StainMethod.parse("macenko") is StainMethod.MACENKO
    assert StainMethod.parse(None) is StainMethod.NONE and StainMethod.parse("none").value == "none"
    assert str(StainMethod.REINHARD) == "reinhard" and StainMethod.REINHARD == "reinhard"
    with pytest.raises(ValueError):
        StainMethod.parse("magic")


def test_preview_mosaic_sets_raw_over_normalised_tiles_apart(svs_slide):
    """Each tile sits in its own cell (white gaps between cells), raw above normalised."""
    from napari_deeppt import detect_and_tile, open_slide
    from napari_deeppt.features.preprocess import preview_mosaic
    from napari_deeppt.slide import resize_rgb
    from napari_deeppt.stain import normalise

    slide = open_slide(svs_slide.path)
    _, grid = detect_and_tile(slide, tile_px=128, mpp=0.5)
    reports = []
    mosaic, chosen = preview_mosaic(
        slide, grid, n=3, thumb_px=32, gap_px=4, progress=lambda *r: reports.append(r)
    )
    assert mosaic.shape == (2 * 32 + 4, 3 * 32 + 2 * 4, 3)
    assert (mosaic[32:36] == 255).all() and (mosaic[:, 32:36] == 255).all()  # the gaps
    raw = grid.read_tile(slide, int(chosen[1]))
    np.testing.assert_array_equal(mosaic[:32, 36:68], resize_rgb(raw, 32, 32))
    np.testing.assert_array_equal(
        mosaic[36:, 36:68], resize_rgb(normalise(raw[None], "macenko")[0], 32, 32)
    )
    assert reports[-1][:2] == (3, 3)  # the progress ends at its total


def test_od_transform_matches_the_matrix_product_per_pixel() -> None:
    """The tabulated OD map gives each pixel io·exp(-T·OD(v)), as the direct formula does
    (in float64), to within one grey level from rounding at the uint8 cut; unfitted tiles
    pass through."""
    from napari_deeppt.stain import apply_od_transform
    from napari_deeppt.stain.macenko import _od_lut

    rng = np.random.default_rng(3)
    tiles = torch.from_numpy(rng.integers(0, 256, size=(4, 24, 20, 3), dtype=np.uint8))
    transform = torch.from_numpy(rng.uniform(-0.5, 1.5, size=(4, 3, 3)).astype(np.float32))
    fitted = torch.tensor([True, True, False, True])
    out = apply_od_transform(tiles, transform, fitted, 240.0).numpy().astype(int)

    od = _od_lut(240.0, "cpu").double().numpy()[tiles.numpy().reshape(4, -1, 3)]
    direct = 240.0 * np.exp(-(od @ transform.double().numpy().transpose(0, 2, 1)))
    direct = np.clip(direct, 0, 255).astype(np.uint8).reshape(tiles.shape).astype(int)
    assert np.array_equal(out[2], tiles.numpy()[2])  # not fitted: untouched
    done = out[[0, 1, 3]]
    diff = np.abs(done - direct[[0, 1, 3]])
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    assert (done != tiles.numpy()[[0, 1, 3]]).mean() > 0.5  # it did change the pixels


def _direct_od_transform(tiles: np.ndarray, transform: np.ndarray, io: float) -> np.ndarray:
    """io·exp(-T·OD(v)) per pixel in float64, cut to uint8 (the formula itself)."""
    from napari_deeppt.stain.macenko import _od_lut

    n = tiles.shape[0]
    od = _od_lut(io, "cpu").double().numpy()[tiles.reshape(n, -1, 3)]
    with np.errstate(over="ignore"):
        direct = io * np.exp(-(od @ transform.astype(np.float64).transpose(0, 2, 1)))
    return np.clip(direct, 0, 255).astype(np.uint8).reshape(tiles.shape).astype(int)


def test_od_transform_on_the_cpu_agrees_with_the_torch_path_and_the_formula() -> None:
    """The CPU's products of tabulated factors and the sum path (what CUDA runs) give the
    same pixels to within one grey level, on tiles and maps as a real fit makes them and on
    a non-contiguous view (the resized batch is one)."""
    from napari_deeppt.stain import DEEPPT_TARGET, apply_od_transform, macenko_transforms
    from napari_deeppt.stain.macenko import _apply_od_sums

    tiles = torch.from_numpy(
        np.stack([stained_tile(STAIN_VECTORS, seed, size=64) for seed in range(6)])
    )
    transform, fitted, *_ = macenko_transforms(tiles, DEEPPT_TARGET)
    assert bool(fitted.all())
    view = tiles.permute(0, 2, 1, 3)  # strided: (N, W, H, 3)
    out = apply_od_transform(view, transform, fitted, 240.0).numpy().astype(int)
    sums = _apply_od_sums(view.contiguous(), transform, fitted, 240.0).numpy().astype(int)
    direct = _direct_od_transform(view.contiguous().numpy(), transform.numpy(), 240.0)
    for other in (sums, direct):
        diff = np.abs(out - other)
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_od_transform_of_a_degenerate_fit_saturates_as_the_formula_does() -> None:
    """Maps with huge entries (a near-singular fit) would overflow a product of float32
    factors into inf · 0 = NaN; those tiles take the sum path and give the formula's
    0 and 255, tile by tile beside ordinary ones in the same batch."""
    from napari_deeppt.stain import apply_od_transform

    rng = np.random.default_rng(5)
    tiles = torch.from_numpy(rng.integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8))
    huge = np.array([[4e3, -4e3, 0.0], [-4e3, 4e3, 1.0], [30.0, 0.0, -30.0]], np.float32)
    transform = torch.from_numpy(
        np.stack([rng.uniform(-0.5, 1.5, (3, 3)).astype(np.float32), huge, huge * np.float32(0.01)])
    )
    out = apply_od_transform(tiles, transform, torch.ones(3, dtype=torch.bool), 240.0)
    direct = _direct_od_transform(tiles.numpy(), transform.numpy(), 240.0)
    diff = np.abs(out.numpy().astype(int) - direct)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-2
    assert {0, 255} <= set(np.unique(out[1].numpy()).tolist())  # saturated both ways


def test_masked_percentiles_are_numpys_over_each_rows_valid_entries() -> None:
    """The percentiles Macenko's angles take (found with topk, not a sort) equal numpy's
    linear percentiles of each row's valid entries: ties, sparse masks, any q."""
    from napari_deeppt.stain.macenko import _masked_percentiles

    rng = np.random.default_rng(11)
    qs = (1.0, 99.0, 50.0, 37.5, 100.0, 0.0)
    for trial in range(60):
        n, rows = int(rng.integers(1, 300)), int(rng.integers(1, 5))
        values = torch.from_numpy(rng.normal(size=(rows, n)).astype(np.float32))
        if trial % 3 == 0:
            values = torch.round(values * 3)  # ties
        valid = torch.from_numpy(rng.random((rows, n)) < rng.uniform(0.05, 1.0))
        valid[:, 0] = True
        for q, got in zip(qs, _masked_percentiles(values, valid, qs), strict=True):
            for row in range(rows):
                kept = values[row][valid[row]].double().numpy()
                assert float(got[row]) == pytest.approx(np.percentile(kept, q), rel=1e-5, abs=1e-5)
