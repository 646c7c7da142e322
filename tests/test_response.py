"""SELECT-style matching scores with hand-computed answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_deeppt.errors import ExpressionTableError
from napari_deeppt.response import read_partners, response_scores

SAMPLES = [f"s{i}" for i in range(1, 7)]
EXPRESSION = pd.DataFrame(
    {"A": [1, 2, 3, 4, 5, 6], "B": [6, 5, 4, 3, 2, 1], "D": [3, 1, 4, 1, 5, 9]},
    index=SAMPLES,
    dtype=float,
)
# cohort 33rd percentiles (linear): A 2.65, B 2.65, D 2.3 →
# inactive A: s1 s2; B: s5 s6; D: s2 s4
PARTNERS = pd.DataFrame(
    {
        "drug": ["X", "X", "X", "Y", "Z", "W", "W"],
        "partner": ["A", "D", "B", "B", "NOPE", "A", "GONE"],
        "type": ["SL", "sl", "SR", "synthetic rescue", "SL", "SL", "SL"],
    }
)


def test_hand_computed_scores():
    result = response_scores(EXPRESSION, PARTNERS)
    np.testing.assert_allclose(result.sl_score["X"], [0.5, 1, 0, 0.5, 0, 0])
    np.testing.assert_allclose(result.sr_score["X"], [0, 0, 0, 0, 1, 1])
    np.testing.assert_allclose(result.scores["X"], [0.75, 1, 0.5, 0.75, 0, 0])
    assert result.responders["X"].tolist() == [True, True, False, True, False, False]
    np.testing.assert_allclose(result.scores["Y"], [1, 1, 1, 1, 0, 0])  # only SR: 1 − SR
    np.testing.assert_allclose(result.scores["W"], [1, 1, 0, 0, 0, 0])
    assert result.scores["Z"].isna().all() and not result.responders["Z"].any()
    assert result.missing_partners == {"Z": ["NOPE"], "W": ["GONE"]}
    assert len(result.messages) == 1 and result.messages[0].startswith("Z: no score")


def test_threshold_and_quantile_are_settings():
    strict = response_scores(EXPRESSION, PARTNERS, threshold=0.8)
    assert strict.responders["X"].tolist() == [False, True, False, False, False, False]
    lenient = response_scores(EXPRESSION, PARTNERS, quantile=0.5)  # cut-off 3.5 for A
    np.testing.assert_allclose(lenient.sl_score["W"], [1, 1, 1, 0, 0, 0])


def test_genes_as_rows_and_files(tmp_path):
    EXPRESSION.T.to_csv(tmp_path / "expr.csv")
    PARTNERS.to_csv(tmp_path / "partners.csv", index=False)
    result = response_scores(tmp_path / "expr.csv", tmp_path / "partners.csv")
    np.testing.assert_allclose(result.scores.loc[SAMPLES, "X"], [0.75, 1, 0.5, 0.75, 0, 0])
    written = pd.read_csv(result.to_csv(tmp_path / "scores.csv"), index_col=0)
    assert list(written.columns) == ["X", "Y", "Z", "W"]
    long = result.long_table()
    assert set(long.columns) == {"sample", "drug", "score", "sl_score", "sr_score", "responder"}


def test_bad_partner_tables_and_cohorts(tmp_path):
    with pytest.raises(ExpressionTableError, match="unknown interaction type"):
        read_partners(pd.DataFrame({"drug": ["X"], "partner": ["A"], "type": ["maybe"]}))
    with pytest.raises(ExpressionTableError, match=r"lacks column\(s\) \['type'\]"):
        read_partners(pd.DataFrame({"drug": ["X"], "partner": ["A"]}))
    with pytest.raises(ExpressionTableError, match="at least 3"):
        response_scores(EXPRESSION.iloc[:2], PARTNERS)
    with pytest.raises(ExpressionTableError, match="not one sample"):
        response_scores(EXPRESSION.iloc[0], PARTNERS)


def test_response_command(tmp_path, capsys):
    from napari_deeppt.cli import main

    EXPRESSION.to_csv(tmp_path / "expr.csv")
    PARTNERS.to_csv(tmp_path / "partners.csv", index=False)
    args = [
        "response",
        str(tmp_path / "expr.csv"),
        str(tmp_path / "partners.csv"),
        "--out",
        str(tmp_path / "scores.csv"),
    ]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "X: 3 predicted responder(s)" in captured.out
    assert "Z: no score" in captured.err and "GONE" in captured.err
    assert main(args) == 2  # never overwrites


def test_tiles_are_scored_against_the_cohorts_cut_offs():
    """Cohort cut-offs: A 2.65, B 2.65, D 2.3 (as above). Each tile is one 'sample'."""
    from types import SimpleNamespace

    from napari_deeppt.response import tile_response

    tiles = np.array(
        [
            [1.0, 9.0, 1.0],  # A, D inactive (SL 2/2), B active (SR 0) → X: 1
            [9.0, 1.0, 9.0],  # nothing SL inactive, B inactive (SR 1)  → X: 0
            [2.0, 9.0, 9.0],  # A inactive (SL 1/2), B active           → X: 0.75
        ]
    )
    prediction = SimpleNamespace(tile_expression=tiles, genes=["A", "B", "D"], grid=[0, 1, 2])
    result = tile_response(prediction, EXPRESSION, PARTNERS)
    np.testing.assert_allclose(result.scores["X"], [1.0, 0.0, 0.75])
    assert result.responders["X"].tolist() == [True, False, True]
    # the tiles' own spread would give other answers: the cohort defines "inactive"
    alone = response_scores(pd.DataFrame(tiles, columns=["A", "B", "D"]), PARTNERS)
    assert not np.allclose(alone.scores["X"], result.scores["X"])
    other_model = EXPRESSION.drop(columns=["D"])
    with pytest.raises(ExpressionTableError, match=r"not in the cohort"):
        tile_response(prediction, other_model, PARTNERS)


def test_results_read_in_a_line():
    text = repr(response_scores(EXPRESSION, PARTNERS))  # responders: X 3, Y 4, W 2
    assert text == (
        "ResponseResult(6 samples × 4 drugs, 9 predicted responses at score ≥ 0.54, "
        "inactive below quantile 0.33)"
    )
