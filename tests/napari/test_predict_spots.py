"""Issue 13, item 6: measured spots beside the predicted map in the "Predict expression" dock.

Spots are written at known places on the synthetic slide's predicted tiles, with known counts:
the Points layer must sit on those tiles, be coloured by the shown gene's measured
log2(count + 1) on the map's colour scale, follow the gene picker, and the dock must give
numpy's correlation of exactly those values.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from napari.utils.colormaps import ensure_colormap
from napari.utils.status_messages import format_float

from napari_deeppt.samples import demo_bundle
from napari_deeppt.spatial.visium import POSITION_COLUMNS

# Where each spot sits in its tile, in tile sides from the tile's centre (x, y)
OFFSETS = [(0.0, 0.0), (0.4, -0.3), (-0.45, 0.45), (0.2, 0.1)]
N_TILES = 12


@pytest.fixture(scope="module")
def bundle_path():
    return demo_bundle(progress=False)  # 64 px tiles at 1 µm/px: 128 level-0 px on "small"


@pytest.fixture
def predicted(qtbot, make_napari_viewer, svs_slide, bundle_path):
    """A viewer with the slide, and the Predict dock (built as napari builds it) after a run."""
    viewer = make_napari_viewer()
    viewer.open(str(svs_slide.path), plugin="napari-deeppt")
    _, widget = viewer.window.add_plugin_dock_widget("napari-deeppt", "Predict expression")
    widget.bundle.value = bundle_path
    widget.run()
    qtbot.waitUntil(lambda: widget._job is None, timeout=120_000)
    assert widget.prediction is not None
    return viewer, widget


def uncovered_point(grid):
    """The level-0 centre of a grid cell without a kept tile."""
    raster = grid.raster()
    row, col = np.argwhere(raster == 0)[0]
    origin = grid.xy[0] - grid.rowcol[0][::-1] * grid.stride_level0
    return origin + (np.array([col, row]) + 0.5) * grid.stride_level0


def spot_layout(prediction):
    """Spots on ``N_TILES`` known tiles (at known offsets) and one off every tile: their
    level-0 centres, ids and the tile under each (-1 for none)."""
    grid = prediction.grid
    tiles = np.linspace(0, len(grid) - 1, N_TILES).astype(int)
    size = grid.size_level0
    centres = [
        grid.xy[t] + size / 2 + np.array(OFFSETS[k % len(OFFSETS)]) * size
        for k, t in enumerate(tiles)
    ]
    centres.append(uncovered_point(grid))
    ids = [f"spot{k}" for k in range(len(centres))]
    return np.array(centres), ids, np.append(tiles, -1)


def known_counts(ids, genes, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {gene: rng.integers(0, 60, len(ids)) for gene in genes}, index=pd.Index(ids)
    )


def write_spot_table(folder, slide_path, centres, ids, counts):
    """A spot table CSV (with a row of another slide, left out) and its counts CSV."""
    rows = [(str(slide_path), x, y, i) for (x, y), i in zip(centres, ids)]
    rows.append(("other.svs", 10.0, 10.0, "elsewhere"))
    table = folder / "spots.csv"
    pd.DataFrame(rows, columns=["slide", "x", "y", "spot_id"]).to_csv(table, index=False)
    counts_path = folder / "counts.csv"
    counts.to_csv(counts_path)
    return table, counts_path


def expected_r(prediction, gene, counts, tiles):
    covered = tiles >= 0
    measured = np.log2(counts[gene].to_numpy(float) + 1)[covered]
    values = prediction.tile_expression[tiles[covered], prediction.gene_index(gene)]
    return float(np.corrcoef(measured, values)[0, 1]), int(covered.sum())


def show_spots(qtbot, widget, spots, counts=None):
    widget.spots.spots_file.value = spots
    widget.spots.counts_file.line_edit.value = str(counts or "")  # "" as a user clears it
    job = widget.spots.show()
    if job is not None:
        qtbot.waitUntil(lambda: widget._job is None, timeout=60_000)
    return job


def points_layers(viewer):
    return [layer for layer in viewer.layers if layer._type_string == "points"]


def assert_coloured_by(layer, measured, limits):
    low, high = limits
    expected = ensure_colormap("viridis").map(np.clip((measured - low) / (high - low), 0, 1))
    np.testing.assert_allclose(layer.face_color, expected, atol=1e-6)


def test_spots_lie_on_their_tiles_coloured_by_the_gene_with_the_known_r(
    qtbot, predicted, svs_slide, tmp_path
):
    """One Points layer in µm puts each spot on the tile it was written on, coloured by the
    shown gene's log2(count + 1) with the map's limits, and the dock gives numpy's R."""
    viewer, widget = predicted
    prediction, gene = widget.prediction, widget.gene.value
    centres, ids, tiles = spot_layout(prediction)
    counts = known_counts(ids, [gene, *(g for g in prediction.genes if g != gene)][:3])
    table, counts_path = write_spot_table(tmp_path, svs_slide.path, centres, ids, counts)
    show_spots(qtbot, widget, table, counts_path)
    layer = viewer.layers[f"small measured {gene}"]
    assert points_layers(viewer) == [layer]
    assert len(layer.data) == len(ids)  # the other slide's row was left out
    # positions: a spot at a tile's centre sits on the map's pixel of that tile; every other
    # within half a tile (in µm) of it
    map_layer = viewer.layers[f"small {gene}"]
    half_um = prediction.grid.size_level0 * prediction.grid.slide_mpp / 2
    for k, tile in enumerate(tiles[:-1]):
        pixel_world = np.asarray(map_layer.data_to_world(tuple(prediction.grid.rowcol[tile])))
        offset = np.array(OFFSETS[k % len(OFFSETS)])[::-1] * 2 * half_um  # (y, x) µm
        np.testing.assert_allclose(layer.data[k], pixel_world + offset, atol=1e-6)
        assert np.all(np.abs(layer.data[k] - pixel_world) < half_um)
    slide_layer = viewer.layers["small"]
    x, y = centres[0]
    np.testing.assert_allclose(
        slide_layer.world_to_data(layer.data_to_world(layer.data[0])), (y - 0.5, x - 0.5)
    )
    # colours and size
    measured = np.log2(counts[gene].to_numpy(float) + 1)
    assert_coloured_by(layer, measured, map_layer.contrast_limits)
    assert layer.size[0] == pytest.approx(55.0)  # a spot table records no diameter
    # the correlation, and hover
    r, n = expected_r(prediction, gene, counts, tiles)
    assert n == N_TILES
    assert widget.status.value == (
        f"{gene}: measured vs predicted R = {r:.2f} over {n} spots of this section; "
        f"1 of its {n + 1} spots lie off the map's tiles"
    )
    assert layer.metadata["pearson_r"] == pytest.approx(r)
    assert np.isnan(layer.features["predicted"].iloc[-1])
    status = layer.get_status(layer.data_to_world(layer.data[1]), world=True)
    assert f"measured log2(count+1): {format_float(measured[1])}" in status["coordinates"]
    assert f"spot: {ids[1]}" in status["coordinates"]


