"""QuPath GeoJSON: tissue outlines and tiles land on level-0 pixels, with measurements."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_deeppt import open_slide
from napari_deeppt.geojson import _ring_area
from napari_deeppt.tiles import detect_and_tile
from napari_deeppt.tissue import TissueMask


def _mask(array, downsample=(8.0, 8.0), mpp=0.5):
    h, w = array.shape
    return TissueMask(
        mask=array,
        downsample_xy=downsample,
        slide_dimensions=(int(w * downsample[0]), int(h * downsample[1])),
        slide_mpp=mpp,
    )


def test_a_ring_of_tissue_becomes_one_polygon_with_its_hole(tmp_path):
    array = np.zeros((40, 60), bool)
    array[5:35, 10:50] = True  # 30 × 40 mask px
    array[15:25, 20:30] = False  # a 10 × 10 hole
    mask = _mask(array, downsample=(8.0, 4.0))
    collection = json.loads(mask.to_geojson(tmp_path / "t.geojson").read_text())
    (feature,) = collection["features"]
    assert feature["properties"]["objectType"] == "annotation"
    assert feature["properties"]["classification"]["name"] == "Tissue"
    outer, hole = feature["geometry"]["coordinates"]
    xs, ys = np.array(outer)[:, 0], np.array(outer)[:, 1]
    # the outline follows the mask pixels' edges on level 0: x = col·dx, y = row·dy
    assert xs.min() == pytest.approx(10 * 8, abs=4) and xs.max() == pytest.approx(50 * 8, abs=4)
    assert ys.min() == pytest.approx(5 * 4, abs=2) and ys.max() == pytest.approx(35 * 4, abs=2)
    hx, hy = np.array(hole)[:, 0], np.array(hole)[:, 1]
    assert hx.min() == pytest.approx(20 * 8, abs=4) and hx.max() == pytest.approx(30 * 8, abs=4)
    assert hy.min() == pytest.approx(15 * 4, abs=2) and hy.max() == pytest.approx(25 * 4, abs=2)
    area = _ring_area(outer) - _ring_area(hole)
    assert area == pytest.approx(mask.area_px, rel=0.02)
    assert feature["properties"]["measurements"]["Area µm^2"] == pytest.approx(
        mask.area_um2, rel=1e-6
    )


def test_separate_pieces_are_separate_annotations(tmp_path):
    array = np.zeros((30, 30), bool)
    array[2:8, 2:8] = True
    array[15:28, 12:29] = True
    features = json.loads(_mask(array).to_geojson(tmp_path / "t.geojson").read_text())["features"]
    areas = sorted(f["properties"]["measurements"]["Area px^2"] for f in features)
    assert areas == [6 * 6 * 64, 13 * 17 * 64]


def test_tiles_carry_predictions_and_sit_on_their_pixels(tmp_path, svs_slide):
    slide = open_slide(svs_slide.path)
    _, grid = detect_and_tile(slide, tile_px=128, mpp=0.5)
    values = np.arange(len(grid), dtype=float)
    values[0] = np.nan  # off-model values are left out, not written as NaN
    path = grid.to_geojson(tmp_path / "tiles.geojson", {"GENE1": values})
    features = json.loads(path.read_text())["features"]
    assert len(features) == len(grid)
    for i in (1, len(grid) // 2, len(grid) - 1):
        ring = np.array(features[i]["geometry"]["coordinates"][0])
        x, y = grid.xy[i]
        assert ring[:, 0].min() == x and ring[:, 1].min() == y
        assert ring[:, 0].max() - x == pytest.approx(grid.size_level0)
        assert features[i]["properties"]["measurements"]["GENE1"] == pytest.approx(i)
        assert features[i]["properties"]["objectType"] == "tile"
    assert "GENE1" not in features[0]["properties"]["measurements"]
    with pytest.raises(FileExistsError):
        grid.to_geojson(path)  # never overwrites unless asked
    with pytest.raises(ValueError, match="3 values"):
        grid.to_geojson(tmp_path / "bad.geojson", {"G": np.zeros(3)})
