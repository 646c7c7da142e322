"""Issue 12, item 7: the Predict dock says which tiles the map comes from, and applies the
model only to tiles of the size it was trained on."""

from __future__ import annotations

import pytest

from napari_deeppt._napari import console
from napari_deeppt.samples import demo_bundle


@pytest.fixture(scope="module")
def bundle_path():
    return demo_bundle(progress=False)  # 64 px tiles at 1 µm/px: 64 µm tiles


@pytest.fixture
def dock(make_napari_viewer, svs_slide, bundle_path):
    viewer = make_napari_viewer()
    viewer.open(str(svs_slide.path), plugin="napari-deeppt")
    _, widget = viewer.window.add_plugin_dock_widget("napari-deeppt", "Predict expression")
    widget.bundle.value = bundle_path
    return viewer, widget


def _predict(qtbot, widget):
    widget.run()
    qtbot.waitUntil(lambda: widget._job is None, timeout=120_000)


def test_the_dock_says_which_tiles_the_model_needs(dock):
    _, widget = dock
    assert widget.model_tiles.value.startswith("trained on 64 µm tiles (64 px at 1 µm/px)")
    assert widget.native.minimumSizeHint().width() < 450  # the line wraps, the dock stays narrow


def test_tiles_of_another_size_are_refused_and_named(qtbot, dock):
    viewer, widget = dock
    console.detect_and_tile(viewer.layers["small"], tile_px=128, mpp=2.0)  # 256 µm tiles
    widget.reset_choices()
    widget.tiles_layer.value = viewer.layers["small tiles"]
    assert widget.run() is None
    assert "'small tiles': these are 256 µm tiles (128 px at 2 µm/px)" in widget.status.value
    assert "trained on 64 µm tiles (64 px at 1 µm/px)" in widget.status.value
    assert widget.prediction is None and len(viewer.layers) == 3  # no map
    # the model's own tiles (the default) work, and the status says the cut tiles were not used
    widget.tiles_layer.value = None
    _predict(qtbot, widget)
    assert widget.prediction is not None
    status = widget.status.value
    assert "64 µm tiles (64 px at 1 µm/px), the model's own" in status
    assert "not the tiles of 'small tiles'" in status


def test_tiles_of_the_model_size_are_used_as_cut(qtbot, dock):
    viewer, widget = dock
    _, grid = console.detect_and_tile(viewer.layers["small"], tile_px=64, mpp=1.0, min_tissue=0.9)
    widget.reset_choices()
    widget.tiles_layer.value = viewer.layers["small tiles"]
    _predict(qtbot, widget)
    assert widget.prediction.grid is grid  # the user's tiles, not recut
    assert "from 'small tiles'" in widget.status.value
