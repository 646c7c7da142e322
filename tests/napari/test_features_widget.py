"""The "Extract features" dock: runs in a worker, adds an aligned embedding layer, cancels."""

from __future__ import annotations

import numpy as np
import pytest

from napari_deeppt._napari import console


@pytest.fixture
def viewer_with_tiles(make_napari_viewer, svs_slide, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_DEEPPT_CACHE", str(tmp_path / "cache"))
    viewer = make_napari_viewer()
    layer = viewer.open(str(svs_slide.path), plugin="napari-deeppt")[0]
    console.make_tile_grid(layer, tile_px=64, mpp=2.0)  # the console call adds the layer
    return viewer, layer


def _widget(viewer):
    """The dock as napari builds it (a proxy viewer)."""
    _, widget = viewer.window.add_plugin_dock_widget("napari-deeppt", "Extract features")
    widget.tiles_layer.value = viewer.layers["small tiles"]
    widget.extractor.value = "resnet18"
    widget.random_weights.value = True
    widget.stain.value = "none"
    return widget


def test_extract_adds_embedding_aligned_with_tiles(qtbot, viewer_with_tiles):
    viewer, slide_layer = viewer_with_tiles
    widget = _widget(viewer)
    widget.run()
    qtbot.waitUntil(lambda: widget._job is None, timeout=60_000)
    layer = viewer.layers["small feature embedding"]
    features = layer.metadata["deeppt_features"]
    grid = features.grid
    assert "tiles × 512 features" in widget.status.value
    assert layer.data.shape == (*grid.grid_shape, 4)
    r, c = grid.rowcol[0]
    assert layer.data[r, c, 3] == 1.0  # kept tile: opaque
    y0, x0 = slide_layer.world_to_data(layer.data_to_world((r, c)))
    x, y = grid.xy[0]
    assert x0 == pytest.approx(x + (grid.size_level0 - 1) / 2)
    assert y0 == pytest.approx(y + (grid.size_level0 - 1) / 2)
    assert np.isnan(features.embedding_rgb()).any()  # glass cells transparent
    widget.run()  # second run: from the cache, layer replaced
    qtbot.waitUntil(lambda: widget._job is None, timeout=60_000)
    assert "from the cache" in widget.status.value
    assert sum(lyr.name == "small feature embedding" for lyr in viewer.layers) == 1
    assert all(lyr.units == ("micrometer", "micrometer") for lyr in viewer.layers)


def test_cancel_within_one_batch(qtbot, viewer_with_tiles):
    viewer, _ = viewer_with_tiles
    widget = _widget(viewer)
    widget.batch_size.value = 2
    seen = []
    job = widget.run()
    job.worker.yielded.connect(lambda event: seen.append(event[0]))
    qtbot.waitUntil(lambda: any(done >= 2 for done in seen), timeout=60_000)
    widget.cancel_button.clicked.emit()
    qtbot.waitUntil(lambda: widget._job is None, timeout=30_000)
    grid = viewer.layers["small tiles"].metadata["deeppt_grid"]
    assert widget.status.value.startswith("cancelled")
    assert max(seen) < len(grid)
    assert "small feature embedding" not in viewer.layers


def test_requires_a_tiles_layer(make_napari_viewer, svs_slide):
    viewer = make_napari_viewer()
    viewer.open(str(svs_slide.path), plugin="napari-deeppt")
    _, widget = viewer.window.add_plugin_dock_widget("napari-deeppt", "Extract features")
    assert widget.run() is None
    assert "Tissue & tiles" in widget.status.value


def test_the_dock_picks_the_tiles_layer_not_the_tissue(make_napari_viewer, svs_slide):
    """Built as napari does, the tiles picker defaults to (and follows) the '<slide> tiles'."""
    from napari_deeppt._napari import console

    viewer = make_napari_viewer()
    layer = viewer.open(str(svs_slide.path), plugin="napari-deeppt")[0]
    _, widget = viewer.window.add_plugin_dock_widget("napari-deeppt", "Extract features")
    console.detect_and_tile(layer, tile_px=64, mpp=2.0)  # adds 'small tissue', 'small tiles'
    assert widget.tiles_layer.value.name == "small tiles"


def test_a_mistyped_weights_path_is_an_error_not_the_default_weights(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-deeppt", "Extract features")
    widget.weights.value = tmp_path / "resnet50-typo.pth"
    try:
        widget._chosen_file(widget.weights)
    except ValueError as exc:
        assert "resnet50-typo.pth: no such file" in str(exc)
    else:
        raise AssertionError("a missing weights file was taken for 'no weights file'")


def test_the_dock_uses_a_model_compiled_earlier_but_never_compiles(qtbot, viewer_with_tiles):
    """A package built outside napari (CLI, console) is loaded by the dock; without one the
    dock runs eagerly and builds nothing (compiling inside napari clashes with Mesa)."""
    import shutil

    import torch

    from napari_deeppt.features import compiled
    from napari_deeppt.features.extractors import load_extractor
    from napari_deeppt.io import cache_root

    viewer, _ = viewer_with_tiles
    widget = _widget(viewer)
    compiled._PREPARED.clear()
    widget.run()
    qtbot.waitUntil(lambda: widget._job is None, timeout=60_000)
    assert not compiled.compiled_dir().exists()  # nothing built inside napari
    loaded = load_extractor("resnet18", "random")
    key = ("resnet18", loaded.weights_hash)
    package = compiled.prepare_model(loaded.model, torch.device("cpu"), True, 0, key, batch=32)
    assert isinstance(package, compiled.CompiledPackage)
    compiled._PREPARED.clear()  # as in a new napari session
    shutil.rmtree(cache_root() / "features")  # computed again, not read from the cache
    widget.run()
    qtbot.waitUntil(lambda: widget._job is None, timeout=120_000)
    assert "tiles × 512 features" in widget.status.value
    used = list(compiled._PREPARED.values())
    assert len(used) == 1 and isinstance(used[0], compiled.CompiledPackage)
    compiled._PREPARED.clear()


def test_the_precision_choice_reaches_the_extraction(qtbot, viewer_with_tiles):
    """int8 picked in the dock runs the int8 model (its own cache entry), fp32 stays default."""
    from napari_deeppt.features import quantized

    viewer, _ = viewer_with_tiles
    widget = _widget(viewer)
    assert str(widget.precision.value) == "float32"
    widget.run()
    qtbot.waitUntil(lambda: widget._job is None, timeout=60_000)
    fp32 = viewer.layers["small feature embedding"].metadata["deeppt_features"]
    assert fp32.provenance["precision"] == "float32" and "int8" not in widget.status.value
    quantized._KEPT.clear()
    widget.precision.value = "int8"
    messages = []
    job = widget.run()
    job.worker.yielded.connect(lambda event: messages.append(event[2]))
    qtbot.waitUntil(lambda: widget._job is None, timeout=120_000)
    assert "making the int8 model (once for these weights)" in messages  # not a silent wait
    assert widget.status.value.endswith("; int8"), widget.status.value
    assert "from the cache" not in widget.status.value
    int8 = viewer.layers["small feature embedding"].metadata["deeppt_features"]
    assert int8.provenance["precision"] == "int8"
    assert not np.array_equal(int8.features, fp32.features)
    quantized._KEPT.clear()


def test_bfloat16_in_the_dock_runs_where_native_and_says_why_not_elsewhere(
    qtbot, viewer_with_tiles, monkeypatch
):
    """bfloat16 picked in the dock: a one-line reason on a CPU without it, the bfloat16
    model (said in the status) where the CPU has it."""
    from napari_deeppt.features import bfloat16

    viewer, _ = viewer_with_tiles
    widget = _widget(viewer)
    assert "bfloat16" in [str(choice) for choice in widget.precision.choices]
    widget.precision.value = "bfloat16"
    monkeypatch.setattr(bfloat16, "native_bfloat16", lambda device: False)
    widget.run()
    qtbot.waitUntil(lambda: widget._job is None, timeout=60_000)
    assert "no native bfloat16" in widget.status.value, widget.status.value
    assert "\n" not in widget.status.value.strip()
    monkeypatch.setattr(bfloat16, "native_bfloat16", lambda device: True)
    widget.run()
    qtbot.waitUntil(lambda: widget._job is None, timeout=60_000)
    assert widget.status.value.endswith("; bfloat16"), widget.status.value
    result = viewer.layers["small feature embedding"].metadata["deeppt_features"]
    assert result.provenance["precision"] == "bfloat16"
    where = f"\u00a0s on {result.provenance['device']}; weights random-0"  # says where it ran
    assert where in widget.status.value, widget.status.value
