"""The "Tissue & tiles" dock and layer placement: layers sit exactly on the tissue."""

from __future__ import annotations

import time

import numpy as np
import pytest

import napari_deeppt
from napari_deeppt._napari import console


@pytest.fixture
def viewer_with_slide(make_napari_viewer, svs_slide):
    viewer = make_napari_viewer()
    layer = viewer.open(str(svs_slide.path), plugin="napari-deeppt")[0]
    return viewer, layer


def _wait(qtbot, widget, timeout=60_000):
    qtbot.waitUntil(lambda: widget._job is None, timeout=timeout)


def _small_tiles(widget):
    widget.tile_px.value = 128
    widget.tile_mpp.value = 0.5


def _dock(viewer):
    """The dock as napari builds it: it gets a proxy of the viewer, not the viewer."""
    _, widget = viewer.window.add_plugin_dock_widget("napari-deeppt", "Tissue & tiles")
    return widget


def _detected(qtbot, viewer):
    """The dock (built as napari does) after detecting tissue and cutting 128 px tiles."""
    widget = _dock(viewer)
    _small_tiles(widget)
    widget.run()
    _wait(qtbot, widget)
    return widget


def test_run_adds_mask_and_tiles_then_rerun_replaces(qtbot, viewer_with_slide):
    viewer, _ = viewer_with_slide
    widget = _detected(qtbot, viewer)
    names = [lyr.name for lyr in viewer.layers]
    assert names == ["small", "small tissue", "small tiles"]
    grid = viewer.layers["small tiles"].metadata["deeppt_grid"]
    assert len(grid) > 10
    assert f"{len(grid)} tiles kept" in widget.status.value
    widget.min_tissue.value = 0.9
    widget.run()
    _wait(qtbot, widget)
    assert [lyr.name for lyr in viewer.layers] == names  # replaced, not duplicated
    assert all(lyr.units == ("micrometer", "micrometer") for lyr in viewer.layers)
    tissue = viewer.layers["small tissue"].colormap  # every piece one clear green
    np.testing.assert_allclose(tissue.map(np.array([1, 2])), [[0.15, 0.85, 0.3, 1.0]] * 2)
    assert viewer.layers["small tiles"].metadata["n_tiles"] < len(grid)


def test_mask_pixels_sit_on_the_tissue_they_came_from(qtbot, viewer_with_slide, svs_slide):
    viewer, slide_layer = viewer_with_slide
    _, widget = viewer.window.add_plugin_dock_widget("napari-deeppt", "Tissue & tiles")
    widget.run()
    _wait(qtbot, widget)
    mask_layer = viewer.layers["small tissue"]
    labels = np.asarray(mask_layer.data)
    rng = np.random.default_rng(0)
    rows = rng.integers(0, labels.shape[0], 300)
    cols = rng.integers(0, labels.shape[1], 300)
    agree = 0
    for r, c in zip(rows, cols):
        world = mask_layer.data_to_world((r, c))
        # the slide layer's data coordinates are level-0 pixel indices (centres at integers)
        y0, x0 = slide_layer.world_to_data(world)
        truth = svs_slide.tissue_type_map(np.array(x0 + 0.5), np.array(y0 + 0.5)) >= 0
        agree += bool(labels[r, c] > 0) == bool(truth)
    assert agree >= 290  # disagreements only at edges
    # and exactly: a mask pixel centre maps to the centre of the level-0 block it summarises
    mask = mask_layer.metadata["deeppt_mask"]
    dx, dy = mask.downsample_xy
    y0, x0 = slide_layer.world_to_data(mask_layer.data_to_world((3, 5)))
    assert x0 == pytest.approx(5 * dx + (dx - 1) / 2)
    assert y0 == pytest.approx(3 * dy + (dy - 1) / 2)