def test_switching_the_gene_recolours_and_renames_the_same_layer(
    qtbot, predicted, svs_slide, tmp_path
):
    """The gene picker recolours and renames the one spots layer (never a second), and the
    status gives that gene's R; showing the spots again replaces the layer's content."""
    viewer, widget = predicted
    prediction, first = widget.prediction, widget.gene.value
    other = next(g for g in prediction.genes if g != first)
    centres, ids, tiles = spot_layout(prediction)
    counts = known_counts(ids, [first, other], seed=1)
    table, counts_path = write_spot_table(tmp_path, svs_slide.path, centres, ids, counts)
    show_spots(qtbot, widget, table, counts_path)
    layer = viewer.layers[f"small measured {first}"]
    widget.gene.value = other
    assert points_layers(viewer) == [layer]
    assert layer.name == f"small measured {other}" and layer.metadata["gene"] == other
    measured = np.log2(counts[other].to_numpy(float) + 1)
    assert_coloured_by(layer, measured, viewer.layers[f"small {other}"].contrast_limits)
    r, n = expected_r(prediction, other, counts, tiles)
    assert widget.status.value.startswith(f"{other}: measured vs predicted R = {r:.2f} over {n}")
    # the map's contrast limits changed by hand: the spots follow
    map_layer = viewer.layers[f"small {other}"]
    map_layer.contrast_limits = (float(measured.min()), float(measured.max()))
    assert_coloured_by(layer, measured, map_layer.contrast_limits)
    # shown again from fewer spots: the same layer, refilled
    keep = [0, 1, 2, len(ids) - 1]
    table, counts_path = write_spot_table(
        tmp_path, svs_slide.path, centres[keep], [ids[k] for k in keep], counts.iloc[keep]
    )
    show_spots(qtbot, widget, table, counts_path)
    assert points_layers(viewer) == [layer] and len(layer.data) == 4
    assert list(layer.features["spot"]) == [ids[k] for k in keep]


