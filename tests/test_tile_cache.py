"""Decoded file tiles kept in a bounded cache (issue 15): a grid that does not line up with
the file's tiles decodes each file tile once, with the same pixels, within the bound."""

from __future__ import annotations

import numpy as np
import pytest

from napari_deeppt import open_slide, write_synthetic_slide
from napari_deeppt.backends import tiff_tiles
from napari_deeppt.backends.stored import touched_chunks
from napari_deeppt.testing import default_sample_spec
from napari_deeppt.tiles import make_tile_grid


@pytest.fixture(scope="module")
def aperio_like(tmp_path_factory):
    """240 px JPEG tiles at 0.499 µm/px: 512 px at 0.5 µm/px reads 513 px regions."""
    path = tmp_path_factory.mktemp("cache") / "aperio240.svs"
    spec = default_sample_spec(width=2400, height=1920, mpp=0.499, seed=4)
    return write_synthetic_slide(path, spec, tile=240, level_factors=(4,)).path


def _count_decodes(slide) -> list[int]:
    """Counts the tile decodes of level 0's page, by tile index (``TiffPage.decode`` is a
    cached property: the function it made is wrapped on this page)."""
    seen: list[int] = []
    page = slide._sources[0].array.page
    original = page.decode

    def counting(data, index, **kwargs):
        seen.append(int(index))
        return original(data, index, **kwargs)

    page.__dict__["decode"] = counting
    return seen


def _grid(slide):
    return make_tile_grid(slide, tile_px=512, mpp=0.5, min_tissue=0.0)


def _uncached(path, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(tiff_tiles, "TILE_CACHE_BYTES", 0)
        slide = open_slide(path)
    return slide, [_grid(slide).read_tile(slide, i) for i in range(len(_grid(slide)))]


def test_an_unaligned_grid_decodes_each_file_tile_once_with_the_same_pixels(
    aperio_like, monkeypatch
):
    _, expected = _uncached(aperio_like, monkeypatch)
    grid = _grid(open_slide(aperio_like))  # (finding tissue reads the whole level here)
    slide = open_slide(aperio_like)
    decodes = _count_decodes(slide)
    level, width, height = slide.read_plan(512, 512, 0.5)
    assert (level, width, height) == (0, 513, 513)  # regions straddle the 240 px tiles
    tiles = [grid.read_tile(slide, i) for i in range(len(grid))]
    for tile, truth in zip(tiles, expected, strict=True):
        np.testing.assert_array_equal(tile, truth)
    xy, shape = grid.xy, slide.level_dimensions[0][::-1]
    touched = touched_chunks(xy[:, 1], xy[:, 0], 513, 513, shape, (240, 240))
    assert len(decodes) == len(set(decodes)) == len(touched)  # no file tile decoded twice
    per_tile = [touched_chunks([y], [x], 513, 513, shape, (240, 240)) for x, y in xy]
    assert sum(map(len, per_tile)) > 1.5 * len(touched)  # most are shared by grid tiles


def test_the_cache_holds_at_most_its_bound_and_reads_stay_right(aperio_like, monkeypatch):
    _, expected = _uncached(aperio_like, monkeypatch)
    tile_bytes = 240 * 240 * 3
    monkeypatch.setattr(tiff_tiles, "TILE_CACHE_BYTES", 5 * tile_bytes)
    slide = open_slide(aperio_like)
    cache = slide._sources[0].array.cache
    grid = _grid(slide)
    for i in range(len(grid)):
        np.testing.assert_array_equal(grid.read_tile(slide, i), expected[i])
        assert cache.nbytes <= 5 * tile_bytes and len(cache) <= 5
    assert len(cache) == 5  # it does keep tiles, up to the bound
    assert slide._sources[1].array.cache is cache  # one bound for the file's levels
    slide.read_region(0, 0, 600, 480, level=1)
    assert cache.nbytes <= 5 * tile_bytes


def test_reader_threads_share_the_cache_and_get_the_same_tiles(aperio_like, monkeypatch):
    _, expected = _uncached(aperio_like, monkeypatch)
    slide = open_slide(aperio_like)
    grid = _grid(slide)
    for _ in range(2):  # the second pass reads from the cache only
        for index, tile in grid.iter_tiles(slide, workers=4, prefetch=8):
            np.testing.assert_array_equal(tile, expected[index])
    array = slide._sources[0].array
    cached = array.cache.get((id(array), 0))
    assert cached is not None and not cached.flags.writeable  # shared: read-only


def test_a_tile_larger_than_the_bound_is_not_kept():
    cache = tiff_tiles.DecodedTileCache(100)
    cache.put(1, np.zeros(101, np.uint8))
    cache.put(2, np.zeros(60, np.uint8))
    cache.put(3, np.zeros(60, np.uint8))  # pushes tile 2 out
    assert cache.get(1) is None and cache.get(2) is None and cache.get(3) is not None
    assert cache.nbytes == 60 and len(cache) == 1