def test_tile_raster_pixels_sit_on_their_tiles(qtbot, viewer_with_slide):
    viewer, slide_layer = viewer_with_slide
    _detected(qtbot, viewer)
    tiles_layer = viewer.layers["small tiles"]
    grid = tiles_layer.metadata["deeppt_grid"]
    for i in range(0, len(grid), 7):
        r, c = grid.rowcol[i]
        assert tiles_layer.data[r, c] in (1, 2)
        y0, x0 = slide_layer.world_to_data(tiles_layer.data_to_world((r, c)))
        x, y = grid.xy[i]
        assert x0 == pytest.approx(x + (grid.size_level0 - 1) / 2)
        assert y0 == pytest.approx(y + (grid.size_level0 - 1) / 2)


def test_cancel_stops_within_a_step_and_changes_nothing(qtbot, viewer_with_slide, monkeypatch):
    import napari_deeppt.tiles as tiles_module

    def slow_edges(tile, magnitude=15.0):
        time.sleep(0.05)
        return 1.0

    monkeypatch.setattr(tiles_module, "sobel_edge_fraction", slow_edges)
    viewer, _ = viewer_with_slide
    _, widget = viewer.window.add_plugin_dock_widget("napari-deeppt", "Tissue & tiles")
    _small_tiles(widget)
    widget.edge_filter.value = True
    seen = []
    job = widget.run()
    job.worker.yielded.connect(lambda event: seen.append(event))
    qtbot.waitUntil(
        lambda: any(m == "Sobel edge filter" and d > 1 for d, _, m in seen), timeout=30_000
    )
    started = time.perf_counter()
    widget.cancel_button.clicked.emit()
    _wait(qtbot, widget, timeout=10_000)
    assert time.perf_counter() - started < 5
    assert widget.status.value.startswith("cancelled")
    assert [lyr.name for lyr in viewer.layers] == ["small"]


def test_missing_mpp_reports_and_override_fixes(qtbot, make_napari_viewer, no_mpp_slide):
    viewer = make_napari_viewer()
    viewer.open(str(no_mpp_slide.path), plugin="napari-deeppt")
    _, widget = viewer.window.add_plugin_dock_widget("napari-deeppt", "Tissue & tiles")
    widget.run()
    _wait(qtbot, widget)
    assert "mpp=" in widget.status.value and len(viewer.layers) == 1
    widget.slide_mpp.value = 0.5
    _small_tiles(widget)
    widget.run()
    _wait(qtbot, widget)
    assert "tiles kept" in widget.status.value


def test_preview_normalisation_opens_beside_the_canvas_and_keeps_the_world_in_um(
    qtbot, viewer_with_slide
):
    """The preview is a window of its own: no pixel-unit layer, Home still frames the slide."""
    viewer, _ = viewer_with_slide
    widget = _detected(qtbot, viewer)
    names = [layer.name for layer in viewer.layers]
    widget.preview_n.value = 4
    widget.preview()
    _wait(qtbot, widget)
    assert [layer.name for layer in viewer.layers] == names  # nothing added to the canvas
    assert all(layer.units == ("micrometer", "micrometer") for layer in viewer.layers)
    window = widget.preview_window
    assert window.dialog.isVisible() and "macenko" in window.dialog.windowTitle()
    assert window.raw_label.text() == "raw" and "macenko" in window.normalised_label.text()
    mosaic = window.mosaic
    assert mosaic.shape == (2 * 192 + 8, 4 * 192 + 3 * 8, 3)  # four tiles, gaps between
    assert (mosaic[192:200] == 255).all()  # the gap between the raw and normalised rows
    top, bottom = mosaic[:192], mosaic[200:]
    assert np.abs(top.astype(int) - bottom.astype(int)).mean() > 1  # normalisation did work
    assert widget.progress.value == widget.progress.max  # not stuck part-way
    widget.preview_method.value = "reinhard"
    widget.preview()  # the same window shows the next preview
    _wait(qtbot, widget)
    assert widget.preview_window is window and "reinhard" in window.dialog.windowTitle()
    widget.preview_n.value = 16  # the most tiles: the window still fits the screen
    widget.preview()
    _wait(qtbot, widget)
    screen = window.dialog.screen().availableGeometry()
    assert window.dialog.sizeHint().width() <= screen.width()


