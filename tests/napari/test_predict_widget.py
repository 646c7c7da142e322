"""The "Predict expression" dock and the console call: aligned maps, instant gene switch."""

from __future__ import annotations

import json

import numpy as np
import pytest
from napari.utils.status_messages import status_format

from napari_deeppt._napari import console
from napari_deeppt._napari.layers import legend_overlay
from napari_deeppt.samples import demo_bundle


@pytest.fixture(scope="module")
def bundle_path():
    return demo_bundle(progress=False)  # trained once per session on a synthetic cohort


def _assert_titled(viewer, layer, title):
    """The map's colour bar is the one shown, titled ``title`` at its corner."""
    assert layer.colorbar.visible
    shown = [lyr for lyr in viewer.layers if "deeppt_map" in lyr.metadata and lyr.colorbar.visible]
    assert shown == [layer]  # one legend: never a stack of unnamed bars
    overlay = legend_overlay(viewer)
    assert overlay.visible and overlay.text == title
    assert overlay.position == layer.colorbar.position
    corner = str(layer.colorbar.position)
    assert getattr(viewer.canvas.overlay_tiling, corner) == "vertical"  # title above the bar


@pytest.fixture
def viewer_with_slide(make_napari_viewer, svs_slide):
    viewer = make_napari_viewer()
    layer = viewer.open(str(svs_slide.path), plugin="napari-deeppt")[0]
    return viewer, layer


def test_predict_dock_adds_aligned_map_table_and_switches_genes(
    qtbot, viewer_with_slide, bundle_path, tmp_path
):
    viewer, slide_layer = viewer_with_slide
    # built as napari builds it (a proxy viewer); docked, napari resets choices on layer events
    _, widget = viewer.window.add_plugin_dock_widget("napari-deeppt", "Predict expression")
    widget.bundle.value = bundle_path
    widget.run()
    qtbot.waitUntil(lambda: widget._job is None, timeout=120_000)
    prediction = widget.prediction
    assert prediction is not None and "DEMO MODEL" in widget.status.value
    first = widget.gene.value
    assert first == prediction.top_genes(1).index[0]
    layer = viewer.layers[f"small {first}"]  # the map is named after the gene it shows
    assert list(widget.gene.choices)[1:] == prediction.genes  # kept after layers changed
    assert layer.metadata["gene"] == first
    _assert_titled(viewer, layer, f"{first} log2(x+1)")
    np.testing.assert_array_equal(layer.data, prediction.tile_map(first).astype(np.float32))
    # a tile's map pixel sits on that tile
    grid = prediction.grid
    r, c = grid.rowcol[0]
    y0, x0 = slide_layer.world_to_data(layer.data_to_world((r, c)))
    assert x0 == pytest.approx(grid.xy[0, 0] + (grid.size_level0 - 1) / 2)
    assert y0 == pytest.approx(grid.xy[0, 1] + (grid.size_level0 - 1) / 2)
    # hovering a tile says which gene, its value and the unit
    value = status_format(float(prediction.tile_map(first)[r, c]))
    status = layer.get_status(layer.data_to_world((r, c)), world=True)
    assert status["value"] == f"{first} {value} log2(x+1)"
    assert status["coordinates"].endswith(f": {first} {value} log2(x+1)")
    # switching genes renames and refills the same layer without recomputing
    other = next(g for g in prediction.genes if g != first)
    widget.gene.value = other
    assert [lyr.name for lyr in viewer.layers] == ["small", f"small {other}"]
    assert viewer.layers[f"small {other}"] is layer
    assert layer.metadata["gene"] == other
    _assert_titled(viewer, layer, f"{other} log2(x+1)")
    status = layer.get_status(layer.data_to_world((r, c)), world=True)
    assert status["value"].startswith(f"{other} ")
    np.testing.assert_array_equal(layer.data, prediction.tile_map(other).astype(np.float32))
    widget.gene.value = first  # and back: still one map layer, no "[1]" copies
    assert [lyr.name for lyr in viewer.layers] == ["small", f"small {first}"]
    widget.run()  # a rerun replaces the map too
    qtbot.waitUntil(lambda: widget._job is None, timeout=120_000)
    assert [lyr.name for lyr in viewer.layers] == ["small", f"small {first}"]
    assert all(lyr.units == ("micrometer", "micrometer") for lyr in viewer.layers)
    widget.gene.value = other
    assert widget.table.value["data"][0][0] == prediction.top_genes(1).index[0]
    assert widget.export("csv", tmp_path / "s.csv").exists()
    assert widget.export("h5ad", tmp_path / "t.h5ad").exists()
    widget.top_n.value = 2  # the GeoJSON holds the table's top genes and the shown gene
    geojson = widget.export("geojson", tmp_path / "t.geojson")
    tiles = json.loads(geojson.read_text())["features"]
    assert len(tiles) == len(grid)
    measured = tiles[0]["properties"]["measurements"]
    expected = {*prediction.top_genes(2).index, other, "tissue fraction"}
    assert set(measured) == expected
    assert measured[other] == pytest.approx(
        float(prediction.tile_expression[0, prediction.gene_index(other)]), rel=1e-3
    )


