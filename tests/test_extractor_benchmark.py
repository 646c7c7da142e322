"""The extractor benchmark on a lab's own spots, and the PCA + ridge baseline (issue 14).

Known answers: synthetic sections whose driven genes follow the tissue type under each
spot. An informative extractor (colour statistics: tissue types differ in colour) must
score those genes well on held-out sections and rank above an extractor whose features
are noise; a linear probe on features that are the targets plus noise must recover them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_deeppt import benchmark_extractors
from napari_deeppt.cli import main
from napari_deeppt.errors import DeepPTError, ExpressionTableError
from napari_deeppt.features import extractors
from napari_deeppt.features.specs import ExtractorSpec
from napari_deeppt.model.baseline import pca_ridge_heldout
from napari_deeppt.testing import write_synthetic_cohort, write_synthetic_spots

pytest.importorskip("sklearn")
TILES = {"tile_px": 64, "tile_mpp": 0.5, "stain": None}


class _Noise:
    """An extractor whose 16 features are noise, whatever the tile."""

    def __new__(cls):
        import torch

        class Noise(torch.nn.Module):
            def forward(self, x):
                generator = torch.Generator().manual_seed(int(x.shape[0]) * 7919)
                return torch.randn(x.shape[0], 16, generator=generator)

        return Noise()


@pytest.fixture
def noise_extractor(monkeypatch):
    spec = ExtractorSpec("noise", _Noise, 16, input_size=64, needs_weights=False)
    monkeypatch.setitem(extractors.EXTRACTORS, "noise", spec)


@pytest.fixture(scope="module")
def sections(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    cohort = write_synthetic_cohort(root / "cohort", n_slides=4, seed=2)
    spots, counts, driven = write_synthetic_spots(
        root / "st", cohort.slides, spacing_px=64, seed=1, n_driven=3, n_noise=2
    )
    return spots, counts, list(driven)


def test_pca_ridge_recovers_targets_that_are_linear_in_the_features():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(120, 3))
    features = np.hstack([truth @ rng.normal(size=(3, 40)), rng.normal(size=(120, 10))])
    features += 0.05 * rng.normal(size=features.shape)
    folds = [np.arange(k, 120, 4) for k in range(4)]
    heldout = pca_ridge_heldout(features, truth, folds, components=8)
    r = [np.corrcoef(heldout[:, g], truth[:, g])[0, 1] for g in range(3)]
    assert min(r) > 0.95, r
    shuffled = pca_ridge_heldout(rng.permutation(features), truth, folds, components=8)
    assert max(abs(np.corrcoef(shuffled[:, g], truth[:, g])[0, 1]) for g in range(3)) < 0.35


def test_an_informative_extractor_ranks_above_noise_on_held_out_sections(
    sections, noise_extractor, tmp_path
):
    spots, counts, driven = sections
    result = benchmark_extractors(
        spots, counts, "noise,colour-stats", genes=5, components=16,
        cache_dir=tmp_path / "cache", out=tmp_path / "out", progress=False, **TILES,
    )  # fmt: skip
    assert list(result.summary.index) == ["colour-stats", "noise"]  # best first
    assert (result.per_gene.loc[driven, "colour-stats"] > 0.6).all(), result.per_gene
    assert abs(result.summary.loc["noise", "mean_r"]) < 0.2
    assert result.summary.loc["colour-stats", "feature_dim"] == 21
    assert "4 folds of whole sections (4 in all" in result.folds
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == [
        "extractor_benchmark.csv", "extractor_benchmark.png", "extractor_benchmark_genes.csv"
    ]  # fmt: skip
    table = pd.read_csv(tmp_path / "out" / "extractor_benchmark_genes.csv", index_col=0)
    pd.testing.assert_frame_equal(table, result.per_gene, check_names=False, atol=1e-6)
    with pytest.raises(FileExistsError, match="already exist"):
        benchmark_extractors(spots, counts, "colour-stats", out=tmp_path / "out", progress=False)


def test_the_top_variable_genes_are_chosen_and_groups_may_be_a_column(sections, tmp_path):
    spots, counts, driven = sections
    table = pd.read_csv(spots)
    table["patient_id"] = np.where(np.arange(len(table)) % 2, "A", "B")
    table["slide"] = [str(spots.parent / s) for s in table["slide"]]
    result = benchmark_extractors(
        table, counts, ["colour-stats"], genes=3, group_by="patient_id",
        cache_dir=tmp_path / "cache", progress=False, **TILES,
    )  # fmt: skip
    assert sorted(result.per_gene.index) == sorted(driven)  # they vary most
    assert "2 folds of whole patient_ids" in result.folds


def test_bad_input_is_one_line_before_any_feature_work(sections, tmp_path):
    spots, counts, _ = sections
    one = pd.read_csv(spots)
    one = one[one["slide"] == one["slide"].iloc[0]]
    one["slide"] = [str(spots.parent / s) for s in one["slide"]]
    with pytest.raises(ExpressionTableError, match="at least two"):
        benchmark_extractors(one, counts, "colour-stats", progress=False, **TILES)
    with pytest.raises(DeepPTError, match="unknown feature extractor 'nope'"):
        benchmark_extractors(spots, counts, "colour-stats,nope", progress=False, **TILES)
    with pytest.raises(ExpressionTableError, match="no column 'donor'"):
        benchmark_extractors(spots, counts, "colour-stats", group_by="donor", progress=False)
    with pytest.raises(DeepPTError, match="weights given for"):
        benchmark_extractors(spots, counts, "colour-stats", weights={"uni": "x"}, progress=False)
    for setting, message in [
        ({"genes": 0}, r"genes must be a whole number ≥ 1, got 0"),
        ({"folds": 1}, r"folds must be a whole number ≥ 2, got 1"),
        ({"components": 0}, r"components must be a whole number ≥ 1"),
        ({"tile_px": 2.5}, r"tile_px must be a whole number ≥ 16, got 2.5"),
        ({"tile_mpp": float("inf")}, r"tile_mpp must be a positive number"),
    ]:  # never a ZeroDivisionError or scikit-learn's text after the features
        with pytest.raises(DeepPTError, match=message):
            benchmark_extractors(spots, counts, "colour-stats", progress=False, **setting)
    from napari_deeppt.extractor_benchmark import _check_numbers

    for names in (pd.Index(["G0"]), np.array(["G0"]), ("G0",), np.int64(5)):  # all valid
        _check_numbers(names, 5, 256, 224, 0.5)


def test_the_command_line_prints_each_extractor_and_writes_the_tables(sections, tmp_path, capsys):
    spots, counts, _ = sections
    args = [
        "benchmark-extractors", str(spots), str(counts), "--extractors", "colour-stats",
        "--genes", "5", "--tile-px", "64", "--components", "16", "--out", str(tmp_path / "o"),
        "--cache-dir", str(tmp_path / "c"), "--quiet",
    ]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "colour-stats" in out and "mean R" in out and "extractor_benchmark.png" in out
    assert main(args) == 2  # outputs exist
    assert "already exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--weights", "colour-stats"])  # argparse: NAME=PATH expected
