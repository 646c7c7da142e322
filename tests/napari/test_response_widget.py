"""The "Treatment response" dock scores the open slide against its cohort."""

from __future__ import annotations

import numpy as np
import pandas as pd

from napari_deeppt._napari.layers import legend_overlay, show_expression
from napari_deeppt.prediction import Prediction
from napari_deeppt.tiles import TileGrid, TileGridParams


def fake_prediction(
    values: dict[str, float],
    tiles: np.ndarray | None = None,
    rowcol: np.ndarray | None = None,
    grid_shape: tuple[int, int] = (1, 1),
) -> Prediction:
    """A prediction of 512 px tiles at ``rowcol`` (one tile at (0, 0) by default)."""
    rowcol = np.array([[0, 0]]) if rowcol is None else np.asarray(rowcol)
    tiles = np.array([list(values.values())], np.float32) if tiles is None else tiles
    n = len(rowcol)
    grid = TileGrid(
        rowcol[:, ::-1] * 512,
        rowcol,
        np.ones(n, np.float32),
        np.full(n, np.nan, np.float32),
        grid_shape,
        512.0,
        512.0,
        TileGridParams(),
        (512 * grid_shape[1], 512 * grid_shape[0]),
        0.5,
        "case.svs",
    )
    return Prediction(pd.Series(values), tiles, grid, list(values), "log2p1", slide_name="case.svs")


def _dock(viewer):
    """The dock as napari builds it: it gets a proxy of the viewer, not the viewer."""
    _, widget = viewer.window.add_plugin_dock_widget("napari-deeppt", "Treatment response")
    return widget


def _cohort_files(folder, partners=None):
    """cohort.csv (five samples of A and B) and partners.csv (drug X: A SL, B SR)."""
    cohort = pd.DataFrame(
        {"A": [2, 3, 4, 5, 6], "B": [6, 5, 4, 3, 2]}, index=[f"s{i}" for i in range(5)], dtype=float
    )
    cohort.to_csv(folder / "cohort.csv")
    partners = partners or {"drug": ["X", "X"], "partner": ["A", "B"], "type": ["SL", "SR"]}
    pd.DataFrame(partners).to_csv(folder / "partners.csv", index=False)
    return folder / "cohort.csv", folder / "partners.csv"