def test_export_through_the_save_dialog_replaces_the_file_it_confirmed(
    qtbot, viewer_with_slide, bundle_path, tmp_path, monkeypatch
):
    from qtpy.QtWidgets import QFileDialog

    viewer, _ = viewer_with_slide
    _, widget = viewer.window.add_plugin_dock_widget("napari-deeppt", "Predict expression")
    widget.bundle.value = bundle_path
    widget.run()
    qtbot.waitUntil(lambda: widget._job is None, timeout=120_000)
    target = tmp_path / "existing.expression.csv"
    target.write_text("old")  # the dialog has asked "replace?" and the user said yes
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), ""))
    widget._export("csv")  # in a worker: large exports never freeze napari
    qtbot.waitUntil(lambda: widget._job is None, timeout=30_000)
    assert widget.status.value == f"wrote {target}"
    assert target.read_text().startswith("gene,expression")


def test_console_predict_with_a_layer_adds_the_map(viewer_with_slide, bundle_path):
    viewer, layer = viewer_with_slide
    prediction = console.predict(layer, bundle_path, progress=False)
    top = prediction.top_genes(1).index[0]
    assert viewer.layers[f"small {top}"].metadata["deeppt_prediction"] is prediction


@pytest.fixture
def compile_modes(monkeypatch):
    """The ``compile`` each feature extraction is asked for, in order."""
    import napari_deeppt.features as features

    asked, extract = [], features.extract_features

    def recording(*args, **kwargs):
        asked.append(kwargs.get("compile", "not given"))
        return extract(*args, **kwargs)

    monkeypatch.setattr(features, "extract_features", recording)
    return asked


def test_napari_never_compiles_the_model_it_predicts_with(
    qtbot, viewer_with_slide, bundle_path, compile_modes, svs_slide
):
    """The dock and the console load a compiled model built earlier and never build one
    (compiling inside napari clashes with its software OpenGL); scripts keep "auto"."""
    from napari_deeppt import predict

    viewer, layer = viewer_with_slide
    _, widget = viewer.window.add_plugin_dock_widget("napari-deeppt", "Predict expression")
    widget.bundle.value = bundle_path
    widget.run()
    qtbot.waitUntil(lambda: widget._job is None, timeout=120_000)
    assert widget.prediction is not None
    console.predict(layer, bundle_path, progress=False)
    console.predict(layer, bundle_path, progress=False, compile=False)  # the user's choice
    predict(svs_slide.path, bundle_path, progress=False)  # a script
    assert compile_modes == ["cached", "cached", False, "auto"]


def test_bad_bundle_is_reported(viewer_with_slide, tmp_path):
    viewer, _ = viewer_with_slide
    (tmp_path / "bad.deeppt").write_bytes(b"nope")
    _, widget = viewer.window.add_plugin_dock_widget("napari-deeppt", "Predict expression")
    widget.bundle.value = tmp_path / "bad.deeppt"
    assert widget.run() is None
    assert "not a napari-deeppt model bundle" in widget.status.value


def test_predict_inside_regions_drawn_on_the_slide(
    qtbot, viewer_with_slide, bundle_path, svs_slide
):
    viewer, _ = viewer_with_slide
    w_um, h_um = svs_slide.width * svs_slide.mpp, svs_slide.height * svs_slide.mpp
    shapes = viewer.add_shapes(
        [np.array([[0, 0], [0, w_um / 2], [h_um, w_um / 2], [h_um, 0]])],
        shape_type="rectangle",
        name="tumour",
    )
    _, widget = viewer.window.add_plugin_dock_widget("napari-deeppt", "Predict expression")
    widget.bundle.value = bundle_path
    widget.roi_layer.value = shapes
    widget.run()
    qtbot.waitUntil(lambda: widget._job is None, timeout=120_000)
    grid = widget.prediction.grid
    assert "inside the regions" in widget.status.value
    assert (grid.centres_um()[:, 0] < w_um / 2).all()


