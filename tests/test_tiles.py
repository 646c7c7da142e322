"""The tile grid: geometry at a physical resolution, tissue fractions, filters, files."""

from __future__ import annotations

import numpy as np
import pytest

from napari_deeppt import MissingMppError, open_slide
from napari_deeppt.errors import NoTissueWarning, TileGridError
from napari_deeppt.testing import SyntheticSlide, write_synthetic_slide
from napari_deeppt.tiles import TileGrid, make_tile_grid, sobel_edge_fraction
from napari_deeppt.tissue import TissueMask, detect_tissue


def truth_fraction(spec, x, y, size, samples=24):
    offsets = (np.arange(samples) + 0.5) / samples * size
    gx, gy = np.meshgrid(x + offsets, y + offsets)
    return float((spec.tissue_type_map(gx, gy) >= 0).mean())


def test_geometry_follows_physical_resolution(svs_slide):
    slide = open_slide(svs_slide.path)  # 2048×1536 at 0.5 µm/px
    grid = make_tile_grid(slide, tile_px=128, mpp=1.0, min_tissue=0.0)
    assert grid.size_level0 == pytest.approx(256)  # 128 px × 1.0 / 0.5
    assert grid.grid_shape == (6, 8)
    assert len(grid) == 48
    assert grid.xy[:, 0].max() + 256 <= 2048 and grid.xy[:, 1].max() + 256 <= 1536
    tile = grid.read_tile(slide, 5)
    assert tile.shape == (128, 128, 3) and tile.dtype == np.uint8
    x, y = grid.xy[5]
    np.testing.assert_array_equal(tile, slide.read_region_at_mpp(x, y, 128, 128, 1.0))


