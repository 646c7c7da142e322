"""bfloat16 features (issue 15): the model in bfloat16 where the hardware has it natively,
features that agree with fp32's, refused in one line elsewhere, cached and compiled as their
own entries, recorded wherever the precision is.

The CPU running the tests may lack native bfloat16 (AVX-512 BF16 or AMX); torch then still
computes in bfloat16, only slowly, so the tests that check the features say the CPU has it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_deeppt import extract_features
from napari_deeppt.errors import DeepPTError
from napari_deeppt.features import bfloat16
from napari_deeppt.features.params import FeatureParams
from napari_deeppt.features.quantized import agreement
from napari_deeppt.slide import open_slide
from napari_deeppt.tiles import make_tile_grid

RUN = {"extractor": "resnet18", "weights": "random", "progress": False, "use_cache": False}


@pytest.fixture(autouse=True)
def _fresh(tmp_path, monkeypatch):
    """Each test starts with an empty cache and no bfloat16 copy kept in memory."""
    monkeypatch.setenv("NAPARI_DEEPPT_CACHE", str(tmp_path / "cache"))
    bfloat16._KEPT.clear()
    yield
    bfloat16._KEPT.clear()


@pytest.fixture
def native(monkeypatch):
    """This CPU has native bfloat16 (torch computes the same either way, slower without)."""
    monkeypatch.setattr(bfloat16, "native_bfloat16", lambda device: True)


@pytest.fixture
def without(monkeypatch):
    """This CPU has no native bfloat16."""
    monkeypatch.setattr(bfloat16, "native_bfloat16", lambda device: False)


@pytest.fixture(scope="module")
def slide_and_grid(svs_slide):
    slide = open_slide(svs_slide.path)
    grid = make_tile_grid(slide, tile_px=224, mpp=0.5, min_tissue=0.5)
    return slide, grid.subset(np.arange(min(len(grid), 24)))


def test_bfloat16_features_agree_with_float32s(slide_and_grid, native):
    slide, grid = slide_and_grid
    assert len(grid) >= 12
    fp32 = extract_features(slide, grid, **RUN, compile=False).features
    bf16 = extract_features(slide, grid, **RUN, compile=False, precision="bfloat16")
    assert bf16.provenance["precision"] == "bfloat16"
    assert bf16.features.dtype == np.float16  # stored as ever
    assert not np.array_equal(bf16.features, fp32)  # bfloat16 really ran
    r2, cosine = agreement(bf16.features, fp32)
    assert r2 >= 0.999, r2  # int8 keeps about 0.995 of the variance; bfloat16 much more
    assert cosine >= 0.9999, cosine


def test_the_model_runs_in_bfloat16_and_answers_in_float32():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1))
    wrapped = bfloat16.BFloat16Model(model)
    assert {p.dtype for p in wrapped.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # a copy was converted
    x = torch.rand(2, 3, 8, 8)
    out = wrapped(x)
    assert out.dtype == torch.float32 and out.shape == (2, 4, 1, 1)
    expected = wrapped.wrapped.float()(x.to(torch.bfloat16).float())  # the same weights, fp32
    torch.testing.assert_close(out, expected, atol=2e-2, rtol=2e-2)


def test_bfloat16_is_refused_in_one_line_where_the_hardware_lacks_it(slide_and_grid, without):
    slide, grid = slide_and_grid
    with pytest.raises(DeepPTError, match=r"no native bfloat16.*use precision 'float32'") as info:
        extract_features(slide, grid, **RUN, precision="bfloat16")
    assert "\n" not in str(info.value)
    with pytest.raises(DeepPTError, match=r"bfloat16.*not on mps"):
        bfloat16.require_bfloat16(torch.device("mps"))


def test_bfloat16_is_a_precision_choice_everywhere():
    assert FeatureParams(precision="bfloat16").precision == "bfloat16"
    with pytest.raises(ValueError, match="'float32', 'bfloat16' or 'int8', got 'fp16'"):
        FeatureParams(precision="fp16")
    FeatureParams(precision="bfloat16", compile=True)  # compiled like float32


def test_bfloat16_features_are_a_cache_entry_of_their_own(slide_and_grid, tmp_path, native):
    slide, grid = slide_and_grid
    cached = {**RUN, "use_cache": True, "cache_dir": tmp_path / "features", "compile": False}
    fp32 = extract_features(slide, grid, **cached)
    bf16 = extract_features(slide, grid, **cached, precision="bfloat16")
    assert not bf16.from_cache
    assert bf16.provenance["cache_key"] != fp32.provenance["cache_key"]
    again = extract_features(slide, grid, **cached, precision="bfloat16")
    assert again.from_cache and again.provenance["precision"] == "bfloat16"
    np.testing.assert_array_equal(again.features, bf16.features)
    back = extract_features(slide, grid, **cached)
    assert back.from_cache and back.provenance["precision"] == "float32"
    np.testing.assert_array_equal(back.features, fp32.features)


def test_a_compiled_bfloat16_package_is_never_the_float32_ones():
    from napari_deeppt.features.compiled import package_fields
    from napari_deeppt.features.extractors import load_extractor

    model = load_extractor("resnet18", "random").model
    shape = (4, 3, 224, 224)
    fp32 = package_fields(model, ("resnet18", "abc"), shape)
    bf16 = package_fields(bfloat16.BFloat16Model(model), ("resnet18", "abc", "bfloat16"), shape)
    assert fp32["model"] != bf16["model"] and fp32["structure"] != bf16["structure"]
    assert bf16["precision"] == "bfloat16" and "precision" not in fp32
    assert bf16["code"]["class"] != fp32["code"]["class"]  # the wrapper's and the model's


def test_the_command_line_makes_bfloat16_features_or_refuses_them_in_one_line(
    tmp_path, capsys, svs_slide, monkeypatch
):
    from napari_deeppt.cli import main
    from napari_deeppt.features import FeatureSet

    out = tmp_path / "out"
    args = ["features", str(svs_slide.path), "--out", str(out), "--quiet", "--no-cache",
            "--extractor", "resnet18", "--weights", "random", "--formats", "zarr",
            "--device", "cpu", "--precision", "bfloat16"]  # fmt: skip
    monkeypatch.setattr(bfloat16, "native_bfloat16", lambda device: False)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "no native bfloat16" in err, err
    assert len(err.splitlines()) == 1 and not out.exists()
    monkeypatch.setattr(bfloat16, "native_bfloat16", lambda device: True)
    assert main(args) == 0
    written = FeatureSet.load(out / f"{svs_slide.path.stem}.features.zarr")
    assert written.provenance["precision"] == "bfloat16"
    assert "(resnet18, weights random-0, bfloat16)" in capsys.readouterr().out


def test_a_cohort_runs_at_bfloat16_only_where_native_and_records_it(tmp_path, monkeypatch):
    """Refused before any slide where the CPU lacks it; else every slide's record says
    bfloat16, and a rerun at the bundle's precision redoes them."""
    import json

    import pandas as pd

    from napari_deeppt.cohort import run_cohort
    from napari_deeppt.samples import demo_bundle
    from napari_deeppt.testing import write_synthetic_cohort

    cohort = write_synthetic_cohort(tmp_path / "cohort", n_slides=2, seed=5)
    table = pd.read_csv(cohort.manifest)
    table["slide"] = [str(cohort.manifest.parent / s) for s in table["slide"]]
    bundle = demo_bundle(progress=False)
    run = {"scheduler": "serial", "progress": False, "device": "cpu",
           "cache_dir": tmp_path / "cache"}  # fmt: skip
    monkeypatch.setattr(bfloat16, "native_bfloat16", lambda device: False)
    with pytest.raises(DeepPTError, match="no native bfloat16"):
        run_cohort(table, bundle, tmp_path / "never", precision="bfloat16", **run)
    assert not (tmp_path / "never").exists()
    monkeypatch.setattr(bfloat16, "native_bfloat16", lambda device: True)
    out = tmp_path / "out"
    bf16 = run_cohort(table, bundle, out, precision="bfloat16", **run)
    assert set(bf16.report["status"]) == {"ok"}
    sample = table["sample_id"][0]
    assert json.loads((out / "slides" / f"{sample}.run.json").read_text())["precision"] == (
        "bfloat16"
    )
    back = run_cohort(table, bundle, out, **run)
    assert set(back.report["note"]) == {
        "recomputed: the earlier result was made with another precision (or int8 engine or "
        "torch) than now"
    }
    assert "precision" not in json.loads((out / "slides" / f"{sample}.run.json").read_text())