def test_console_call_with_a_layer_adds_the_layers(viewer_with_slide):
    viewer, layer = viewer_with_slide
    with pytest.raises(TypeError, match="napari's console"):  # the core takes slides, not layers
        napari_deeppt.detect_tissue(layer)
    assert "small tissue" not in viewer.layers
    mask = console.detect_tissue(layer)
    assert viewer.layers["small tissue"].metadata["deeppt_mask"] is mask
    grid = console.make_tile_grid(layer, mask, tile_px=128)
    assert viewer.layers["small tiles"].metadata["n_tiles"] == len(grid)


def test_the_dock_says_the_pixel_size_and_where_it_came_from(
    make_napari_viewer, svs_slide, no_mpp_slide
):
    viewer = make_napari_viewer()
    viewer.open(str(svs_slide.path), plugin="napari-deeppt")
    _, widget = viewer.window.add_plugin_dock_widget("napari-deeppt", "Tissue & tiles")
    assert widget.pixel_size.value.startswith("0.5 µm/px (")
    widget.slide_mpp.value = 0.25
    assert widget.pixel_size.value == "0.25 µm/px (override)"
    widget.slide_mpp.value = 0.0
    viewer.open(str(no_mpp_slide.path), plugin="napari-deeppt")
    widget.reset_choices()  # napari does this for docked widgets when layers change
    widget.slide_layer.value = viewer.layers[-1]
    assert "none in the file" in widget.pixel_size.value


@pytest.mark.parametrize("mode", ["keep tissue inside", "drop tissue inside"])
def test_tiles_follow_regions_drawn_on_the_slide(qtbot, viewer_with_slide, svs_slide, mode):
    viewer, slide_layer = viewer_with_slide
    w_um = svs_slide.width * svs_slide.mpp
    h_um = svs_slide.height * svs_slide.mpp
    # a rectangle over the left half and a small ellipse on the right, drawn in world µm
    shapes = viewer.add_shapes(
        [
            np.array([[0, 0], [0, w_um / 2], [h_um, w_um / 2], [h_um, 0]]),
            np.array([[10, w_um - 60], [10, w_um - 10], [60, w_um - 10], [60, w_um - 60]]),
        ],
        shape_type=["rectangle", "ellipse"],
        name="regions",
    )
    from napari_deeppt._napari.layers import shapes_to_regions

    rectangle, ellipse = shapes_to_regions(shapes, slide_layer)
    # world µm → level-0 px: napari centres pixel i at i·mpp; our pixel i covers [i, i + 1)
    np.testing.assert_allclose(rectangle.exterior[:, 0].min(), 0.5)
    np.testing.assert_allclose(rectangle.exterior[:, 0].max(), w_um / 2 / svs_slide.mpp + 0.5)
    np.testing.assert_allclose(rectangle.exterior[:, 1].max(), h_um / svs_slide.mpp + 0.5)
    assert len(ellipse.exterior) == 64
    np.testing.assert_allclose(
        ellipse.exterior.mean(axis=0), [(w_um - 35) / svs_slide.mpp + 0.5, 35 / svs_slide.mpp + 0.5]
    )
    widget = _detected(qtbot, viewer)
    everything = viewer.layers["small tiles"].metadata["deeppt_grid"]
    widget.reset_choices()
    widget.roi_layer.value = shapes
    widget.roi_mode.value = mode
    widget.run()
    _wait(qtbot, widget)
    grid = viewer.layers["small tiles"].metadata["deeppt_grid"]
    assert 0 < len(grid) < len(everything)
    centres_um = grid.centres_um()  # (x, y) µm
    left = centres_um[:, 0] < w_um / 2
    assert left.all() if mode == "keep tissue inside" else not left.any()
    # a shapes layer with only a line is refused with a message, nothing recomputed
    viewer.add_shapes([np.array([[0, 0], [50, 50]])], shape_type="line", name="line")
    widget.reset_choices()
    widget.roi_layer.value = viewer.layers["line"]
    assert widget.run() is None
    assert "no polygon, rectangle or ellipse" in widget.status.value


