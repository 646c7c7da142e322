"""Measured spots against a predicted tile map (issue 13, item 6): hand-placed spots on a
hand-made tile grid, with the tile, value and correlation each spot must get."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from napari_deeppt.errors import BundleMismatchError, ExpressionTableError
from napari_deeppt.evaluation import measured_vs_predicted
from napari_deeppt.prediction import Prediction
from napari_deeppt.spatial import SpatialData
from napari_deeppt.spatial.compare import (
    compare_at_spots,
    log2_counts,
    pearson,
    read_measured,
    tiles_under,
)
from napari_deeppt.spatial.visium import POSITION_COLUMNS
from napari_deeppt.tiles import TileGrid, TileGridParams

# A 3 × 2 grid of 100 px tiles; cell (row 1, col 1) is not kept:
#   tile 0 (0, 0)    tile 1 (100, 0)   tile 2 (200, 0)
#   tile 3 (0, 100)  --- no tile ---   tile 4 (200, 100)
CORNERS = np.array([[0, 0], [100, 0], [200, 0], [0, 100], [200, 100]])
VALUES = np.array([1.0, 2.0, 4.0, 8.0, 16.0])


def make_grid(slide_path="", corners=CORNERS, size=100.0, stride=100.0):
    corners = np.asarray(corners, np.int64)
    n = len(corners)
    return TileGrid(
        xy=corners,
        rowcol=np.round(corners[:, ::-1] / stride).astype(np.int64),
        tissue_fraction=np.ones(n, np.float32),
        edge_fraction=np.full(n, np.nan, np.float32),
        grid_shape=(2, 3),
        size_level0=size,
        stride_level0=stride,
        params=TileGridParams(tile_px=64, mpp=1.0),
        slide_dimensions=(300, 200),
        slide_mpp=0.5,
        slide_path=str(slide_path),
    )


def one_line(error_type, match, call, *args, **kwargs):
    with pytest.raises(error_type, match=match) as caught:
        call(*args, **kwargs)
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_a_spot_takes_the_tile_whose_square_holds_its_centre():
    """A spot gets the kept tile whose half-open square [x0, x0 + size) holds its centre, and
    none (-1) on a cell without a kept tile or off the grid."""
    spots = {
        (50, 50): 0,
        (100, 0): 1,  # a left/top edge belongs to the tile
        (99.999, 99.999): 0,  # a right/bottom edge does not
        (299.9, 99.9): 2,
        (200, 100): 4,  # the corner shared by tiles 1, 2, 4 and the empty cell
        (150, 150): -1,  # the cell without a kept tile
        (100, 150): -1,  # the empty cell's left edge (tile 3 ends before it)
        (300, 50): -1,  # past the last column
        (-0.1, 10): -1,
    }
    x, y = np.array(list(spots), float).T
    np.testing.assert_array_equal(tiles_under(CORNERS, 100.0, x, y), list(spots.values()))


def test_overlapping_tiles_give_the_nearest_centre():
    """Where tiles overlap (stride below their size) a spot takes the tile whose centre is
    nearest, never an arbitrary one."""
    corners = np.array([[0, 0], [50, 0]])  # 100 px tiles every 50 px: centres x = 50, 100
    got = tiles_under(corners, 100.0, [60, 90, 140, 20], [50, 50, 50, 50])
    np.testing.assert_array_equal(got, [0, 1, 1, 0])


def test_no_tiles_or_no_spots_give_empty_answers():
    """An empty grid covers no spot; no spot gives an empty answer."""
    np.testing.assert_array_equal(tiles_under(np.zeros((0, 2)), 100.0, [5.0], [5.0]), [-1])
    assert tiles_under(CORNERS, 100.0, [], []).shape == (0,)


def test_comparison_values_r_and_n_are_the_known_ones():
    """Each spot carries its tile's value (NaN off the map) and R is numpy's corrcoef of
    log2(count + 1) against those values over the covered spots, n counting only them."""
    x = np.array([50, 150, 250, 50, 250, 150])
    y = np.array([50, 50, 50, 150, 150, 150])  # the last spot is on the empty cell
    counts = np.array([0, 3, 7, 31, 10, 1000])
    result = compare_at_spots(CORNERS, 100.0, VALUES, x, y, counts, "G", list("abcdef"))
    np.testing.assert_array_equal(result.tile, [0, 1, 2, 3, 4, -1])
    np.testing.assert_array_equal(result.predicted[:5], VALUES)
    assert np.isnan(result.predicted[5])
    np.testing.assert_allclose(result.measured, np.log2(counts + 1))
    expected = np.corrcoef(np.log2(counts[:5] + 1), VALUES)[0, 1]
    assert result.r == pytest.approx(expected, abs=1e-12)
    assert result.n == 5 and len(result) == 6
    assert result.gene == "G" and result.spot_ids == list("abcdef")


def test_r_is_undefined_not_made_up():
    """R is NaN (never 0 or 1) with fewer than two covered spots or a constant side."""
    assert np.isnan(pearson([1.0, 2.0], [3.0, np.nan])[0])
    assert pearson([1.0, 2.0], [3.0, np.nan])[1] == 1
    assert np.isnan(pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])[0])
    assert pearson([1.0, 2.0, 3.0], [2.0, 4.0, 7.0])[0] == pytest.approx(
        np.corrcoef([1, 2, 3], [2, 4, 7])[0, 1]
    )


def test_negative_or_missing_counts_are_refused():
    """Counts below zero or missing are refused in one line, never log-transformed to NaN."""
    one_line(ExpressionTableError, "negative", log2_counts, [1.0, -2.0], "the counts")
    one_line(ExpressionTableError, "missing", log2_counts, [1.0, np.nan], "the counts")


# -- against a Prediction ---------------------------------------------------------------------
def make_prediction(slide_path, genes=("A", "B")):
    grid = make_grid(slide_path)
    tiles = np.column_stack([VALUES, VALUES[::-1]]).astype(np.float32)
    expression = pd.Series(tiles.mean(axis=0), index=list(genes))
    return Prediction(expression, tiles, grid, list(genes), "log2p1")


def make_measured(slides, genes=("A", "C")):
    n = len(slides)
    spots = pd.DataFrame(
        {
            "slide": [str(s) for s in slides],
            "x": [50.0, 150.0, 250.0, 50.0][:n],
            "y": [50.0, 50.0, 50.0, 150.0][:n],
            "spot_id": [f"s{i}" for i in range(n)],
        }
    )
    counts = pd.DataFrame(
        {g: np.arange(n) * (k + 1) ** 2 for k, g in enumerate(genes)},
        index=pd.Index(spots["spot_id"], name="spot_id"),
    )
    return SpatialData(spots, counts, "spots.csv")


def test_measured_vs_predicted_compares_the_slides_own_spots(tmp_path):
    """Only the spots on the predicted slide are compared, with the gene's column of the
    prediction."""
    slide, other = tmp_path / "a.svs", tmp_path / "b.svs"
    measured = make_measured([slide, other, slide, slide])
    result = measured_vs_predicted(make_prediction(slide), measured, "A")
    assert result.spot_ids == ["s0", "s2", "s3"]
    np.testing.assert_array_equal(result.predicted, VALUES[[0, 2, 3]])
    np.testing.assert_array_equal(result.counts, [0, 2, 3])
    expected = np.corrcoef(np.log2(np.array([0, 2, 3]) + 1), VALUES[[0, 2, 3]])[0, 1]
    assert result.r == pytest.approx(expected)


def test_measured_vs_predicted_refusals(tmp_path):
    """Spots of another slide, a gene not measured and a gene not predicted are refused in
    one line, naming what to do."""
    slide, other = tmp_path / "a.svs", tmp_path / "b.svs"
    prediction = make_prediction(slide)
    message = one_line(
        ExpressionTableError,
        "no spot is on a.svs",
        measured_vs_predicted,
        prediction,
        make_measured([other, other]),
        "A",
    )
    assert "b.svs" in message
    message = one_line(
        ExpressionTableError,
        "gene 'B' is not measured",
        measured_vs_predicted,
        prediction,
        make_measured([slide, slide]),
        "B",
    )
    assert "['A']" in message  # the predicted genes it does measure
    one_line(
        BundleMismatchError,
        "'C' is not predicted",
        measured_vs_predicted,
        prediction,
        make_measured([slide]),
        "C",
    )


# -- reading the spots of one slide -----------------------------------------------------------
def write_table(folder, rows, counts, name="spots.csv"):
    """A spot table and its counts (spots × genes) in ``folder``."""
    table = folder / name
    pd.DataFrame(rows, columns=["slide", "x", "y", "spot_id"]).to_csv(table, index=False)
    counts_path = folder / "counts.csv"
    counts.to_csv(counts_path)
    return table, counts_path


def test_a_spot_table_gives_the_spots_of_the_slide_only(tmp_path, svs_slide):
    """A spot table's rows of other slides are left out (relative paths resolved against the
    table's folder) and the counts are those of the kept spots."""
    image = svs_slide.path
    rows = [
        (str(image), 10, 20, "a"),
        ("elsewhere/other.svs", 30, 40, "b"),  # another slide: left out
        (str(image), 1000, 700, "c"),
    ]
    counts = pd.DataFrame({"G": [1, 2, 3], "H": [4, 5, 6]}, index=["a", "b", "c"])
    table, counts_path = write_table(tmp_path, rows, counts)
    data = read_measured(table, image, counts_path)
    assert list(data.spots["spot_id"]) == ["a", "c"]
    assert set(data.spots["slide"]) == {str(image.resolve())}
    np.testing.assert_array_equal(data.spots[["x", "y"]].to_numpy(), [[10, 20], [1000, 700]])
    np.testing.assert_array_equal(data.counts["G"], [1, 3])
    assert data.spot_diameter_px is None