def test_a_model_trained_on_bfloat16_features_records_and_predicts_at_it(tmp_path, monkeypatch):
    import pandas as pd

    from napari_deeppt import predict
    from napari_deeppt.model.bundle import ModelBundle
    from napari_deeppt.model.training import train
    from napari_deeppt.testing import write_synthetic_cohort
    from napari_deeppt.tiles import detect_and_tile

    monkeypatch.setattr(bfloat16, "native_bfloat16", lambda device: True)
    cohort = write_synthetic_cohort(tmp_path / "cohort", n_slides=6, seed=4, noise=0.05)
    manifest = pd.read_csv(cohort.manifest)
    stores = []
    for slide in manifest["slide"]:
        path = cohort.manifest.parent / slide
        _, grid = detect_and_tile(path, tile_px=128, mpp=1.0)
        features = extract_features(path, grid, **{**RUN, "stain": None}, precision="bfloat16")
        stores.append(str(features.save(tmp_path / "stores" / f"{path.stem}.zarr")))
    manifest.assign(features=stores).to_csv(tmp_path / "m.csv", index=False)
    settings = {"extractor": "resnet18", "weights": "random", "tile_px": 128, "tile_mpp": 1.0,
                "stain": None, "outer_folds": 2, "inner_folds": 2, "max_epochs": 3,
                "patience": 3, "progress": False}  # fmt: skip
    train(tmp_path / "m.csv", cohort.expression, tmp_path / "bf16.deeppt", **settings)
    feature = ModelBundle.load(tmp_path / "bf16.deeppt").feature
    assert feature["precision"] == "bfloat16" and "int8" not in feature
    slide = cohort.manifest.parent / manifest["slide"][0]
    run = {"weights": "random", "progress": False, "cache_dir": tmp_path / "cache"}
    by_default = predict(slide, tmp_path / "bf16.deeppt", **run)  # the model's precision
    assert by_default.provenance["features"]["precision"] == "bfloat16"
    assert by_default.to_anndata().uns["deeppt"]["precision"] == "bfloat16"  # in the file too
    monkeypatch.setattr(bfloat16, "native_bfloat16", lambda device: False)
    with pytest.raises(DeepPTError, match=r"no native bfloat16.*use precision 'float32'"):
        predict(slide, tmp_path / "bf16.deeppt", **run)
    asked = predict(slide, tmp_path / "bf16.deeppt", **run, precision="float32")
    assert asked.provenance["features"]["precision"] == "float32"


