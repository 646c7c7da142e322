"""Issue 13, item 3: a trained model at given spots, and its accuracy on held-out data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_deeppt.errors import BundleMismatchError, ExpressionTableError
from napari_deeppt.evaluation import evaluate, predict_spots
from napari_deeppt.io.tables import read_spots
from napari_deeppt.model.metrics import gene_metrics
from napari_deeppt.model.training import train
from napari_deeppt.prediction import predict
from napari_deeppt.testing import write_synthetic_cohort, write_synthetic_spots

FEATURES = {"extractor": "colour-stats", "tile_px": 64, "tile_mpp": 0.5, "stain": None}
QUICK = {"outer_folds": 2, "inner_folds": 2, "max_epochs": 60, "patience": 15, "lr": 1e-3}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return write_synthetic_cohort(tmp_path_factory.mktemp("cohort"), n_slides=8, seed=1)


@pytest.fixture(scope="module")
def spot_model(cohort, tmp_path_factory):
    """A spot model trained on four sections, and spots of two sections it never saw."""
    work = tmp_path_factory.mktemp("spots")
    spots, counts, driven = write_synthetic_spots(
        work / "train", cohort.slides[:4], spacing_px=64, seed=0
    )
    result = train(
        spots,
        counts,
        work / "st.deeppt",
        cache_dir=work / "cache",
        progress=False,
        batch_slides=64,
        **FEATURES,
        **QUICK,
    )
    held_spots, held_counts, _ = write_synthetic_spots(
        work / "held", cohort.slides[4:6], spacing_px=64, seed=0
    )  # the same genes' dependence on tissue (seed 0), on sections not trained on
    return result.bundle_path, held_spots, held_counts, list(driven), work / "cache"


def test_predict_spots_is_the_model_on_the_tile_centred_on_each_spot(cohort, spot_model):
    from napari_deeppt import open_slide
    from napari_deeppt.model.sample_features import spot_grid

    bundle, spots, _, _, cache = spot_model
    predicted = predict_spots(spots, bundle, cache_dir=cache, progress=False)
    table = read_spots(spots)  # slide paths resolved against the table's folder
    assert list(predicted.index) == list(table["spot_id"].astype(str))
    assert predicted.attrs["transform"] == "log2p1"
    first = table[table["slide"] == table["slide"].iloc[0]]
    slide = open_slide(first["slide"].iloc[0])
    grid = spot_grid(slide, first["x"].to_numpy(), first["y"].to_numpy(), 64, 0.5)
    direct = predict(slide, bundle, grid=grid, cache_dir=cache, progress=False)
    np.testing.assert_allclose(
        predicted.loc[first["spot_id"].astype(str)].to_numpy(), direct.tile_expression, rtol=1e-5
    )
    as_frame = predict_spots(table, bundle, cache_dir=cache, progress=False)  # a DataFrame
    pd.testing.assert_frame_equal(as_frame, predicted)


def test_evaluate_on_held_out_sections_scores_within_each_section(spot_model):
    bundle, spots, counts, driven, cache = spot_model
    metrics = evaluate(spots, counts, bundle, cache_dir=cache, progress=False)
    assert (metrics["r_scope"] == "within-section mean").all()
    assert (metrics.loc[driven, "pearson_r"] > 0.6).all(), metrics
    assert metrics.loc[driven, "significant"].all()
    assert not metrics.loc[["SPOT_NOISE0", "SPOT_NOISE1"], "significant"].any()
    per_section = metrics.attrs["per_section"]
    assert per_section.shape == (len(metrics), 2)  # the two held-out sections
    np.testing.assert_allclose(metrics["pearson_r"], per_section.mean(axis=1), atol=1e-9)
    measured = pd.read_csv(counts, index_col=0)
    again = evaluate(read_spots(spots), measured, bundle, cache_dir=cache, progress=False)
    pd.testing.assert_frame_equal(again, metrics)  # tables in memory give the same answer


def test_evaluate_refuses_expression_without_the_models_genes(spot_model, monkeypatch):
    import napari_deeppt.features as features

    bundle, spots, counts, driven, cache = spot_model
    measured = pd.read_csv(counts, index_col=0).drop(columns=driven[0])
    monkeypatch.setattr(features, "extract_features", lambda *a, **k: pytest.fail("features"))
    with pytest.raises(BundleMismatchError, match=f"not measured: \\['{driven[0]}'\\]"):
        evaluate(spots, measured, bundle, cache_dir=cache, progress=False)
    negative = pd.read_csv(counts, index_col=0)
    negative.iloc[0, 0] = -1.0
    counts_file = counts.with_name("negative_counts.csv")
    negative.to_csv(counts_file)
    with pytest.raises(ExpressionTableError, match=r"negative_counts\.csv has negative values"):
        evaluate(spots, counts_file, bundle, cache_dir=cache, progress=False)  # the counts


def test_evaluate_held_out_slides_pools_over_them(cohort, tmp_path):
    """Bulk: R pooled over slides, equal to DeepPT's metric on the slides' predictions."""
    from napari_deeppt.samples import demo_bundle

    bundle = demo_bundle(progress=False)
    metrics = evaluate(cohort.manifest, cohort.expression, bundle, progress=False)
    assert (metrics["r_scope"] == "pooled").all()
    manifest = pd.read_csv(cohort.manifest)
    slides = [cohort.manifest.parent / s for s in manifest["slide"]]
    predicted = np.stack([predict(s, bundle, progress=False).slide_expression for s in slides])
    truth = pd.read_csv(cohort.expression, index_col=0).T.loc[manifest["sample_id"]]
    genes = list(metrics.index)
    expected = gene_metrics(predicted, np.log2(truth[genes].to_numpy() + 1), genes)
    np.testing.assert_allclose(metrics["pearson_r"], expected["pearson_r"], atol=1e-9)


def test_evaluate_predicts_each_slide_inside_its_manifest_regions(cohort, tmp_path, monkeypatch):
    """A manifest's roi column (the regions a model was trained on) is used for evaluation
    too: scoring a tumour-region model on whole tissue would be a silently different number."""
    import napari_deeppt.prediction as prediction
    from napari_deeppt.samples import demo_bundle

    manifest = pd.read_csv(cohort.manifest).iloc[:4]
    manifest["slide"] = [str(cohort.manifest.parent / s) for s in manifest["slide"]]
    manifest["roi"] = ["a.geojson", "", "b.geojson", ""]
    seen = []
    real = prediction.predict

    def spy(slide, bundle, **options):
        seen.append((options.get("roi"), options.get("roi_class")))
        return real(slide, bundle, **{**options, "roi": None, "roi_class": None})

    monkeypatch.setattr(prediction, "predict", spy)
    evaluate(
        manifest, cohort.expression, demo_bundle(progress=False), roi_class="Tumor", progress=False
    )
    assert seen == [("a.geojson", "Tumor"), (None, None), ("b.geojson", "Tumor"), (None, None)]