def test_spot_table_refusals(tmp_path, svs_slide):
    """No counts, no spot of this slide, a spot off the image, counts lacking a spot and an
    unknown kind of file are each refused in one line naming the file."""
    image = svs_slide.path
    counts = pd.DataFrame({"G": [1, 2]}, index=["a", "b"])
    table, counts_path = write_table(tmp_path, [(str(image), 10, 20, "a")], counts)
    one_line(ExpressionTableError, "holds no counts", read_measured, table, image)
    other, _ = write_table(tmp_path, [("x/other.svs", 10, 20, "a")], counts, "other.csv")
    one_line(
        ExpressionTableError,
        r"no spot is on .*small\.svs",
        read_measured,
        other,
        image,
        counts_path,
    )
    off, _ = write_table(tmp_path, [(str(image), 5000, 20, "a")], counts, "off.csv")
    one_line(ExpressionTableError, "lie outside", read_measured, off, image, counts_path)
    rows = [(str(image), 10, 20, "a"), (str(image), 30, 40, "z")]  # z has no counts
    lacking, _ = write_table(tmp_path, rows, counts, "lacking.csv")
    one_line(ExpressionTableError, "have no expression", read_measured, lacking, image, counts_path)
    (tmp_path / "spots.xlsx").write_text("x")
    one_line(
        ExpressionTableError,
        "not a kind of spots file",
        read_measured,
        tmp_path / "spots.xlsx",
        image,
    )
    one_line(
        ExpressionTableError, "no such file", read_measured, tmp_path / "nothing.csv.gz", image
    )