def test_signature_map_is_the_mean_of_its_genes_per_tile(qtbot, viewer_with_slide, bundle_path):
    viewer, _ = viewer_with_slide
    _, widget = viewer.window.add_plugin_dock_widget("napari-deeppt", "Predict expression")
    widget.bundle.value = bundle_path
    assert widget.show_signature("DRIVEN0") is None and "predict first" in widget.status.value
    widget.run()
    qtbot.waitUntil(lambda: widget._job is None, timeout=120_000)
    prediction = widget.prediction
    widget.signature_genes.value = "DRIVEN0, DRIVEN1 DRIVEN0"  # commas, spaces, repeats
    layer = widget.show_signature()
    assert layer.name == "small signature"
    assert layer.metadata["genes"] == ["DRIVEN0", "DRIVEN1"]
    _assert_titled(viewer, layer, "DRIVEN0, DRIVEN1 mean log2(x+1)")
    expected = (prediction.tile_map("DRIVEN0") + prediction.tile_map("DRIVEN1")) / 2
    np.testing.assert_allclose(layer.data, expected, rtol=1e-5)
    slide = (prediction.slide_expression["DRIVEN0"] + prediction.slide_expression["DRIVEN1"]) / 2
    assert f"{slide:.3f}" in widget.status.value
    top = prediction.top_genes(1).index[0]
    np.testing.assert_allclose(layer.translate, viewer.layers[f"small {top}"].translate)
    widget.show_signature("DRIVEN1")  # another signature replaces the map
    assert [lyr.name for lyr in viewer.layers].count("small signature") == 1
    assert len(viewer.layers) == 3
    assert widget.show_signature("DRIVEN0 NOPE") is None
    assert "['NOPE'] are not predicted by this model" in widget.status.value


def test_a_long_error_wraps_and_leaves_the_canvas_its_width(
    qtbot, make_napari_viewer, error_notifications
):
    """A missing-weights error with deep paths wraps in the dock instead of widening it."""
    import re

    from qtpy.QtGui import QFontMetrics

    from napari_deeppt.errors import WeightsNotFoundError

    viewer = make_napari_viewer(show=True)
    dock, widget = viewer.window.add_plugin_dock_widget("napari-deeppt", "Predict expression")
    canvas = viewer.window._qt_viewer.canvas.native
    qtbot.wait(50)
    dock_width, canvas_width = dock.width(), canvas.width()
    assert dock_width < 500 and canvas_width > 300
    folder = (
        "/home/pathologist/.cache/napari-deeppt/weights/"
        "resnet50_truncated_imagenet_weights_for_the_deeppt_feature_extractor"
    )
    message = (
        f"{folder}/resnet50_a1_in1k_weights_downloaded_from_the_model_hub.pth: weights file "
        "not found; fetch the extractor weights with 'deeppt weights fetch resnet50' on a "
        "machine online and copy them here, or choose the file under 'extractor weights' "
        f"(looked in {folder} and in the folder of the model bundle)"
    )
    assert len(message) > 400
    widget._on_error(WeightsNotFoundError(message))
    qtbot.wait(50)
    assert widget.status.value == f"error: {message}"  # all of it, wrapped
    label = widget.status.native
    words = re.split(r"[\s\u200b/-]+", label.text())  # where Qt may break a line
    widest = max(QFontMetrics(label.font()).horizontalAdvance(w) for w in words)
    assert widest <= label.width()  # long file names wrap too: nothing is cut off
    assert dock.width() < 500
    assert canvas.width() >= 0.9 * canvas_width
    assert error_notifications == [message]


@pytest.mark.parametrize("content", [b"a text file, not a model\n", bytes(range(256)) * 8])
def test_a_file_that_is_not_a_bundle_says_so_in_the_dock(
    viewer_with_slide, tmp_path, content, error_notifications
):
    viewer, _ = viewer_with_slide
    _, widget = viewer.window.add_plugin_dock_widget("napari-deeppt", "Predict expression")
    (tmp_path / "x.deeppt").write_bytes(content)
    widget.bundle.value = tmp_path / "x.deeppt"
    assert widget.run() is None and widget._job is None
    assert widget.status.value.startswith(f"error: {tmp_path / 'x.deeppt'}: not a napari-deeppt")
    assert error_notifications == [widget.status.value.removeprefix("error: ")]
    assert len(viewer.layers) == 1


def test_int8_for_a_model_without_a_resnet_says_so_in_the_dock(
    qtbot, viewer_with_slide, bundle_path
):
    """The precision choice reaches the core: the demo model's extractor has no int8 form."""
    viewer, _ = viewer_with_slide
    _, widget = viewer.window.add_plugin_dock_widget("napari-deeppt", "Predict expression")
    widget.bundle.value = bundle_path
    assert widget.precision.value == "the model's"  # float32 for this bundle
    widget.precision.value = "int8"
    widget.run()
    qtbot.waitUntil(lambda: widget._job is None, timeout=120_000)
    assert widget.prediction is None
    assert "'int8' is available for resnet18, resnet50" in widget.status.value
    assert "\n" not in widget.status.value.strip()
