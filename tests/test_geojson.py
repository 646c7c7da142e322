"""QuPath GeoJSON: tissue outlines and tiles land on level-0 pixels, with measurements."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_deeppt import open_slide
from napari_deeppt.errors import DeepPTError
from napari_deeppt.io.geojson import _ring_area
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


def _write(path, document):
    path.write_text(json.dumps(document))
    return path


def _qupath_annotation(x0, y0, x1, y1, cls, hole=None):
    rings = [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]
    if hole:
        hx0, hy0, hx1, hy1 = hole
        rings.append([[hx0, hy0], [hx1, hy0], [hx1, hy1], [hx0, hy1], [hx0, hy0]])
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": rings},
        "properties": {"objectType": "annotation", "classification": {"name": cls}},
    }


def test_restrict_keeps_exactly_the_mask_pixels_inside_the_region():
    array = np.ones((20, 30), bool)
    mask = _mask(array, downsample=(8.0, 4.0))
    # level-0 rectangle x ∈ [40, 120), y ∈ [20, 60): mask columns 5–14, rows 5–14
    roi = np.array([[40, 20], [120, 20], [120, 60], [40, 60]], float)
    inside = mask.restrict(roi).mask
    expected = np.zeros_like(array)
    expected[5:15, 5:15] = True
    np.testing.assert_array_equal(inside, expected)
    np.testing.assert_array_equal(mask.restrict(roi, exclude=True).mask, array & ~expected)
    assert mask.mask.all()  # the original is untouched


def test_qupath_annotations_by_class_and_with_holes(tmp_path):
    mask = _mask(np.ones((20, 30), bool), downsample=(8.0, 8.0))
    path = _write(
        tmp_path / "annotations.geojson",
        {
            "type": "FeatureCollection",
            "features": [
                _qupath_annotation(0, 0, 80, 80, "Tumor", hole=(16, 16, 48, 48)),
                _qupath_annotation(160, 0, 240, 80, "Stroma"),
            ],
        },
    )
    tumour = mask.restrict(path, classification="tumor")  # case-insensitive, as QuPath's UI
    assert tumour.mask.sum() == 10 * 10 - 4 * 4
    assert not tumour.mask[3, 3] and tumour.mask[0, 0]  # the hole is left out
    both = mask.restrict(path)
    assert both.mask.sum() == 10 * 10 - 4 * 4 + 10 * 10
    with pytest.raises(DeepPTError, match=r"no polygon of class 'Necrosis'.*Polygon \(Tumor\)"):
        mask.restrict(path, classification="Necrosis")


def test_unreadable_or_empty_region_files_are_named(tmp_path):
    mask = _mask(np.ones((4, 4), bool))
    bad = tmp_path / "bad.geojson"
    bad.write_text("{not json")
    with pytest.raises(DeepPTError, match=r"bad\.geojson: not a readable GeoJSON"):
        mask.restrict(bad)
    points = _write(tmp_path / "points.geojson", {"type": "Point", "coordinates": [1, 2]})
    with pytest.raises(DeepPTError, match=r"points.geojson: no polygon .*1 × Point"):
        mask.restrict(points)
    ring = [[0, 0], [3, 0], [float("nan"), 3], [0, 0]]  # never "no tissue inside the ROI"
    nan = _write(tmp_path / "nan.geojson", {"type": "Polygon", "coordinates": [ring]})
    with pytest.raises(DeepPTError, match=r"nan\.geojson: a polygon has a vertex that is not"):
        mask.restrict(nan)
    with pytest.raises(ValueError, match="vertices must be numbers"):
        mask.restrict(np.array(ring[:3], float))


def test_tissue_outlines_read_back_as_the_same_tissue(tmp_path, svs_slide):
    slide = open_slide(svs_slide.path)
    mask, _ = detect_and_tile(slide, tile_px=128, mpp=0.5)
    path = mask.to_geojson(tmp_path / "tissue.geojson")
    again = mask.restrict(path).mask
    overlap = (again & mask.mask).sum() / (again | mask.mask).sum()
    assert overlap > 0.98


def test_tiles_and_prediction_inside_a_region_of_interest(tmp_path, svs_slide):
    from napari_deeppt.prediction import predict
    from napari_deeppt.samples import demo_bundle

    slide = open_slide(svs_slide.path)
    w, h = slide.dimensions
    _, full = detect_and_tile(slide, tile_px=128, mpp=0.5)
    roi = _write(
        tmp_path / "left.geojson",
        [_qupath_annotation(0, 0, w // 2, h, "Tumor")],  # older QuPath: a list of features
    )
    _, left = detect_and_tile(slide, tile_px=128, mpp=0.5, roi=roi)
    assert 0 < len(left) < len(full)
    centres_x = left.xy[:, 0] + left.size_level0 / 2
    assert (centres_x < w // 2).all()
    _, right = detect_and_tile(slide, tile_px=128, mpp=0.5, exclude_regions=roi)
    assert len(left) + len(right) <= len(full) and len(right) > 0
    with pytest.warns(UserWarning, match="no tissue left inside the regions"):
        detect_and_tile(slide, tile_px=128, roi=np.array([[-9, -9], [-5, -9], [-5, -5]]))
    prediction = predict(slide, demo_bundle(progress=False), roi=roi, progress=False)
    assert (prediction.grid.xy[:, 0] + prediction.grid.size_level0 / 2 < w // 2).all()
    assert prediction.provenance["regions_of_interest"] == {
        "file": str(roi),
        "classification": None,
    }
    assert "left.geojson" in prediction.to_anndata().uns["deeppt"]["regions_of_interest"]