def test_the_bfloat16_copy_is_made_once_per_model_and_never_another_models():
    from napari_deeppt.features.extractors import load_extractor

    one = load_extractor("resnet18", "random").model
    first = bfloat16.bfloat16_model(one, ("resnet18", "a"))
    assert bfloat16.bfloat16_model(one, ("resnet18", "a")) is first  # a cohort's next slide
    other = load_extractor("resnet18", "random", seed=1).model
    second = bfloat16.bfloat16_model(other, ("resnet18", "a"))  # same key, other module
    assert second is not first
    weights = next(iter(second.wrapped.parameters()))
    expected = next(iter(other.parameters())).to(torch.bfloat16)
    assert torch.equal(weights, expected)  # the copy of the model given, not the one kept


def test_commands_refuse_bfloat16_once_before_any_slide(tmp_path, capsys, svs_slide, monkeypatch):
    """With several slides the refusal is one line and exit status 2, before any slide is
    read (not one error per slide after its tissue detection, and exit status 1)."""
    from napari_deeppt import tiles
    from napari_deeppt.cli import main
    from napari_deeppt.samples import demo_bundle

    def never(*args, **kwargs):
        raise AssertionError("a slide was worked on before the precision was checked")

    bundle = str(demo_bundle(progress=False))
    monkeypatch.setattr(bfloat16, "native_bfloat16", lambda device: False)
    monkeypatch.setattr(tiles, "detect_and_tile", never)
    slides = [str(svs_slide.path), str(svs_slide.path.with_name("other.svs"))]
    svs_slide.path.with_name("other.svs").write_bytes(svs_slide.path.read_bytes())
    for command in (
        ["features", *slides, "--extractor", "resnet18", "--weights", "random"],
        ["predict", *slides, "--model", bundle],
    ):
        out = tmp_path / command[0]
        assert main([*command, "--out", str(out), "--precision", "bfloat16", "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "no native bfloat16" in err, err
        assert len(err.splitlines()) == 1 and not out.exists()


def test_a_gpu_that_only_emulates_bfloat16_is_not_taken_for_one_that_has_it(monkeypatch):
    """torch says bfloat16 is supported on pre-Ampere GPUs, counting emulation (slower than
    float16): bfloat16 is refused there, and float32 autocasts to float16 instead."""
    import warnings

    from napari_deeppt.features.extractors import inference_autocast

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation
    )
    cuda = torch.device("cuda")
    assert not bfloat16.native_bfloat16(cuda)
    with pytest.raises(DeepPTError, match="cuda has no native bfloat16"):
        bfloat16.require_bfloat16(cuda)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # autocast on a machine without CUDA says so
        assert inference_autocast(cuda).fast_dtype == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert bfloat16.native_bfloat16(cuda)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert inference_autocast(cuda).fast_dtype == torch.bfloat16
