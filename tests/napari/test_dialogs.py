"""Issue 12, item 8: file dialogs open beside the slide, named after it, with file filters."""

from __future__ import annotations

from types import SimpleNamespace

import pytest


@pytest.fixture
def viewer(make_napari_viewer, svs_slide):
    viewer = make_napari_viewer()
    viewer.open(str(svs_slide.path), plugin="napari-deeppt")
    return viewer


def _capture(monkeypatch, name, answer):
    from qtpy.QtWidgets import QFileDialog

    calls = []

    def dialog(*args, **kwargs):
        calls.append(args)
        return answer

    monkeypatch.setattr(QFileDialog, name, dialog)
    return calls


@pytest.mark.parametrize(
    ("kind", "suffix", "pattern"),
    [
        ("csv", ".expression.csv", "(*.csv)"),
        ("h5ad", ".tiles.h5ad", "(*.h5ad)"),
        ("geojson", ".tiles.geojson", "*.geojson"),
    ],
)
def test_predict_exports_offer_a_file_beside_the_slide(
    viewer, svs_slide, monkeypatch, kind, suffix, pattern
):
    _, widget = viewer.window.add_plugin_dock_widget("napari-deeppt", "Predict expression")
    grid = SimpleNamespace(slide_path=str(svs_slide.path))
    widget.prediction = SimpleNamespace(grid=grid, genes=[])
    widget._slide_name = "small"
    calls = _capture(monkeypatch, "getSaveFileName", ("", ""))  # the user cancels
    widget._export(kind)
    (_, _, start, filters), *_ = calls
    assert start == str(svs_slide.path.parent / f"small{suffix}")
    assert pattern in filters
    assert widget._job is None  # cancelled: nothing written, nothing started


def test_tissue_dialogs_open_in_the_slides_folder(viewer, svs_slide, monkeypatch):
    _, widget = viewer.window.add_plugin_dock_widget("napari-deeppt", "Tissue & tiles")
    folders = _capture(monkeypatch, "getExistingDirectory", "")
    widget._export_dialog()
    assert folders[0][2] == str(svs_slide.path.parent)
    files = _capture(monkeypatch, "getOpenFileName", ("", ""))
    widget._import_regions_dialog()
    (_, _, start, filters), *_ = files
    assert start == str(svs_slide.path.parent) and "*.geojson" in filters