def test_tissue_fraction_matches_truth_and_threshold(svs_slide):
    # 4 level-0 px per mask px; a small closing radius, since two pieces here are only 20 µm
    # apart and the default closing (24 µm) would rightly bridge them
    mask = detect_tissue(svs_slide.path, mpp=2.0, closing_um=6.0)
    grid = make_tile_grid(svs_slide.path, mask, tile_px=128, mpp=0.5, min_tissue=0.0)
    truth = np.array([truth_fraction(svs_slide, x, y, grid.size_level0) for x, y in grid.xy])
    assert np.abs(grid.tissue_fraction - truth).max() < 0.15
    assert np.abs(grid.tissue_fraction - truth).mean() < 0.02
    kept = make_tile_grid(svs_slide.path, mask, tile_px=128, mpp=0.5, min_tissue=0.5)
    assert (kept.tissue_fraction >= 0.5).all()
    assert len(kept) == int((grid.tissue_fraction >= 0.5).sum())
    for x, y in kept.centres[:: max(1, len(kept) // 20)]:
        # kept tiles sit on tissue: the truth agrees at most tile centres
        assert truth_fraction(svs_slide, x - 64, y - 64, 128) > 0.2


def test_default_deeppt_tiles_are_512px_at_20x(svs_slide):
    grid = make_tile_grid(svs_slide.path)
    assert grid.tile_px == 512 and grid.mpp == 0.5
    assert grid.size_level0 == pytest.approx(512)


def test_stride_gives_overlapping_tiles(svs_slide):
    mask = detect_tissue(svs_slide.path)
    plain = make_tile_grid(svs_slide.path, mask, tile_px=128, mpp=0.5)
    dense = make_tile_grid(svs_slide.path, mask, tile_px=128, mpp=0.5, stride_px=64)
    assert dense.stride_level0 == pytest.approx(64)
    assert 3 * len(plain) < len(dense) < 5 * len(plain)


def test_sobel_edge_fraction_separates_flat_from_textured():
    rng = np.random.default_rng(0)
    flat = np.full((64, 64, 3), (200, 120, 170), np.uint8)
    textured = rng.integers(0, 255, size=(64, 64, 3), dtype=np.uint8)
    assert sobel_edge_fraction(flat) == 0.0
    assert sobel_edge_fraction(textured) > 0.9


def test_edge_filter_drops_featureless_tissue(tmp_path):
    from napari_deeppt.testing import DEFAULT_TISSUE_TYPES, TissueRegion, TissueType

    flat_type = TissueType("flat", 0.3, 0.6, 50.0, 1.0, 0.0, texture=0.0)  # no nuclei, no noise
    spec = SyntheticSlide(
        2048,
        1024,
        0.5,
        seed=1,
        tissue_types=(*DEFAULT_TISSUE_TYPES, flat_type),
        regions=(TissueRegion(500, 512, 420, 420, 0), TissueRegion(1540, 512, 420, 420, 3)),
    )
    truth = write_synthetic_slide(
        tmp_path / "flat.tif", spec, format="tiff", level_factors=(4,), compression="zlib"
    )
    mask = detect_tissue(truth.path)
    both = make_tile_grid(truth.path, mask, tile_px=128, mpp=0.5)
    edged = make_tile_grid(truth.path, mask, tile_px=128, mpp=0.5, edge_filter=True)
    assert len(edged) > 0
    assert (both.xy[:, 0] > 1100).any()  # the flat piece has tissue tiles...
    assert not (edged.xy[:, 0] > 1100).any()  # ...which the Sobel criterion drops
    assert (edged.edge_fraction >= 0.5).all()


def test_no_tissue_gives_zero_tiles_and_a_message(tmp_path):
    blank = write_synthetic_slide(
        tmp_path / "blank.svs", SyntheticSlide(2048, 1536, 0.5), level_factors=(4,)
    )
    with pytest.warns(NoTissueWarning):
        grid = make_tile_grid(blank.path, tile_px=256)
    assert len(grid) == 0
    assert grid.raster().sum() == 0


def test_tile_larger_than_slide(svs_slide):
    with pytest.raises(TileGridError, match=r"larger than the slide.*smaller tile_px"):
        make_tile_grid(svs_slide.path, tile_px=4096, mpp=0.5)


@pytest.mark.parametrize(
    "kwargs",
    [{"tile_px": 8}, {"mpp": -1}, {"min_tissue": 1.5}, {"stride_px": 0}, {"tile_px": 100.5}],
)
def test_parameters_out_of_range(svs_slide, kwargs):
    with pytest.raises(ValueError, match="out of range"):
        make_tile_grid(svs_slide.path, **kwargs)


def test_missing_mpp(no_mpp_slide):
    with pytest.raises(MissingMppError):
        make_tile_grid(no_mpp_slide.path)


def test_mask_of_another_slide_is_refused(svs_slide):
    other = TissueMask(np.ones((10, 10), bool), (1.0, 1.0), (10, 10), 0.5)
    with pytest.raises(TileGridError, match="made for a"):
        make_tile_grid(svs_slide.path, other)


def test_save_load_round_trip(tmp_path, svs_slide):
    grid = make_tile_grid(svs_slide.path, tile_px=128, mpp=0.5)
    path = grid.save(tmp_path / "tiles.csv")
    assert path.read_text().startswith("# napari-deeppt tile grid ")
    loaded = TileGrid.load(path)
    np.testing.assert_array_equal(loaded.xy, grid.xy)
    np.testing.assert_array_equal(loaded.rowcol, grid.rowcol)
    np.testing.assert_allclose(loaded.tissue_fraction, grid.tissue_fraction, rtol=1e-5)
    assert loaded.params == grid.params and loaded.grid_shape == grid.grid_shape
    with pytest.raises(FileExistsError):
        grid.save(path)
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(Exception, match="not a tile grid"):
        TileGrid.load(tmp_path / "other.csv")


def test_raster_and_iter_tiles(svs_slide):
    slide = open_slide(svs_slide.path)
    grid = make_tile_grid(slide, tile_px=128, mpp=0.5)
    raster = grid.raster(grid.tissue_fraction, fill=np.nan)
    assert raster.shape == grid.grid_shape
    assert np.nansum(raster) == pytest.approx(grid.tissue_fraction.sum())
    indices = [i for i, _ in grid.iter_tiles(slide, indices=range(0, len(grid), 3), workers=2)]
    assert indices == list(range(0, len(grid), 3))
