"""Training never gives a silent wrong answer: a catalogue of failure modes and their guards.

Each test states one guarantee. Slides, spots and expression are synthetic with known truth;
"before any feature work" is checked by making tissue detection and feature extraction fail
the test if they are called, and by an empty feature cache staying empty.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_deeppt.errors import DeepPTError, ExpressionTableError, MissingMppError
from napari_deeppt.io.tables import read_expression, read_spots
from napari_deeppt.model.crossval import cross_validate
from napari_deeppt.model.folds import check_folds, group_folds
from napari_deeppt.model.inputs import select_genes
from napari_deeppt.model.metrics import gene_metrics, section_metrics, validation_r
from napari_deeppt.model.sample_features import spot_grid
from napari_deeppt.model.settings import TrainingSettings
from napari_deeppt.model.training import train
from napari_deeppt.testing import write_synthetic_cohort

FEATURES = {"extractor": "colour-stats", "tile_px": 64, "tile_mpp": 1.0, "stain": None}
QUICK = {"max_epochs": 40, "patience": 10, "lr": 1e-3, "ae_epochs": 3, "latent_dim": 16}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Six 512-px slides at 1 µm/px, one patient each."""
    return write_synthetic_cohort(
        tmp_path_factory.mktemp("rel-cohort"), n_slides=6, n_patients=6, size=512, seed=4
    )


@pytest.fixture
def no_feature_work(monkeypatch):
    """Tissue detection and feature extraction fail the test if anything calls them."""

    def forbidden(*args, **kwargs):
        raise AssertionError("feature work started before the inputs were checked")

    monkeypatch.setattr("napari_deeppt.features.extract_features", forbidden)
    monkeypatch.setattr("napari_deeppt.tiles.detect_and_tile", forbidden)


def _train_2x2(table, expression, out):
    """train() with weight-free features and 2 × 2 folds: fails or finishes in seconds."""
    return train(table, expression, out, progress=False, outer_folds=2, inner_folds=2, **FEATURES)


def _spots(path, rows):
    pd.DataFrame(rows, columns=["spot_id", "slide", "x", "y"]).to_csv(path, index=False)
    return path


def _counts(path, spot_ids, seed=0):
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(
        rng.uniform(1, 50, (len(spot_ids), 2)), index=spot_ids, columns=["G1", "G2"]
    )
    table.to_csv(path)
    return path