def test_tiles_recut_from_the_tissue_layer_as_painted(qtbot, viewer_with_slide):
    viewer, _ = viewer_with_slide
    _, widget = viewer.window.add_plugin_dock_widget("napari-deeppt", "Tissue & tiles")
    _small_tiles(widget)
    assert widget.recut() is None and "detect tissue first" in widget.status.value
    widget.run()
    _wait(qtbot, widget)
    before = viewer.layers["small tiles"].metadata["deeppt_grid"]
    tissue = viewer.layers["small tissue"]
    edited = np.asarray(tissue.data).copy()
    half = edited.shape[1] // 2
    edited[:, :half] = 0  # the user erases the left half of the tissue
    tissue.data = edited
    widget.recut()
    _wait(qtbot, widget)
    grid = viewer.layers["small tiles"].metadata["deeppt_grid"]
    assert 0 < len(grid) < len(before)
    mask = tissue.metadata["deeppt_mask"]
    left_edge_x = half * mask.downsample_xy[0]  # level-0 x where the erased half ends
    assert (grid.xy[:, 0] + grid.size_level0 / 2 >= left_edge_x).all()
    np.testing.assert_array_equal(np.asarray(tissue.data), edited)  # the edits stay
    assert "from the edited tissue" in widget.status.value


def test_qupath_round_trip_through_the_dock(qtbot, viewer_with_slide, svs_slide, tmp_path):
    """Export tissue and tiles, import annotations back as regions, tile inside them."""
    import json

    viewer, _ = viewer_with_slide
    widget = _detected(qtbot, viewer)
    everything = viewer.layers["small tiles"].metadata["deeppt_grid"]
    tissue_path, tiles_path = widget.export_geojson(tmp_path)
    assert len(json.loads(tiles_path.read_text())["features"]) == len(everything)
    assert json.loads(tissue_path.read_text())["features"][0]["properties"]["objectType"] == (
        "annotation"
    )
    with pytest.raises(FileExistsError):
        widget.export_geojson(tmp_path)  # a second export never replaces the first
    w, h = svs_slide.width, svs_slide.height
    ring = [[0, 0], [w // 2, 0], [w // 2, h], [0, h], [0, 0]]
    hole = [[10, 10], [50, 10], [50, 50], [10, 50], [10, 10]]
    annotation = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring, hole]},
        "properties": {"classification": {"name": "Tumor"}},
    }
    path = tmp_path / "tumour.geojson"
    path.write_text(json.dumps([annotation]))
    shapes = widget.import_regions(path)
    assert widget.roi_layer.value.name == shapes.name  # the dock sees it through a proxy
    assert "1 hole(s) not shown" in widget.status.value
    assert list(shapes.features["class"]) == ["Tumor"]
    widget.run()
    _wait(qtbot, widget)
    grid = viewer.layers["small tiles"].metadata["deeppt_grid"]
    assert 0 < len(grid) < len(everything)
    assert (grid.xy[:, 0] + grid.size_level0 / 2 < w // 2).all()
    # the imported outline sits on the same level-0 pixels it came from
    (region,) = widget._chosen_regions(widget.roi_layer, viewer.layers["small"])
    np.testing.assert_allclose(region.exterior, np.array(ring[:-1], float), atol=1e-6)


def test_console_detect_and_tile_with_a_shapes_layer_as_roi(viewer_with_slide, svs_slide):
    viewer, slide_layer = viewer_with_slide
    w_um, h_um = svs_slide.width * svs_slide.mpp, svs_slide.height * svs_slide.mpp
    shapes = viewer.add_shapes(
        [np.array([[0, 0], [0, w_um / 2], [h_um, w_um / 2], [h_um, 0]])], shape_type="rectangle"
    )
    _, everything = console.detect_and_tile(slide_layer, tile_px=128)
    _, grid = console.detect_and_tile(slide_layer, tile_px=128, roi=shapes)
    assert 0 < len(grid) < len(everything)
    assert (grid.centres_um()[:, 0] < w_um / 2).all()
    assert viewer.layers["small tiles"].metadata["deeppt_grid"] is grid
    with pytest.raises(TypeError, match="Shapes"):  # the core takes regions, not layers
        napari_deeppt.detect_and_tile(svs_slide.path, tile_px=128, roi=shapes)


def test_tissue_settings_fold_away_and_still_apply(qtbot, viewer_with_slide):
    viewer, _ = viewer_with_slide
    _, widget = viewer.window.add_plugin_dock_widget("napari-deeppt", "Tissue & tiles")
    section = widget.tissue_settings
    assert not section.isExpanded()  # DeepPT defaults: out of the way until wanted
    assert section.isAncestorOf(widget.min_area_um2.native)
    _small_tiles(widget)
    widget.min_area_um2.value = 1e9  # no piece of tissue is that large
    widget.run()
    _wait(qtbot, widget)
    assert "no tissue found" in widget.status.value


def test_export_dialog_writes_in_a_worker(qtbot, viewer_with_slide, tmp_path, monkeypatch):
    from qtpy.QtWidgets import QFileDialog

    viewer, _ = viewer_with_slide
    widget = _detected(qtbot, viewer)
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(tmp_path))
    widget._export_dialog()
    _wait(qtbot, widget)
    assert widget.status.value == "wrote small.tissue.geojson, small.tiles.geojson"
    widget._export_dialog()  # the same folder again: refused, nothing replaced
    _wait(qtbot, widget)
    assert "small.tissue.geojson: already exists" in widget.status.value