def test_a_visium_folder_shows_its_spots_at_their_diameter(qtbot, predicted, svs_slide, tmp_path):
    """A Space Ranger outs folder over the slide shows its spots at the recorded diameter in
    µm, with the known R."""
    h5py = pytest.importorskip("h5py")
    import scipy.sparse

    viewer, widget = predicted
    prediction, gene = widget.prediction, widget.gene.value
    centres, ids, tiles = spot_layout(prediction)
    counts = known_counts(ids, [gene, next(g for g in prediction.genes if g != gene)], seed=2)
    outs = tmp_path / "outs"
    (outs / "spatial").mkdir(parents=True)
    pd.DataFrame(
        [(b, 1, 0, 0, y, x) for b, (x, y) in zip(ids, centres)],
        columns=POSITION_COLUMNS,  # pxl_row = y, pxl_col = x
    ).to_csv(outs / "spatial" / "tissue_positions.csv", index=False)
    (outs / "spatial" / "scalefactors_json.json").write_text(
        json.dumps({"spot_diameter_fullres": 100.0})
    )
    csc = scipy.sparse.csc_matrix(counts.to_numpy().T.astype(np.int32))  # genes × barcodes
    with h5py.File(outs / "filtered_feature_bc_matrix.h5", "w") as f:
        m = f.create_group("matrix")
        m["barcodes"] = np.array(ids, dtype="S")
        m["data"], m["indices"], m["indptr"] = csc.data, csc.indices, csc.indptr
        m["shape"] = np.array(csc.shape, dtype=np.int32)
        m["features/name"] = np.array(list(counts.columns), dtype="S")
        m["features/feature_type"] = np.array(["Gene Expression"] * counts.shape[1], dtype="S")
    show_spots(qtbot, widget, outs)
    layer = viewer.layers[f"small measured {gene}"]
    assert layer.size[0] == pytest.approx(100.0 * svs_slide.mpp)  # 100 px at 0.5 µm/px
    r, n = expected_r(prediction, gene, counts, tiles)
    assert widget.status.value.startswith(f"{gene}: measured vs predicted R = {r:.2f} over {n}")


def test_errors_are_one_line_in_the_status_and_the_notifications(
    qtbot, predicted, svs_slide, tmp_path, error_notifications
):
    """A spot table without counts, spots of another slide only and a gene not measured are
    each said in the status and in napari's notifications; no layer is added."""
    viewer, widget = predicted
    prediction, gene = widget.prediction, widget.gene.value
    centres, ids, _ = spot_layout(prediction)
    other_gene = next(g for g in prediction.genes if g != gene)
    counts = known_counts(ids, [other_gene])  # the shown gene is not measured
    table, counts_path = write_spot_table(tmp_path, svs_slide.path, centres, ids, counts)
    show_spots(qtbot, widget, table)
    assert widget.status.value.startswith("error: ") and "holds no counts" in widget.status.value
    elsewhere = tmp_path / "elsewhere.csv"
    pd.DataFrame({"slide": ["other.svs"], "x": [1.0], "y": [1.0], "spot_id": ["a"]}).to_csv(
        elsewhere, index=False
    )
    show_spots(qtbot, widget, elsewhere, counts_path)
    assert "no spot is on" in widget.status.value and "small.svs" in widget.status.value
    show_spots(qtbot, widget, table, counts_path)
    assert f"gene {gene!r} is not measured" in widget.status.value
    assert f"['{other_gene}']" in widget.status.value  # the measured gene to pick instead
    assert points_layers(viewer) == []
    assert len(error_notifications) == 3
    assert all("\n" not in message for message in error_notifications)
    # picking the measured gene shows them
    widget.gene.value = other_gene
    assert [layer.name for layer in points_layers(viewer)] == [f"small measured {other_gene}"]


def test_spots_before_a_prediction_are_refused(make_napari_viewer, svs_slide, error_notifications):
    """Without a predicted map there is nothing to compare with: the dock says to predict."""
    viewer = make_napari_viewer()
    viewer.open(str(svs_slide.path), plugin="napari-deeppt")
    _, widget = viewer.window.add_plugin_dock_widget("napari-deeppt", "Predict expression")
    widget.spots.spots_file.value = svs_slide.path
    assert widget.spots.show() is None
    assert widget.status.value.startswith("error: predict first")
    assert error_notifications and points_layers(viewer) == []