def test_scores_the_open_slide_with_its_cohort(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    cohort = pd.DataFrame(
        {"A": [2, 3, 4, 5, 6], "B": [6, 5, 4, 3, 2]}, index=[f"s{i}" for i in range(5)], dtype=float
    )
    cohort.to_csv(tmp_path / "cohort.csv")
    pd.DataFrame(
        {"drug": ["X", "X", "Y"], "partner": ["A", "B", "MISSING"], "type": ["SL", "SR", "SL"]}
    ).to_csv(tmp_path / "partners.csv", index=False)
    layer = show_expression(viewer, fake_prediction({"A": 1.0, "B": 7.0}), "A", "case")
    widget = _dock(viewer)
    widget.expression_layer.value = layer
    widget.cohort.value = tmp_path / "cohort.csv"
    widget.partners.value = tmp_path / "partners.csv"
    result = widget.run()
    # case: A = 1 is the cohort's lowest (inactive SL partner), B = 7 the highest (active SR)
    assert result.scores.loc["case.svs", "X"] == 1.0
    table = widget.table.value
    assert table["data"][0][:3] == ["X", 1.0, "yes"]
    assert "MISSING" in table["data"][1][4]
    assert "1 predicted response(s)" in widget.status.value


def test_needs_a_cohort(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    layer = show_expression(viewer, fake_prediction({"A": 1.0}), "A", "case")
    widget = _dock(viewer)
    widget.expression_layer.value = layer
    assert widget.run() is None and "cohort" in widget.status.value


def test_drug_tile_map_sits_on_the_tiles_it_scores(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    cohort = pd.DataFrame(
        {"A": [2, 3, 4, 5, 6], "B": [6, 5, 4, 3, 2]}, index=[f"s{i}" for i in range(5)], dtype=float
    )  # 33rd percentiles: A 3.32, B 3.32
    cohort.to_csv(tmp_path / "cohort.csv")
    pd.DataFrame({"drug": ["X", "X"], "partner": ["A", "B"], "type": ["SL", "SR"]}).to_csv(
        tmp_path / "partners.csv", index=False
    )
    # three tiles of a 2 × 2 grid: (0, 0) responds (A low, B high), (0, 1) does not
    # (A high, B low), (1, 1) half (both high); (1, 0) holds no tile
    tiles = np.array([[1.0, 9.0], [9.0, 1.0], [9.0, 9.0]], np.float32)
    prediction = fake_prediction(
        dict(zip(["A", "B"], tiles.mean(0), strict=True)),
        tiles,
        rowcol=np.array([[0, 0], [0, 1], [1, 1]]),
        grid_shape=(2, 2),
    )
    expression = show_expression(viewer, prediction, "A", "case")
    widget = _dock(viewer)
    widget.expression_layer.value = expression
    widget.cohort.value = tmp_path / "cohort.csv"
    widget.partners.value = tmp_path / "partners.csv"
    assert widget.show_map("X") is None and "score the drugs first" in widget.status.value
    widget.run()
    assert widget.map_drug.value == "X" and widget.map_button.enabled
    layer = widget.show_map()
    assert layer.name == "case X response" and layer.metadata["drug"] == "X"
    assert widget.expression_layer.value.name == "case A"  # still the gene map, not the drug's
    # one legend: the response map's colour bar, titled with the drug and what a value is
    assert layer.colorbar.visible and not expression.colorbar.visible
    assert legend_overlay(viewer).text == "X response score (0-1)"
    status = layer.get_status(layer.data_to_world((0, 0)), world=True)
    assert status["value"] == "X 1 score"
    data = np.asarray(layer.data)
    np.testing.assert_allclose(data[0, 0], 1.0)
    np.testing.assert_allclose(data[0, 1], 0.0)
    np.testing.assert_allclose(data[1, 1], 0.5)
    assert np.isnan(data[1, 0])
    np.testing.assert_allclose(layer.scale, expression.scale)  # on the same tiles
    np.testing.assert_allclose(layer.translate, expression.translate)
    assert "33% of tiles" in widget.status.value  # one of three at ≥ 0.54


def test_the_dock_picks_the_expression_layer_not_the_slide(make_napari_viewer, svs_slide):
    """Built as napari does, the dock's picker defaults to (and follows) the expression map."""
    viewer = make_napari_viewer()
    viewer.open(str(svs_slide.path), plugin="napari-deeppt")
    _, widget = viewer.window.add_plugin_dock_widget("napari-deeppt", "Treatment response")
    show_expression(viewer, fake_prediction({"A": 1.0, "B": 7.0}), "A", "case")
    assert widget.expression_layer.value.name == "case A"


def test_long_messages_wrap_and_leave_the_canvas_its_width(
    qtbot, make_napari_viewer, tmp_path, error_notifications
):
    """A long error (a deep path) or summary wraps in the dock; the canvas keeps its width."""
    viewer = make_napari_viewer(show=True)
    dock, widget = viewer.window.add_plugin_dock_widget("napari-deeppt", "Treatment response")
    widget.expression_layer.value = show_expression(
        viewer, fake_prediction({"A": 1.0, "B": 7.0}), "A", "case"
    )
    canvas = viewer.window._qt_viewer.canvas.native
    qtbot.wait(50)  # (the layer's controls widen the left dock)
    dock_width, canvas_width = dock.width(), canvas.width()
    assert dock_width < 500 and canvas_width > 300
    cohort, partners = _cohort_files(
        tmp_path,
        {"drug": ["X", "X", "Y"], "partner": ["A", "B", "NOPE"], "type": ["SL", "SR", "SL"]},
    )
    widget.cohort.value = cohort
    deep = tmp_path.joinpath(
        "partner_tables_of_the_neoadjuvant_breast_cancer_cohort_from_the_second_hospital",
        "interaction_partners_curated_by_the_pathology_department_version_2024_final",
    )
    widget.partners.value = deep / "synthetic_lethal_and_rescue_partners_of_every_drug.csv"

    def assert_fits():
        qtbot.wait(50)
        assert dock.width() < 500, widget.status.value
        assert canvas.width() >= 0.9 * canvas_width, widget.status.value

    assert widget.run() is None
    assert widget.status.value.startswith("error: ") and len(widget.status.value) > 300
    assert error_notifications == [widget.status.value.removeprefix("error: ")]
    assert_fits()
    widget.partners.value = partners
    assert widget.run() is not None and "without usable partners" in widget.status.value
    assert_fits()
    assert widget.show_map("X") is not None and "exploratory" in widget.status.value
    assert_fits()
    assert len(error_notifications) == 1


def test_every_field_says_what_it_is(make_napari_viewer):
    widget = _dock(make_napari_viewer())
    fields = [
        widget.expression_layer,
        widget.cohort,
        widget.partners,
        widget.quantile,
        widget.threshold,
        widget.run_button,
        widget.table,
        widget.map_drug,
        widget.map_button,
    ]
    for field in fields:
        assert len(field.tooltip or "") > 40, field.label
    assert "switched off" in widget.quantile.tooltip  # plain words, not only the method's
    assert "responder" in widget.threshold.tooltip