def write_tiny_visium(folder, positions, genes, counts, diameter=None):
    """A Space Ranger outs folder: positions (barcode → x, y) and a genes × barcodes matrix."""
    h5py = pytest.importorskip("h5py")
    import scipy.sparse

    spatial = folder / "spatial"
    spatial.mkdir(parents=True)
    pd.DataFrame(
        [(b, 1, 0, 0, y, x) for b, (x, y) in positions.items()],  # row = y, col = x
        columns=POSITION_COLUMNS,
    ).to_csv(spatial / "tissue_positions.csv", index=False)
    if diameter is not None:
        (spatial / "scalefactors_json.json").write_text(
            json.dumps({"spot_diameter_fullres": diameter})
        )
    csc = scipy.sparse.csc_matrix(np.asarray(counts, dtype=np.int32))
    with h5py.File(folder / "filtered_feature_bc_matrix.h5", "w") as f:
        m = f.create_group("matrix")
        m["barcodes"] = np.array(list(positions), dtype="S")
        m["data"], m["indices"], m["indptr"] = csc.data, csc.indices, csc.indptr
        m["shape"] = np.array(csc.shape, dtype=np.int32)
        m["features/name"] = np.array(genes, dtype="S")
        m["features/feature_type"] = np.array(["Gene Expression"] * len(genes), dtype="S")
    return folder


def test_a_visium_folder_or_a_file_in_it_is_read_as_visium(tmp_path, svs_slide):
    """A Visium outs folder is read with the slide as its image, also when the user picks its
    matrix or a file of spatial/; counts given beside it are refused, not ignored."""
    image = svs_slide.path
    positions = {"AA-1": (100.0, 200.0), "CC-1": (900.0, 400.0)}
    folder = write_tiny_visium(tmp_path / "outs", positions, ["G"], [[3, 5]], diameter=80.0)
    for pick in (
        folder,
        folder / "filtered_feature_bc_matrix.h5",
        folder / "spatial" / "tissue_positions.csv",
    ):
        data = read_measured(pick, image)
        assert list(data.spots["spot_id"]) == ["AA-1", "CC-1"]
        np.testing.assert_array_equal(data.spots[["x", "y"]].to_numpy(), [[100, 200], [900, 400]])
        np.testing.assert_array_equal(data.counts["G"], [3, 5])
        assert data.spot_diameter_px == 80.0
    one_line(
        ExpressionTableError, "holds its own counts", read_measured, folder, image, "counts.csv"
    )
