"""Tissue detection: known geometry, low-resolution only, artefacts, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from napari_deeppt import MissingMppError
from napari_deeppt.backends.base import LevelSource
from napari_deeppt.errors import NoTissueWarning
from napari_deeppt.testing import SyntheticSlide, TissueRegion, write_synthetic_slide
from napari_deeppt.tissue import TissueMask, TissueParams, detect_tissue


@pytest.fixture(scope="module")
def big_slide(slide_dir):
    """4096×3072 px at 0.5 µm/px, three tissue pieces of known area, stored losslessly.

    (JPEG's 2×2 chroma subsampling blurs edges by a pixel or two at the coarse level, which
    would blur the truth; the JPEG case is checked on area below.)
    """
    from napari_deeppt.testing import default_sample_spec

    path = slide_dir / "tissue.svs"
    spec = default_sample_spec(4096, 3072, 0.5, seed=7)
    if path.exists():
        from dataclasses import replace

        return replace(spec, path=path)
    return write_synthetic_slide(path, spec, level_factors=(4, 16), compression="zlib")


def test_area_and_boundary_match_truth(big_slide):
    mask = detect_tissue(big_slide.path)
    assert mask.area_um2 == pytest.approx(big_slide.tissue_area_um2, rel=0.03)
    truth = big_slide.truth_mask(mask.downsample_xy[0])
    assert truth.shape == mask.mask.shape
    square = np.ones((3, 3), bool)  # pixels within one mask pixel of the true edge
    near_boundary = ndimage.binary_dilation(truth, square) & ~ndimage.binary_erosion(truth, square)
    wrong = truth != mask.mask
    assert wrong.sum() > 0  # the comparison is real
    assert not (wrong & ~near_boundary).any(), "mask differs from truth beyond one pixel"


def test_area_on_a_jpeg_slide(svs_slide):
    mask = detect_tissue(svs_slide.path)
    assert mask.area_um2 == pytest.approx(svs_slide.tissue_area_um2, rel=0.05)


def test_placement_is_exact(big_slide):
    mask = detect_tissue(big_slide.path, mpp=8.0)
    w0, h0 = big_slide.width, big_slide.height
    h, w = mask.mask.shape
    assert mask.downsample_xy == (w0 / w, h0 / h)
    assert mask.mpp_actual == pytest.approx(8.0, rel=0.01)
    # level-0 points deep inside each region are tissue; glass corners are not
    for region in big_slide.regions:
        assert mask.contains(region.cx, region.cy)
    assert not mask.contains(5, 5)
    assert not mask.contains(-10, 5) and not mask.contains(w0 + 10, 5)


def test_reads_a_low_resolution_level_only(big_slide, monkeypatch):
    reads: list[str] = []
    original = LevelSource.read

    def spy(self, rows, cols):
        reads.append(self.name)
        return original(self, rows, cols)

    monkeypatch.setattr(LevelSource, "read", spy)
    mask = detect_tissue(big_slide.path, mpp=8.0)
    assert mask.source_level == 2  # 8 µm/px
    assert set(reads) == {"level 2"}


def _write_with_artefacts(path, spec: SyntheticSlide) -> None:
    image = spec.render(0, 0, spec.width, spec.height)
    image[60:260, 200:1800] = (30, 160, 70)  # green pen stroke (100 µm wide) on glass
    image[1150:1450, 1600:1900] = (25, 10, 30)  # a near-black saturated blob (150 µm)
    tifffile.imwrite(
        path,
        image,
        photometric="rgb",
        tile=(256, 256),
        compression="zlib",
        resolution=(1e4 / spec.mpp, 1e4 / spec.mpp),
        resolutionunit="CENTIMETER",
    )


def test_pen_marks_and_dark_artefacts_are_excluded(tmp_path):
    spec = SyntheticSlide(2048, 1536, 0.5, regions=(TissueRegion(700, 800, 400, 350, 0),))
    path = tmp_path / "pen.tif"
    _write_with_artefacts(path, spec)
    with_pen = detect_tissue(path, exclude_pen=False, exclude_dark=False, mpp=4.0)
    clean = detect_tissue(path, exclude_pen=True, exclude_dark=True, mpp=4.0)
    assert with_pen.contains(1000, 160)  # the stroke and the blob counted as tissue...
    assert with_pen.contains(1750, 1300)
    assert not clean.contains(1000, 160)  # ...unless excluded
    assert not clean.contains(1750, 1300)
    assert clean.contains(700, 800)
    assert clean.area_px == pytest.approx(spec.tissue_area_px, rel=0.05)


def test_blank_slide_gives_empty_mask_and_warning(tmp_path):
    blank = write_synthetic_slide(
        tmp_path / "blank.svs", SyntheticSlide(2048, 1536, 0.5), level_factors=(4,)
    )
    with pytest.warns(NoTissueWarning, match="no tissue found"):
        mask = detect_tissue(blank.path)
    assert mask.is_empty and mask.area_um2 == 0


def test_missing_mpp_asks_for_it(no_mpp_slide):
    with pytest.raises(MissingMppError, match="mpp="):
        detect_tissue(no_mpp_slide.path)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("mpp", 0),
        ("min_saturation", 1.5),
        ("max_brightness", 0),
        ("min_area_um2", -1),
        ("closing_um", -2),
    ],
)
def test_parameters_out_of_range(svs_slide, name, value):
    with pytest.raises(ValueError, match=name):
        detect_tissue(svs_slide.path, **{name: value})
    with pytest.raises(TypeError):
        detect_tissue(svs_slide.path, not_a_parameter=1)


def test_fraction_is_exact_for_partial_pixels():
    mask = np.zeros((10, 10), bool)
    mask[:, :5] = True  # left half of a 100×100 px slide at downsample 10
    tm = TissueMask(mask, (10.0, 10.0), (100, 100), 0.5)
    assert tm.fraction(0, 0, 50, 100) == pytest.approx(1.0)
    assert tm.fraction(50, 0, 50, 100) == pytest.approx(0.0)
    assert tm.fraction(25, 0, 50, 100) == pytest.approx(0.5)
    assert tm.fraction(45, 10, 10, 10) == pytest.approx(0.5)  # half a mask pixel each side
    assert tm.fraction(47, 0, 10, 50) == pytest.approx(0.3)
    np.testing.assert_allclose(tm.fraction(np.array([0, 50]), 0, 50, 50), [1.0, 0.0])


def test_save_load_round_trip(tmp_path, svs_slide):
    mask = detect_tissue(svs_slide.path)
    path = mask.save(tmp_path / "mask.npz")
    loaded = TissueMask.load(path)
    assert np.array_equal(loaded.mask, mask.mask)
    assert loaded.downsample_xy == mask.downsample_xy and loaded.params == mask.params
    with pytest.raises(FileExistsError):
        mask.save(path)
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(Exception, match="not a tissue mask"):
        TissueMask.load(tmp_path / "junk.npz")


def test_params_dataclass_defaults_are_valid():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TissueParams()


def test_a_mask_reads_in_a_line(svs_slide):
    mask = detect_tissue(svs_slide.path)
    text = repr(mask)
    assert text.startswith("TissueMask(") and "mm² of tissue" in text and "small.svs" in text
    assert "\n" not in text and len(text) < 200  # never the pixels


def test_small_pieces_and_holes_match_a_labelled_count():
    """Pieces under the size go, border-touching background stays (scikit-image underneath)."""
    from scipy import ndimage

    from napari_deeppt.tissue import _remove_small

    def reference(mask, min_pixels, keep_border):
        labels, _ = ndimage.label(mask, structure=np.ones((3, 3), bool))
        keep = np.bincount(labels.ravel()) >= min_pixels
        if keep_border:
            keep[np.unique(np.r_[labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = True
        keep[0] = False
        return keep[labels]

    rng = np.random.default_rng(0)
    for _ in range(100):
        mask = rng.random((30, 40)) > rng.uniform(0.3, 0.8)
        min_pixels = rng.uniform(0, 25)
        for keep_border in (False, True):
            expected = reference(mask, min_pixels, keep_border)
            np.testing.assert_array_equal(_remove_small(mask, min_pixels, keep_border), expected)