def _lattice(slide, n=6, step=48):
    """Spot rows on a small lattice over the middle of ``slide`` (all inside it)."""
    stem = slide.path.stem
    return [
        (f"{stem}_{i}", str(slide.path), 100 + step * (i % n), 100 + step * (i // n))
        for i in range(n * n)
    ]


# -- 1. spots off the slide ------------------------------------------------------------------
def test_spots_whose_centre_is_off_the_slide_are_refused_before_any_feature_work(
    cohort, tmp_path, no_feature_work
):
    """Spots centred outside their slide are named (ids, count, slide, size) before features."""
    slide = cohort.slides[0]
    rows = [
        *_lattice(slide),
        ("far_right", str(slide.path), 1e7, 100.0),
        ("above", str(slide.path), 100.0, -50000.0),
        ("just_out", str(slide.path), 512.0, 10.0),  # x == width: the pixel does not exist
    ]
    spots = _spots(tmp_path / "spots.csv", rows)
    counts = _counts(tmp_path / "counts.csv", [r[0] for r in rows])
    cache = tmp_path / "cache"
    cache.mkdir()
    with pytest.raises(ExpressionTableError) as info:
        train(spots, counts, tmp_path / "m.deeppt", cache_dir=cache, progress=False, **FEATURES)
    message = str(info.value)
    assert "3 spot(s)" in message and "far_right" in message and "above" in message
    assert "just_out" in message and str(slide.path) in message and "512×512" in message
    assert str(spots) in message
    assert "\n" not in message
    assert not any(cache.iterdir())


def test_spot_coordinates_that_are_not_numbers_are_refused(tmp_path):
    """A spot whose x or y is missing or not a number is named, never read as NaN."""
    (tmp_path / "s.csv").write_text(
        "spot_id,slide,x,y\na,s.tif,10,20\nb,s.tif,abc,20\nc,s.tif,5,\n"
    )
    with pytest.raises(ExpressionTableError, match=r"s\.csv.*2 spot\(s\).*'b'.*'c'"):
        read_spots(tmp_path / "s.csv")


def test_a_spot_over_the_edge_reads_its_outside_as_white_padding(cohort):
    """A spot tile that crosses the slide edge is read unshifted, the outside padded white."""
    from napari_deeppt.features import extract_features
    from napari_deeppt.features.extractors import get_spec
    from napari_deeppt.slide import open_slide

    slide = open_slide(cohort.slides[0].path)
    h = slide.dimensions[1]
    # a corner spot (3/4 of its 64-px tile outside), an edge spot (1/4) and an inside one
    x = np.array([0.0, 200.0, 200.0])
    y = np.array([0.0, h - 16.0, 200.0])
    grid = spot_grid(slide, x, y, tile_px=64, tile_mpp=1.0)
    np.testing.assert_array_equal(grid.xy, [[-32, -32], [168, h - 48], [168, 168]])
    corner = grid.read_tile(slide, 0)
    assert (corner[:32, :, :] == 255).all() and (corner[:, :32, :] == 255).all()
    np.testing.assert_array_equal(corner[32:, 32:], slide.read_region(0, 0, 32, 32))
    edge = grid.read_tile(slide, 1)
    assert (edge[48:] == 255).all()
    np.testing.assert_array_equal(edge[:48], slide.read_region(168, h - 48, 64, 48))
    # through the feature path training uses: colour-stats' first 3 features are the mean
    # of the normalised tile, so they are known from the padded pixels
    spec = get_spec("colour-stats")
    fs = extract_features(
        slide,
        grid,
        extractor="colour-stats",
        stain=None,
        progress=False,
        use_cache=False,
        dtype="float32",
    )
    for i, tile in enumerate([corner, edge, grid.read_tile(slide, 2)]):
        expected = (tile.reshape(-1, 3).mean(0) / 255.0 - np.array(spec.mean)) / spec.std
        np.testing.assert_allclose(fs.features[i, :3], expected, atol=1e-4)


# -- 2. cross-validated R of spots: within each held-out section -----------------------------
def _offset_construction(seed=0):
    """5 sections × 40 spots; truth = section mean + signal; predictions follow the signal
    within a section but carry an offset anti-correlated with the section means."""
    rng = np.random.default_rng(seed)
    sections = np.repeat([f"sec{s}" for s in range(5)], 40)
    means = np.repeat(np.arange(5) * 3.0, 40)
    signal = rng.normal(0, 1, (200, 2))
    truth = means[:, None] + signal
    pred = -means[:, None] + 0.5 * signal + rng.normal(0, 0.3, (200, 2))
    return pred, truth, sections


def test_spot_r_is_the_mean_of_within_section_r_not_the_pooled_r():
    """Per-section offsets cannot flip a spot model's R: R is computed within each section."""
    pred, truth, sections = _offset_construction()
    pooled = gene_metrics(pred, truth, ["G1", "G2"])
    assert (pooled["pearson_r"] < -0.8).all()  # the artefact: strongly negative when pooled
    metrics, per_section = section_metrics(pred, truth, ["G1", "G2"], sections)
    assert per_section.shape == (2, 5) and list(per_section.columns[:2]) == ["sec0", "sec1"]
    for g, gene in enumerate(["G1", "G2"]):
        for s in range(5):
            rows = sections == f"sec{s}"
            expected = np.corrcoef(pred[rows, g], truth[rows, g])[0, 1]
            assert per_section.loc[gene, f"sec{s}"] == pytest.approx(expected, abs=1e-12)
        assert metrics.loc[gene, "pearson_r"] == pytest.approx(per_section.loc[gene].mean())
        assert metrics.loc[gene, "pearson_r"] > 0.7
    assert (metrics["n_sections"] == 5).all() and metrics["significant"].all()
    assert (metrics["r_scope"] == "within-section mean").all()


def test_within_section_p_value_is_fishers_combined_z():
    """The within-section p-value is Fisher's z of each section, weighted by n − 3, combined."""
    from scipy import stats

    rng = np.random.default_rng(1)
    sections = np.repeat(["a", "b", "c"], [10, 20, 30])
    truth = rng.normal(0, 1, (60, 1))
    pred = 0.3 * truth + rng.normal(0, 1, (60, 1))
    metrics, per_section = section_metrics(pred, truth, ["G"], sections)
    r = per_section.loc["G", ["a", "b", "c"]].to_numpy(float)
    weights = np.array([7.0, 17.0, 27.0])
    z = (weights * np.arctanh(r)).sum() / math.sqrt(weights.sum())
    assert metrics.loc["G", "p_value"] == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-9)


def test_sections_too_small_or_constant_are_left_out_not_counted_as_zero():
    """A section with < 4 spots or a constant gene has no R (NaN) and no weight in the mean."""
    rng = np.random.default_rng(2)
    sections = np.repeat(["big", "tiny", "flat"], [30, 3, 30])
    truth = rng.normal(0, 1, (63, 1))
    truth[33:] = 1.0  # constant in "flat"
    pred = truth + rng.normal(0, 0.1, (63, 1))
    metrics, per_section = section_metrics(pred, truth, ["G"], sections)
    assert np.isnan(per_section.loc["G", "tiny"]) and np.isnan(per_section.loc["G", "flat"])
    assert metrics.loc["G", "pearson_r"] == pytest.approx(per_section.loc["G", "big"])
    assert metrics.loc["G", "n_sections"] == 1


def test_a_spot_training_run_reports_within_section_r_per_gene_and_per_section(cohort, tmp_path):
    """A spot run's gene R is the mean of within-section R of its held-out predictions."""
    from napari_deeppt.testing import write_synthetic_spots

    spots, counts, _ = write_synthetic_spots(
        tmp_path / "st", cohort.slides[:4], spacing_px=32, seed=0
    )
    # a batch effect: each section's counts shifted by its own offset in log2 space
    table = pd.read_csv(spots)
    expr = pd.read_csv(counts, index_col=0)
    offsets = {s: 3.0 * k for k, s in enumerate(dict.fromkeys(table["slide"]))}
    shift = table["slide"].map(offsets).to_numpy()[:, None]
    (2.0 ** (np.log2(expr + 1) + shift) - 1).to_csv(counts)
    out = tmp_path / "st.deeppt"
    result = train(
        spots,
        counts,
        out,
        cache_dir=tmp_path / "cache",
        progress=False,
        extractor="colour-stats",
        tile_px=64,
        tile_mpp=1.0,
        stain=None,
        outer_folds=2,
        inner_folds=2,
        batch_slides=64,
        **QUICK,
    )
    truth = np.log2(pd.read_csv(counts, index_col=0) + 1)
    sections = read_spots(spots)["slide"].to_numpy()
    for gene in result.gene_metrics.index:
        within = [
            np.corrcoef(result.heldout[gene][sections == s], truth[gene][sections == s])[0, 1]
            for s in dict.fromkeys(sections)
        ]
        assert result.gene_metrics.loc[gene, "pearson_r"] == pytest.approx(
            np.mean(within), abs=1e-5
        )
    assert result.summary["r_scope"] == "within-section mean"
    assert result.sections.shape == (len(result.gene_metrics), 4)
    written = pd.read_csv(out.with_suffix(".sections.csv"), index_col=0)
    np.testing.assert_allclose(written.to_numpy(), result.sections.to_numpy(), atol=1e-9)
    genes_csv = pd.read_csv(out.with_suffix(".genes.csv"), index_col=0)
    assert (genes_csv["r_scope"] == "within-section mean").all()


def test_spot_early_stopping_scores_validation_within_sections():
    """Early stopping on spots ranks epochs by within-section R, not by the pooled R."""
    pred, truth, sections = _offset_construction()
    assert validation_r(pred, truth, None) < -0.8  # bulk: pooled, as DeepPT
    within = validation_r(pred, truth, sections)
    per_section = section_metrics(pred, truth, ["G1", "G2"], sections)[1]
    assert within == pytest.approx(np.nanmean(per_section.to_numpy())) and within > 0.7


# -- 3. cross-validation settings the data cannot fill ---------------------------------------
def test_fold_settings_five_sections_cannot_fill_five_by_five():
    """5 sections with 5 outer × 5 inner folds are refused, saying which settings work."""
    with pytest.raises(ExpressionTableError) as info:
        check_folds(5, TrainingSettings(outer_folds=5, inner_folds=5), "sections", "spots.csv")
    message = str(info.value)
    assert message.startswith("spots.csv: 5 sections (slides) cannot fill 5 outer × 5 inner folds")
    assert "4 training sections" in message and "outer_folds=5, inner_folds=4" in message


def test_fold_settings_fewer_patients_than_outer_folds():
    """Fewer patients than outer folds are refused with a setting that works for them."""
    with pytest.raises(ExpressionTableError) as info:
        check_folds(3, TrainingSettings(outer_folds=5, inner_folds=5), "patients", "m.csv")
    message = str(info.value)
    assert "3 patients cannot fill 5 outer" in message
    assert "outer_folds=3, inner_folds=2" in message
    with pytest.raises(ExpressionTableError, match="at least 3 patients"):
        check_folds(2, TrainingSettings(outer_folds=2, inner_folds=2), "patients", "m.csv")


def _folds_work(n_groups: int, outer: int, inner: int) -> bool:
    """Whether training's own fold split succeeds (outer folds, each inner split, final)."""
    groups = np.repeat(np.arange(n_groups), 2)  # two samples per group
    rng = np.random.default_rng(0)
    try:
        for fold in group_folds(groups, outer, rng):
            group_folds(np.delete(groups, fold), inner, rng)
        group_folds(groups, inner, rng)
    except DeepPTError:
        return False
    return True


@pytest.mark.parametrize("n_groups", range(2, 13))
def test_fold_check_agrees_with_the_folds_training_makes(n_groups):
    """The up-front fold check refuses exactly what the fold split would fail on, and the
    settings it suggests instead work."""
    import re

    for outer in range(2, 7):
        for inner in range(2, 7):
            options = TrainingSettings(outer_folds=outer, inner_folds=inner)
            works = _folds_work(n_groups, outer, inner)
            if works:
                check_folds(n_groups, options, "patients", "m.csv")
                continue
            with pytest.raises(ExpressionTableError) as info:
                check_folds(n_groups, options, "patients", "m.csv")
            for o, i in re.findall(r"outer_folds=(\d+), inner_folds=(\d+)", str(info.value)):
                assert _folds_work(n_groups, int(o), int(i)), (n_groups, outer, inner, o, i)
            assert n_groups < 3 or "outer_folds=" in str(info.value)


def test_bulk_cohort_too_small_for_the_folds_is_refused_before_any_feature_work(
    cohort, tmp_path, no_feature_work
):
    """A manifest with 5 patients and 5 × 5 folds asked for fails at once, naming patients
    (the defaults would shrink to 5 × 4 and say so: tests/test_folds.py)."""
    table = pd.read_csv(cohort.manifest).iloc[:5]
    table["slide"] = [str(cohort.manifest.parent / s) for s in table["slide"]]
    table.to_csv(tmp_path / "m.csv", index=False)
    cache = tmp_path / "cache"
    cache.mkdir()
    with pytest.raises(ExpressionTableError, match=r"5 patients cannot fill 5 outer × 5 inner"):
        train(
            tmp_path / "m.csv",
            cohort.expression,
            tmp_path / "m.deeppt",
            cache_dir=cache,
            progress=False,
            outer_folds=5,
            inner_folds=5,
            **FEATURES,
        )
    assert not any(cache.iterdir())


def test_spot_sections_too_few_for_the_folds_are_refused_before_any_feature_work(
    cohort, tmp_path, no_feature_work
):
    """A spot table on 3 sections with 2 × 2 folds fails at once, naming sections (slides)."""
    rows = [r for s in cohort.slides[:3] for r in _lattice(s, n=3)]
    spots = _spots(tmp_path / "spots.csv", rows)
    counts = _counts(tmp_path / "counts.csv", [r[0] for r in rows])
    with pytest.raises(ExpressionTableError, match=r"3 sections \(slides\) cannot fill 2 outer"):
        _train_2x2(spots, counts, tmp_path / "m.deeppt")


def test_one_slide_spelled_two_ways_is_one_section(cohort, tmp_path, no_feature_work):
    """Spots of one slide named by two spellings of its path are one CV group, never two."""
    slides = cohort.slides[:3]
    rows = [r for s in slides for r in _lattice(s, n=3)]
    other = str(slides[0].path.parent / "." / slides[0].path.name)  # same file
    rows = [
        (i, other if k % 2 and p == str(slides[0].path) else p, x, y)
        for k, (i, p, x, y) in enumerate(rows)
    ]
    spots = _spots(tmp_path / "spots.csv", rows)
    counts = _counts(tmp_path / "counts.csv", [r[0] for r in rows])
    # 3 sections cannot fill 2 × 2 folds; counted as 4 they would pass the check
    with pytest.raises(ExpressionTableError, match=r"^.*3 sections \(slides\)"):
        _train_2x2(spots, counts, tmp_path / "m.deeppt")


def test_a_missing_or_unreadable_slide_is_found_before_any_feature_work(
    cohort, no_mpp_slide, tmp_path, no_feature_work
):
    """A missing bulk slide, or a spot slide without µm/px, is refused before features."""
    table = pd.read_csv(cohort.manifest)
    table["slide"] = [str(cohort.manifest.parent / s) for s in table["slide"]]
    table.loc[5, "slide"] = str(tmp_path / "gone.tif")
    table.to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(DeepPTError, match=r"gone\.tif"):
        _train_2x2(tmp_path / "m.csv", cohort.expression, tmp_path / "m.deeppt")
    rows = [r for s in cohort.slides[:4] for r in _lattice(s, n=3)]
    rows += [("nompp_0", str(no_mpp_slide.path), 300.0, 300.0)]
    spots = _spots(tmp_path / "spots.csv", rows)
    counts = _counts(tmp_path / "counts.csv", [r[0] for r in rows])
    with pytest.raises(MissingMppError):
        _train_2x2(spots, counts, tmp_path / "s.deeppt")


def test_one_slide_listed_for_two_samples_is_refused_before_any_feature_work(
    cohort, tmp_path, no_feature_work
):
    """A slide listed under two samples is refused: its image would sit in train and test."""
    table = pd.read_csv(cohort.manifest)
    table["slide"] = [str(cohort.manifest.parent / s) for s in table["slide"]]
    table.loc[3, "slide"] = "./" + str(Path(table.loc[1, "slide"]).relative_to(tmp_path.anchor))
    table.loc[3, "slide"] = str(Path(tmp_path.anchor) / table.loc[3, "slide"])
    table.to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(DeepPTError, match=r"slide001.*S001.*S003"):
        _train_2x2(tmp_path / "m.csv", cohort.expression, tmp_path / "m.deeppt")


# -- 4. expression tables whose samples do not match -----------------------------------------
@pytest.mark.parametrize("genes_as_rows", [True, False])
def test_unmatched_samples_are_shown_with_the_tables_sample_names(cohort, tmp_path, genes_as_rows):
    """Some manifest samples missing: the message lists them and the table's sample names."""
    samples = [f"S{i:03d}" for i in range(6)]
    table = pd.read_csv(cohort.expression, index_col=0)[samples[:4]]  # genes × samples
    table.columns = ["S000", "S001", "X002", "X003"]
    (table if genes_as_rows else table.T).to_csv(tmp_path / "e.csv")
    with pytest.raises(ExpressionTableError) as info:
        read_expression(tmp_path / "e.csv", samples)
    message = str(info.value)
    assert "4 manifest sample(s)" in message and "S005" in message and "X002" in message
    # the samples shown are the table's sample axis, never its gene names
    assert "samples are ['S000', 'S001', 'X002', 'X003']" in message


@pytest.mark.parametrize("genes_as_rows", [True, False])
def test_no_sample_in_common_shows_both_axes_and_the_manifest_ids(cohort, tmp_path, genes_as_rows):
    """No manifest sample in the table: both of its axes and the manifest's ids are shown."""
    samples = [f"S{i:03d}" for i in range(6)]
    table = pd.read_csv(cohort.expression, index_col=0)[samples]
    table.columns = [s.lower() for s in samples]  # s000 …: nothing matches
    (table if genes_as_rows else table.T).to_csv(tmp_path / "e.csv")
    with pytest.raises(ExpressionTableError) as info:
        read_expression(tmp_path / "e.csv", samples)
    message = str(info.value)
    assert "none of the 6 manifest sample" in message
    assert "s000" in message and "DRIVEN0" in message and "S000" in message
    assert "samples look like" not in message  # never gene names called samples
    assert str(tmp_path / "e.csv") in message and "\n" not in message


def test_a_sample_twice_in_the_expression_table_is_refused(cohort, tmp_path):
    """A sample with two rows of expression is named, never silently doubled or shifted."""
    samples = [f"S{i:03d}" for i in range(6)]
    table = pd.read_csv(cohort.expression, index_col=0)[samples].T
    pd.concat([table, table.iloc[[2]]]).to_csv(tmp_path / "e.csv")
    with pytest.raises(ExpressionTableError, match=r"e\.csv.*sample\(s\).*S002.*more than once"):
        read_expression(tmp_path / "e.csv", samples)


# -- found on the way ------------------------------------------------------------------------
def test_infinite_expression_values_are_refused(cohort, tmp_path):
    """An expression value of inf is named (gene, sample), never trained on as a number."""
    samples = [f"S{i:03d}" for i in range(6)]
    table = pd.read_csv(cohort.expression, index_col=0)[samples]
    table.loc["DRIVEN1", "S004"] = np.inf
    table.to_csv(tmp_path / "e.csv")
    with pytest.raises(ExpressionTableError, match=r"e\.csv.*'DRIVEN1'.*'S004'"):
        read_expression(tmp_path / "e.csv", samples)


def test_training_settings_name_the_bad_value():
    """A setting that cannot work (batch of 0 slides, latent size 0) is named at once."""
    for field in ("batch_slides", "ae_batch", "latent_dim", "max_epochs", "patience"):
        with pytest.raises(ValueError, match=rf"{field} must be a whole number ≥ 1, got 0"):
            TrainingSettings(**{field: 0})
    with pytest.raises(ValueError, match=r"outer_folds must be a whole number ≥ 2, got 1"):
        TrainingSettings(outer_folds=1)
    with pytest.raises(ValueError, match=r"ae_epochs must be a whole number ≥ 0, got -1"):
        TrainingSettings(ae_epochs=-1)
    with pytest.raises(ValueError, match=r"lr must be a finite number > 0, got nan"):
        TrainingSettings(lr=float("nan"))
    # values of the wrong kind are named too, never a TypeError from a comparison
    with pytest.raises(ValueError, match=r"outer_folds must be a whole number ≥ 2, got 2.5"):
        TrainingSettings(outer_folds=2.5)
    with pytest.raises(ValueError, match=r"lr must be a finite number > 0, got '0.1'"):
        TrainingSettings(lr="0.1")
    with pytest.raises(ValueError, match=r"ae_tiles must be a whole number ≥ 1 or None"):
        TrainingSettings(ae_tiles=2.5)
    assert TrainingSettings(outer_folds=np.int64(3)).outer_folds == 3  # numpy integers are
    with pytest.raises(ExpressionTableError, match=r"top_n must be a whole number ≥ 1, got 1.5"):
        select_genes(pd.DataFrame({"G0": [1.0]}), top_n=1.5)


def test_training_that_diverges_is_refused_not_saved_as_nan():
    """A run whose predictions become NaN/inf (lr far too large) fails, naming lr."""
    import torch

    rng = np.random.default_rng(0)
    features = [torch.tensor(rng.normal(size=(1, 8)), dtype=torch.float32) for _ in range(60)]
    targets = torch.tensor(rng.normal(size=(60, 2)), dtype=torch.float32)
    groups = np.repeat(np.arange(6), 10)
    options = TrainingSettings(
        outer_folds=2, inner_folds=2, max_epochs=5, patience=2, lr=1e8, ae_epochs=2, latent_dim=4
    )
    with pytest.raises(DeepPTError, match=r"diverged.*lr=1e\+08"):
        cross_validate(features, targets, groups, ["a", "b"], options, False, None)


def test_expression_files_keep_their_labels_as_written(tmp_path):
    """An expression file's sample ids and genes are read as written ("001" is not 1, "NA"
    is an id), a byte-order mark is ignored, and a repeated or unnamed gene column is
    refused (never renamed "G0.1" or "Unnamed: 2")."""
    path = tmp_path / "expr.csv"
    path.write_bytes(b"\xef\xbb\xbfsample_id,G0,G1\n001,1,2\nNA,3,\n010,5,6\n")
    table = read_expression(path, ["001", "010"])
    assert table.index.tolist() == ["001", "010"] and table.columns.tolist() == ["G0", "G1"]
    assert table.loc["010"].tolist() == [5.0, 6.0]
    with pytest.raises(ExpressionTableError, match=r"missing values, e\.g\. gene 'G1'"):
        read_expression(path, ["NA"])  # its empty cell is missing; its id is an id
    path.write_text("sample_id,G0,G0,G1\n001,1,2,3\n")
    with pytest.raises(ExpressionTableError, match=r"duplicated gene\(s\) \['G0'\]"):
        read_expression(path, ["001"])
    path.write_text("sample_id,G0,,G1\n001,1,2,3\n")
    with pytest.raises(ExpressionTableError, match=r"column\(s\) \[3\] have no name"):
        read_expression(path, ["001"])
    r_style = tmp_path / "r.tsv"  # R's write.table: no header cell above the row names
    r_style.write_text("G0\tG1\ns1\t1\t2\n001\t3\t4\n")
    table = read_expression(r_style, ["s1", "001"])
    assert table.columns.tolist() == ["G0", "G1"] and table.loc["001"].tolist() == [3.0, 4.0]
    path.write_text("sample_id,G0,G1,\n001,1,2,\n010,5,6,\n")  # a spreadsheet's trailing commas
    table = read_expression(path, ["001", "010"])
    assert table.columns.tolist() == ["G0", "G1"] and table.loc["010"].tolist() == [5.0, 6.0]


def test_response_tables_are_checked_as_training_tables_are(tmp_path):
    """Response scores keep sample ids as written and refuse what would score silently
    wrong: missing, text or infinite partner-gene values, repeated samples, a partner row
    without a drug, a partner table without drugs (a BOM is ignored)."""
    from napari_deeppt.response import read_partners, response_scores

    partners = tmp_path / "partners.csv"
    partners.write_bytes(b"\xef\xbb\xbfdrug,partner,type\nX,A,SL\n")
    expr = tmp_path / "expr.csv"
    expr.write_text("sample_id,A,B,B\n001,1,x,1\n002,2,x,1\n003,3,x,1\n")  # B: no partner
    assert response_scores(expr, partners).scores.index.tolist() == ["001", "002", "003"]
    for bad, message in [
        ("001,1\n002,\n003,3\n", "missing values"),
        ("001,1\n002,two\n003,3\n", "non-numeric value 'two'"),
        ("001,1\n002,inf\n003,3\n", "infinite value"),
        ("001,1\n001,2\n003,3\n", r"sample\(s\) \['001'\] appear more than once"),
    ]:
        expr.write_text("sample_id,A\n" + bad)
        with pytest.raises(ExpressionTableError, match=message):
            response_scores(expr, partners)
    partners.write_text("drug,partner,type\nX,A,SL\n,A,SL\n")
    with pytest.raises(ExpressionTableError, match=r"line\(s\) \[3\] lack a drug"):
        read_partners(partners)
    partners.write_text("drug,partner,type\n")
    with pytest.raises(ExpressionTableError, match="no drugs listed"):
        read_partners(partners)


def test_tile_settings_are_refused_before_the_tables_are_read(tmp_path, monkeypatch):
    """train(tile_px=-1) (or mpp 0, min_tissue 2) is refused before any table is read or
    any slide opened, naming the value: never after the first slide's tissue detection."""
    import napari_deeppt.model.training as training
    from napari_deeppt import train

    monkeypatch.setattr(training, "read_inputs", lambda *a, **k: pytest.fail("read"))
    for setting, message in [
        ({"tile_px": -1}, "tile_px=-1 must be an integer ≥ 16"),
        ({"tile_px": 0}, "tile_px=0 must be an integer ≥ 16"),  # not "the default"
        ({"tile_mpp": 0.0}, "mpp=0.0 must be > 0"),
        ({"min_tissue": 2.0}, r"min_tissue=2.0 must be in \[0, 1\]"),
    ]:
        with pytest.raises(ValueError, match=message):
            train(tmp_path / "m.csv", tmp_path / "e.csv", tmp_path / "m.deeppt", **setting)
    assert not list(tmp_path.iterdir())
