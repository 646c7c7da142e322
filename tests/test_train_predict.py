"""Training and prediction on a synthetic cohort whose truth we control."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_deeppt import CancelToken
from napari_deeppt.errors import (
    BundleError,
    BundleMismatchError,
    CancelledError,
    DeepPTError,
    ExpressionTableError,
)
from napari_deeppt.io.tables import read_expression, read_manifest
from napari_deeppt.model.bundle import ModelBundle
from napari_deeppt.model.metrics import holm_sidak
from napari_deeppt.model.training import train
from napari_deeppt.prediction import predict, predict_from_features
from napari_deeppt.testing import (
    SyntheticSlide,
    TissueRegion,
    write_synthetic_cohort,
    write_synthetic_slide,
)

FEATURES = {"extractor": "colour-stats", "tile_px": 64, "tile_mpp": 1.0, "stain": None}
# small cohort: fewer folds and epochs than DeepPT, more (smaller) batches and a larger lr
FAST = {
    "outer_folds": 3,
    "inner_folds": 3,
    "max_epochs": 300,
    "patience": 50,
    "lr": 1e-3,
    "batch_slides": 4,
}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return write_synthetic_cohort(
        tmp_path_factory.mktemp("cohort"), n_slides=40, seed=1, noise=0.05
    )


@pytest.fixture(scope="module")
def trained(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "model.deeppt"
    cache = tmp_path_factory.mktemp("cache")
    result = train(
        cohort.manifest,
        cohort.expression,
        out,
        cache_dir=cache,
        progress=False,
        demo=True,
        device="cpu",  # the known answers below are the CPU's, GPU or not
        **FEATURES,
        **FAST,
    )
    return result, cache


def test_driven_genes_are_predicted_and_noise_genes_are_not_significant(cohort, trained):
    result, _ = trained
    metrics = result.gene_metrics
    for gene in cohort.driven:
        assert metrics.loc[gene, "pearson_r"] > 0.8, metrics
        assert metrics.loc[gene, "significant"]
    for gene in cohort.noise_genes:
        assert not metrics.loc[gene, "significant"], metrics
    assert result.summary["significant"] == len(cohort.driven)
    assert result.bundle_path.exists()
    assert repr(result).startswith(f"TrainingResult(8 genes, {len(cohort.driven)} significant")
    genes_csv = pd.read_csv(result.bundle_path.with_suffix(".genes.csv"), index_col=0)
    assert list(genes_csv.columns) == [
        "pearson_r", "p_value", "p_holm_sidak", "significant", "baseline_r"
    ]  # fmt: skip
    # HEST's PCA + ridge probe on the slides' mean features, the same folds (issue 14)
    assert (genes_csv.loc[list(cohort.driven), "baseline_r"] > 0.5).all(), genes_csv
    heldout = pd.read_csv(result.bundle_path.with_suffix(".heldout.csv"), index_col=0)
    assert heldout.shape == (40, 8)


def test_bundle_round_trip_and_metadata(trained):
    result, _ = trained
    bundle = ModelBundle.load(result.bundle_path)
    assert bundle.genes[:4] == ["DRIVEN0", "DRIVEN1", "DRIVEN2", "DRIVEN3"]
    assert bundle.transform == "log2p1" and bundle.demo
    assert bundle.feature["extractor"] == "colour-stats" and bundle.feature["tile_px"] == 64
    assert len(bundle.ensemble) == 3 and bundle.training["outer_folds"] == 3
    assert bundle.metrics["significant"] == 4
    assert bundle.training["device"] == "cpu"  # where it trained


def test_training_runs_on_the_cuda_gpu_it_is_given(cohort, tmp_path, monkeypatch):
    """``device="cuda"`` (or "auto" with a GPU) trains there, not only extracts there: the
    device reaches cross-validation (a GPU is faked: the run stops at that call)."""
    import torch

    from napari_deeppt import devices
    from napari_deeppt.model import training

    seen = {}

    def fake_resolve(device):
        return torch.device("cuda" if device in ("auto", "cuda") else device)

    def stop(*args, **kwargs):
        seen["device"] = args[8] if len(args) > 8 else kwargs.get("device")
        raise CancelledError("stopped at cross-validation")

    with pytest.raises(DeepPTError, match="CUDA is not available"):
        devices.training_device(torch.device("cuda"))  # given as is, without a GPU
    monkeypatch.setattr(devices, "resolve_device", fake_resolve)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(training, "cross_validate", stop)
    for asked, trains_on in [("auto", "cuda"), ("cuda", "cuda"), ("cpu", "cpu")]:
        assert devices.training_device(asked).type == trains_on
    monkeypatch.setattr(devices, "resolve_device", lambda device: torch.device("mps"))
    assert devices.training_device("mps").type == "cpu"  # not validated on MPS: the CPU
    monkeypatch.setattr(devices, "resolve_device", fake_resolve)
    with pytest.raises(CancelledError):
        train(cohort.manifest, cohort.expression, tmp_path / "m.deeppt", progress=False,
              device="cpu", **FEATURES, **FAST)  # fmt: skip
    assert seen["device"] == torch.device("cpu")
    original = training._feature_options  # extract on the CPU: no GPU here

    def on_the_cpu(extractor, weights, device, stain, cache_dir, seed):
        return original(extractor, weights, "cpu", stain, cache_dir, seed)

    monkeypatch.setattr(training, "_feature_options", on_the_cpu)
    with pytest.raises(CancelledError):
        train(cohort.manifest, cohort.expression, tmp_path / "m.deeppt", progress=False,
              device="cuda", **FEATURES, **FAST)  # fmt: skip
    assert seen["device"] == torch.device("cuda")


def test_tile_map_is_high_where_the_driving_tissue_is(cohort, trained, tmp_path):
    result, cache = trained
    gene, weights = max(cohort.driven.items(), key=lambda kv: np.ptp(kv[1]))
    best, worst = int(np.argmax(weights)), int(np.argmin(weights))
    spec = SyntheticSlide(
        1024,
        1024,
        1.0,
        seed=99,
        regions=(TissueRegion(200, 500, 150, 220, best), TissueRegion(800, 500, 150, 220, worst)),
    )
    slide = write_synthetic_slide(
        tmp_path / "new.tif",
        spec,
        format="tiff",
        compression="zlib",
        level_factors=(4,),
        associated=False,
    )
    prediction = predict(slide.path, result.bundle_path, cache_dir=cache, progress=False)
    kinds = spec.tissue_type_map(prediction.grid.centres[:, 0], prediction.grid.centres[:, 1])
    values = prediction.tile_expression[:, prediction.gene_index(gene)]
    assert values[kinds == best].mean() > values[kinds == worst].mean() + 0.5
    assert prediction.slide_expression[gene] == pytest.approx(values.mean(), rel=1e-5)
    raster = prediction.tile_map(gene)
    r, c = prediction.grid.rowcol[0]
    assert raster[r, c] == pytest.approx(values[0]) and np.isnan(raster).any()


def test_exports(trained, cohort, tmp_path):
    import anndata

    result, cache = trained
    prediction = predict(cohort.slides[0].path, result.bundle_path, cache_dir=cache, progress=False)
    table = pd.read_csv(prediction.to_csv(tmp_path / "slide.csv"))
    assert list(table.columns) == ["gene", "expression", "transform"] and len(table) == 8
    adata = anndata.read_h5ad(prediction.to_h5ad(tmp_path / "tiles.h5ad"))
    assert adata.shape == (len(prediction.grid), 8) and list(adata.var_names[:1]) == ["DRIVEN0"]
    np.testing.assert_allclose(
        adata.obsm["spatial"], prediction.grid.centres * prediction.grid.slide_mpp
    )


def test_features_from_another_extractor_are_refused(trained, cohort):
    from napari_deeppt.features import extract_features

    result, cache = trained
    other = extract_features(
        cohort.slides[0].path,
        None,
        extractor="resnet18",
        weights="random",
        cache_dir=cache,
        progress=False,
    )
    with pytest.raises(BundleMismatchError, match="extractor 'resnet18'"):
        predict_from_features(other, result.bundle_path)


def test_tiles_of_another_size_are_refused_before_feature_work(trained, cohort, monkeypatch):
    """A grid the user cut at another size would be a map that means nothing: refused up
    front, naming both tile sizes in µm."""
    import napari_deeppt.features as features
    from napari_deeppt import detect_and_tile
    from napari_deeppt.prediction import grid_misfit

    result, cache = trained
    bundle = result.bundle_path
    need_px, need_mpp = FEATURES["tile_px"], FEATURES["tile_mpp"]
    _, grid = detect_and_tile(cohort.slides[0].path, tile_px=2 * need_px, mpp=need_mpp)
    monkeypatch.setattr(features, "extract_features", lambda *a, **k: pytest.fail("features"))
    expected = f"{2 * need_px * need_mpp:g} µm tiles .* trained on {need_px * need_mpp:g} µm"
    assert grid_misfit(grid, bundle) is not None
    with pytest.raises(BundleMismatchError, match=expected):
        predict(cohort.slides[0].path, bundle, grid=grid, cache_dir=cache, progress=False)
    _, fitting = detect_and_tile(cohort.slides[0].path, tile_px=need_px, mpp=need_mpp)
    assert grid_misfit(fitting, bundle) is None


def test_corrupt_and_foreign_bundles(tmp_path):
    import torch

    (tmp_path / "junk.deeppt").write_bytes(b"garbage")
    with pytest.raises(BundleError, match="not a readable"):
        ModelBundle.load(tmp_path / "junk.deeppt")
    torch.save({"format": "something-else"}, tmp_path / "foreign.deeppt")
    with pytest.raises(BundleError, match="not a napari-deeppt model bundle"):
        ModelBundle.load(tmp_path / "foreign.deeppt")
    with pytest.raises(BundleError, match="no such model bundle"):
        ModelBundle.load(tmp_path / "missing.deeppt")


def test_gene_missing_from_the_bundle(trained, cohort):
    result, cache = trained
    prediction = predict(cohort.slides[1].path, result.bundle_path, cache_dir=cache, progress=False)
    with pytest.raises(BundleMismatchError, match="'TP53' is not predicted"):
        prediction.tile_map("TP53")


def test_never_overwrites_and_cancels_cleanly(trained, cohort, tmp_path):
    result, cache = trained
    with pytest.raises(FileExistsError):
        train(
            cohort.manifest,
            cohort.expression,
            result.bundle_path,
            cache_dir=cache,
            progress=False,
            **FEATURES,
            **FAST,
        )
    token = CancelToken()
    token.cancel()
    with pytest.raises(CancelledError):
        train(
            cohort.manifest,
            cohort.expression,
            tmp_path / "x.deeppt",
            cache_dir=cache,
            progress=False,
            cancel=token,
            **FEATURES,
            **FAST,
        )
    assert not (tmp_path / "x.deeppt").exists()


def test_expression_table_errors(cohort, tmp_path):
    manifest = read_manifest(cohort.manifest)
    samples = list(manifest["sample_id"])
    table = pd.read_csv(cohort.expression, index_col=0)  # genes × samples
    assert read_expression(cohort.expression, samples).shape == (40, 8)  # orientation found
    table.drop(columns=["S003", "S007"]).to_csv(tmp_path / "missing.csv")
    with pytest.raises(ExpressionTableError, match=r"2 manifest sample\(s\).*S003.*S007"):
        read_expression(tmp_path / "missing.csv", samples)
    pd.concat([table, table.iloc[:1]]).to_csv(tmp_path / "dup.csv")
    with pytest.raises(ExpressionTableError, match=r"duplicated gene.*DRIVEN0"):
        read_expression(tmp_path / "dup.csv", samples)
    bad = table.astype(object)
    bad.iloc[2, 5] = "n/a?"
    bad.to_csv(tmp_path / "text.csv")
    with pytest.raises(ExpressionTableError, match="non-numeric value 'n/a\\?'"):
        read_expression(tmp_path / "text.csv", samples)
    (table - 1000).to_csv(tmp_path / "neg.csv")
    with pytest.raises(ExpressionTableError, match="negative values"):
        train(
            cohort.manifest,
            tmp_path / "neg.csv",
            tmp_path / "m.deeppt",
            progress=False,
            **FEATURES,
            **FAST,
        )


def test_holm_sidak_known_values():
    adjusted = holm_sidak(np.array([0.01, 0.02, 0.03, 0.5, np.nan]))
    expected = [1 - 0.99**4, 1 - 0.98**3, 1 - 0.97**2, 0.5]
    np.testing.assert_allclose(adjusted[:4], expected, rtol=1e-12)
    assert np.isnan(adjusted[4])


def test_spatial_transcriptomics_spots(cohort, tmp_path):
    """Spots (a tile centred on each) as samples, CV grouped by slide, metrics per gene."""
    from napari_deeppt.testing import write_synthetic_spots

    spots, counts, driven = write_synthetic_spots(
        tmp_path / "st", cohort.slides[:4], spacing_px=64, seed=0
    )
    result = train(
        spots,
        counts,
        tmp_path / "st.deeppt",
        extractor="colour-stats",
        tile_px=64,
        tile_mpp=0.5,
        stain=None,
        cache_dir=tmp_path / "cache",
        progress=False,
        outer_folds=2,
        inner_folds=2,
        max_epochs=100,
        patience=20,
        lr=1e-3,
        batch_slides=64,
    )
    metrics = result.gene_metrics
    driven_r = metrics.loc[list(driven), "pearson_r"]
    assert (driven_r > 0.7).all() and driven_r.mean() > 0.8, metrics
    assert not metrics.loc[["SPOT_NOISE0", "SPOT_NOISE1"], "significant"].any()
    bundle = ModelBundle.load(result.bundle_path)
    assert bundle.feature["mode"] == "spots" and bundle.feature["tile_px"] == 64
    assert result.heldout.shape[0] == len(pd.read_csv(spots))
    # the spot model predicts whole slides tile by tile, like a bulk model
    prediction = predict(
        cohort.slides[5].path, result.bundle_path, cache_dir=tmp_path / "cache", progress=False
    )
    assert prediction.tile_expression.shape[1] == len(bundle.genes)


def test_spot_table_errors(tmp_path):
    from napari_deeppt.io.tables import read_spots

    (tmp_path / "s.csv").write_text("slide,x\na.tif,1\n")
    with pytest.raises(ExpressionTableError, match=r"lacks column\(s\) \['y'\]"):
        read_spots(tmp_path / "s.csv")


def test_expression_from_h5ad(cohort, tmp_path):
    import anndata

    manifest = read_manifest(cohort.manifest)
    table = pd.read_csv(cohort.expression, index_col=0).T  # samples × genes
    anndata.AnnData(table.astype(np.float32)).write_h5ad(tmp_path / "expr.h5ad")
    loaded = read_expression(tmp_path / "expr.h5ad", list(manifest["sample_id"]))
    np.testing.assert_allclose(loaded.to_numpy(), table.to_numpy(), rtol=1e-6)


def test_manifest_rows_and_roi_files_are_checked(tmp_path):
    from napari_deeppt.errors import ExpressionTableError

    (tmp_path / "a.geojson").write_text("{}")
    path = tmp_path / "m.csv"
    path.write_text("slide,sample_id,patient_id,roi\na.svs,S1,P1,a.geojson\nb.svs,S2,P2,\n")
    table = read_manifest(path)
    assert table["slide"][0] == str(tmp_path / "a.svs")
    assert list(table["roi"]) == [str(tmp_path / "a.geojson"), None]  # empty: whole tissue
    path.write_text("slide,sample_id,patient_id\na.svs,S1,P1\n,S2,P2\n")
    with pytest.raises(ExpressionTableError, match=r"line\(s\) \[3\] name no slide"):
        read_manifest(path)
    path.write_text("slide,sample_id,patient_id,roi\na.svs,S1,P1,nope.geojson\n")
    with pytest.raises(ExpressionTableError, match=r"roi file.*nope\.geojson"):
        read_manifest(path)


def test_a_bundle_reads_in_a_line_and_describes_itself():
    from napari_deeppt.model.bundle import ModelBundle
    from napari_deeppt.samples import demo_bundle

    bundle = ModelBundle.load(demo_bundle(progress=False))
    assert repr(bundle).startswith("ModelBundle(8 genes on log2p1, colour-stats features")
    assert len(repr(bundle)) < 200  # never the weights
    assert bundle.describe().splitlines()[0].startswith("DEMO MODEL")


def test_expression_given_in_memory_as_a_dataframe_or_anndata(cohort):
    """A scanpy user's table in hand: a DataFrame (either orientation) or an AnnData reads
    as the file does; refusals name what was given."""
    import anndata

    from napari_deeppt.errors import ExpressionTableError

    samples = list(read_manifest(cohort.manifest)["sample_id"])
    from_file = read_expression(cohort.expression, samples)
    genes_by_samples = pd.read_csv(cohort.expression, index_col=0)
    for given in (genes_by_samples, genes_by_samples.T, anndata.AnnData(genes_by_samples.T)):
        loaded = read_expression(given, samples)
        pd.testing.assert_frame_equal(loaded, from_file, check_names=False)
    missing = r"the expression DataFrame \(8 × 39\): 1 manifest sample\(s\) have no expression"
    with pytest.raises(ExpressionTableError, match=missing):
        read_expression(genes_by_samples.drop(columns=samples[0]), samples)
    with pytest.raises(ExpressionTableError, match=r"the AnnData \(39 × 8\)"):
        read_expression(anndata.AnnData(genes_by_samples.T.iloc[1:]), samples)


def test_train_takes_the_expression_as_a_dataframe(cohort, tmp_path):
    expression = pd.read_csv(cohort.expression, index_col=0)
    result = train(
        cohort.manifest,
        expression,
        tmp_path / "m.deeppt",
        cache_dir=tmp_path / "cache",
        progress=False,
        **FEATURES,
        **{**FAST, "max_epochs": 5, "ae_epochs": 1},
    )
    described = ModelBundle.load(result.bundle_path).training["expression"]
    assert described == "the expression DataFrame (8 × 40)"  # what was given, not its text


def test_few_patients_train_with_folds_that_fit_and_say_so(cohort, tmp_path):
    """Four patients cannot fill the default 5 × 5 folds: training uses 4 × 3 instead, warns
    before any feature work, and records it."""
    manifest = read_manifest(cohort.manifest).iloc[:4]
    fast = {k: v for k, v in FAST.items() if not k.endswith("_folds")}
    with pytest.warns(UserWarning, match="4 patients: 4 outer .* × 3 inner folds"):
        result = train(
            manifest,
            cohort.expression,
            tmp_path / "few.deeppt",
            cache_dir=tmp_path / "cache",
            progress=False,
            **FEATURES,
            **{**fast, "max_epochs": 5, "ae_epochs": 1},
        )
    training = ModelBundle.load(result.bundle_path).training
    assert (training["outer_folds"], training["inner_folds"]) == (4, 3)
    assert "instead of the default 5 × 5" in result.summary["folds_note"]