def test_dock_fields_carry_the_cores_defaults_and_help(make_napari_viewer):
    """The dock's tissue and tile fields are made from TissueParams / TileGridParams."""
    from napari_deeppt.params import field_doc
    from napari_deeppt.tiles import TileGridParams
    from napari_deeppt.tissue import TissueParams

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-deeppt", "Tissue & tiles")
    tissue, tiles = TissueParams(), TileGridParams()
    assert widget.mask_mpp.value == tissue.mpp
    assert widget.min_area_um2.value == tissue.min_area_um2
    assert widget.exclude_pen.value is tissue.exclude_pen
    assert widget.tile_px.value == tiles.tile_px and widget.tile_mpp.value == tiles.mpp
    assert widget.min_tissue.value == tiles.min_tissue
    assert field_doc(TissueParams, "min_area_um2") in widget.min_area_um2.tooltip


def test_tiles_stand_apart_from_each_other_and_from_the_tissue(qtbot, viewer_with_slide):
    """Neighbouring tiles get different labels, drawn in blues the tissue layer never uses."""
    viewer, _ = viewer_with_slide
    _detected(qtbot, viewer)
    tiles, tissue = viewer.layers["small tiles"], viewer.layers["small tissue"]
    grid = tiles.metadata["deeppt_grid"]
    cells = {(int(r), int(c)) for r, c in grid.rowcol}
    pairs = [((r, c), (r, c + 1)) for r, c in cells if (r, c + 1) in cells]
    assert pairs and all(tiles.data[a] != tiles.data[b] for a, b in pairs)
    blues = [tuple(np.round(tiles.colormap.map(v), 3)) for v in (1, 2)]
    assert all(b[2] > max(b[0], b[1]) for b in blues)  # blue dominates
    tissue_colours = {tuple(np.round(tissue.colormap.map(v), 3)) for v in np.unique(tissue.data)}
    assert not set(blues) & tissue_colours
