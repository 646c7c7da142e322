"""int8 features on the CPU (issue 15): close to fp32's, made the same way every time, kept
on disk keyed on the weights, refused where they do not apply, cached as their own entry."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

from napari_deeppt import extract_features
from napari_deeppt.errors import DeepPTError
from napari_deeppt.features import FeatureSet, quantized
from napari_deeppt.features.extractors import load_extractor
from napari_deeppt.features.params import FeatureParams
from napari_deeppt.features.quantized import agreement, int8_model, quantized_dir, require_int8
from napari_deeppt.slide import open_slide
from napari_deeppt.tiles import make_tile_grid

CPU = torch.device("cpu")
RUN = {"extractor": "resnet18", "weights": "random", "progress": False, "use_cache": False}


@pytest.fixture(autouse=True)
def _fresh(tmp_path, monkeypatch):
    """Each test starts with an empty cache and no int8 model kept in memory."""
    monkeypatch.setenv("NAPARI_DEEPPT_CACHE", str(tmp_path / "cache"))
    quantized._KEPT.clear()
    yield
    quantized._KEPT.clear()


def _no_calibration(*args, **kwargs):
    raise AssertionError("calibrated again although the int8 model was on disk")


@pytest.fixture(scope="module")
def slide_and_grid(svs_slide):
    slide = open_slide(svs_slide.path)
    grid = make_tile_grid(slide, tile_px=224, mpp=0.5, min_tissue=0.5)
    return slide, grid.subset(np.arange(min(len(grid), 24)))


def test_int8_features_keep_what_fp32s_say_about_the_tiles(slide_and_grid):
    slide, grid = slide_and_grid
    assert len(grid) >= 12
    fp32 = extract_features(slide, grid, **RUN, compile=False).features
    int8 = extract_features(slide, grid, **RUN, precision="int8")
    assert int8.provenance["precision"] == "int8"
    assert not np.array_equal(int8.features, fp32)  # int8 really ran
    r2, cosine = agreement(int8.features, fp32)
    assert r2 >= 0.98, r2  # the variation across tiles that the maps and the model see
    assert cosine >= 0.99, cosine
    model = int8_model(load_extractor("resnet18", "random"), CPU)
    kinds = {type(module).__module__ for module in model.modules()}
    assert any("quantized" in kind for kind in kinds), kinds


def test_the_int8_model_is_kept_on_disk_and_loaded_without_calibrating(slide_and_grid, monkeypatch):
    slide, grid = slide_and_grid
    first = extract_features(slide, grid, **RUN, precision="int8").features
    assert len(list(quantized_dir().glob("*.pt"))) == 1
    quantized._KEPT.clear()  # as a fresh process

    monkeypatch.setattr(quantized, "_quantize", _no_calibration)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = extract_features(slide, grid, **RUN, precision="int8").features
    np.testing.assert_array_equal(again, first)


def test_other_weights_get_their_own_int8_model(slide_and_grid, monkeypatch):
    slide, grid = slide_and_grid
    one = extract_features(slide, grid, **RUN, precision="int8").features
    other = extract_features(slide, grid, **RUN, precision="int8", seed=1).features
    assert len(list(quantized_dir().glob("*.pt"))) == 2
    assert not np.allclose(one, other, atol=1e-2)
    quantized._KEPT.clear()
    np.testing.assert_array_equal(
        extract_features(slide, grid, **RUN, precision="int8").features, one
    )
    # only the most recently used are kept: the seed-1 model goes when a third is made
    monkeypatch.setattr(quantized, "KEEP_MODELS", 2)
    before = set(quantized_dir().glob("*.pt"))
    extract_features(slide, grid, **RUN, precision="int8", seed=2)
    after = set(quantized_dir().glob("*.pt"))
    assert len(after) == 2 and len(before & after) == 1
    quantized._KEPT.clear()
    with warnings.catch_warnings():  # seed 0's model was used last: still kept, not remade
        warnings.simplefilter("error")
        monkeypatch.setattr(quantized, "_quantize", _no_calibration)
        extract_features(slide, grid, **RUN, precision="int8")


def test_a_damaged_int8_file_is_made_again_with_a_warning(slide_and_grid):
    slide, grid = slide_and_grid
    first = extract_features(slide, grid, **RUN, precision="int8").features
    (path,) = quantized_dir().glob("*.pt")
    path.write_bytes(path.read_bytes()[:1000])
    quantized._KEPT.clear()
    with pytest.warns(UserWarning, match="does not load; making it again") as caught:
        again = extract_features(slide, grid, **RUN, precision="int8").features
    assert not any("weights_only" in str(w.message) for w in caught)
    np.testing.assert_array_equal(again, first)
    quantized._KEPT.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the file was replaced by a good one
        extract_features(slide, grid, **RUN, precision="int8")


def test_int8_is_refused_where_it_does_not_apply(slide_and_grid):
    slide, grid = slide_and_grid
    with pytest.raises(DeepPTError, match="available for resnet18, resnet50, not extractor"):
        extract_features(slide, grid, **{**RUN, "extractor": "resnet34"}, precision="int8")
    with pytest.raises(DeepPTError, match="CPU only, not on cuda"):
        require_int8("resnet50", torch.device("cuda"))
    with pytest.raises(ValueError, match="precision must be 'float32', 'bfloat16' or 'int8'"):
        FeatureParams(precision="int4")
    with pytest.raises(ValueError, match="compile=True does not apply"):
        FeatureParams(precision="int8", compile=True)


def test_int8_features_are_a_cache_entry_of_their_own(slide_and_grid, tmp_path):
    slide, grid = slide_and_grid
    cached = {**RUN, "use_cache": True, "cache_dir": tmp_path / "features"}
    fp32 = extract_features(slide, grid, **cached, compile=False)
    int8 = extract_features(slide, grid, **cached, precision="int8")
    assert not int8.from_cache
    assert int8.provenance["cache_key"] != fp32.provenance["cache_key"]
    assert fp32.provenance["precision"] == "float32"
    again = extract_features(slide, grid, **cached, precision="int8")
    assert again.from_cache and again.provenance["precision"] == "int8"
    np.testing.assert_array_equal(again.features, int8.features)


def test_the_command_line_makes_int8_features_and_refuses_them_one_line(
    tmp_path, capsys, svs_slide
):
    from napari_deeppt.cli import main

    args = ["features", str(svs_slide.path), "--out", str(tmp_path / "out"), "--quiet"]
    args += ["--extractor", "resnet18", "--weights", "random", "--formats", "zarr"]
    assert main([*args, "--precision", "int8", "--no-cache"]) == 0
    written = FeatureSet.load(tmp_path / "out" / f"{svs_slide.path.stem}.features.zarr")
    assert written.provenance["precision"] == "int8"
    assert "(resnet18, weights random-0, int8)" in capsys.readouterr().out
    unsupported = ["features", str(svs_slide.path), "--out", str(tmp_path / "uni")]
    assert main([*unsupported, "--extractor", "uni", "--precision", "int8"]) == 2
    err = capsys.readouterr().err  # refused before any weights are looked for
    assert "precision 'int8' is available for" in err and "MahmoodLab" not in err
    other = ["--extractor", "colour-stats", "--weights", "random"]
    assert main([*args[:5], *other, "--precision", "int8", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "error: precision 'int8' is available for resnet18, resnet50" in err
    assert "Traceback" not in err
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--precision", "int4"])
    assert exit_.value.code == 2


def test_the_engine_is_onednn_on_x86_builds_and_refused_elsewhere():
    from napari_deeppt.features.quantized import _engine

    assert _engine(["qnnpack", "onednn", "x86", "fbgemm"]) == "onednn"  # this torch
    assert _engine(["qnnpack", "fbgemm"]) == "fbgemm"
    with pytest.raises(DeepPTError, match=r"no x86 quantized engine .* use precision 'float32'"):
        _engine(["qnnpack", "onednn"])  # an ARM build


def test_int8_features_made_another_way_are_not_taken_from_the_cache(
    slide_and_grid, tmp_path, monkeypatch
):
    """The feature cache key carries the int8 model's recipe, engine and versions."""
    slide, grid = slide_and_grid
    cached = {**RUN, "use_cache": True, "cache_dir": tmp_path / "features"}
    first = extract_features(slide, grid, **cached, precision="int8")
    assert first.provenance["int8"]["engine"] == quantized._engine()
    assert extract_features(slide, grid, **cached, precision="int8").from_cache
    monkeypatch.setattr(quantized, "_RECIPE", quantized._RECIPE + 1)  # a later release's
    quantized._KEPT.clear()
    later = extract_features(slide, grid, **cached, precision="int8")
    assert not later.from_cache
    assert later.provenance["cache_key"] != first.provenance["cache_key"]
    monkeypatch.setattr(quantized, "_engine", lambda engines=None: "x86")  # another engine
    quantized._KEPT.clear()
    other = extract_features(slide, grid, **cached, precision="int8")
    assert not other.from_cache and other.provenance["int8"]["engine"] == "x86"


def test_an_int8_model_that_cannot_be_kept_warns_in_one_line(slide_and_grid, monkeypatch):
    """torch.save fails with a C++ RuntimeError on a read-only folder or a full disk."""
    slide, grid = slide_and_grid
    expected = extract_features(slide, grid, **RUN, precision="int8").features
    quantized._KEPT.clear()
    for path in quantized_dir().glob("*.pt"):
        path.unlink()

    def full_disk(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 2854784")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.warns(UserWarning, match="could not be kept") as caught:
        got = extract_features(slide, grid, **RUN, precision="int8").features
    assert not any("enforce" in str(w.message) for w in caught)
    np.testing.assert_array_equal(got, expected)
    assert not list(quantized_dir().glob("*.pt*"))  # no partial left behind


@pytest.fixture(scope="module")
def int8_cohort(tmp_path_factory):
    """Six slides, each with int8 and float32 resnet18 feature stores, and a manifest."""
    import pandas as pd

    from napari_deeppt.testing import write_synthetic_cohort
    from napari_deeppt.tiles import detect_and_tile

    root = tmp_path_factory.mktemp("int8-cohort")
    cohort = write_synthetic_cohort(root / "cohort", n_slides=6, seed=4, noise=0.05)
    manifest = pd.read_csv(cohort.manifest)
    stores: dict[str, list] = {"int8": [], "float32": []}
    for slide in manifest["slide"]:
        path = cohort.manifest.parent / slide
        _, grid = detect_and_tile(path, tile_px=128, mpp=1.0)
        for precision, kept in stores.items():
            fs = extract_features(path, grid, **{**RUN, "stain": None}, precision=precision)
            kept.append(fs.save(root / precision / f"{path.stem}.zarr"))
    quantized._KEPT.clear()
    return cohort, manifest, stores


def test_training_refuses_int8_and_float32_stores_together_and_records_int8(int8_cohort, tmp_path):
    from napari_deeppt import predict
    from napari_deeppt.model.bundle import ModelBundle
    from napari_deeppt.model.training import train

    cohort, manifest, stores = int8_cohort
    settings = {"extractor": "resnet18", "weights": "random", "tile_px": 128, "tile_mpp": 1.0,
                "stain": None, "outer_folds": 2, "inner_folds": 2, "max_epochs": 5,
                "patience": 5, "progress": False}  # fmt: skip
    mixed = manifest.assign(features=[str(s) for s in stores["int8"]])
    mixed.loc[3, "features"] = str(stores["float32"][3])
    mixed.to_csv(tmp_path / "mixed.csv", index=False)
    name = stores["float32"][3].name
    with pytest.raises(DeepPTError, match=rf"{name}.*precision='float32' \(training: 'int8'\)"):
        train(tmp_path / "mixed.csv", cohort.expression, tmp_path / "x.deeppt", **settings)
    manifest.assign(features=[str(s) for s in stores["int8"]]).to_csv(tmp_path / "m.csv")
    train(tmp_path / "m.csv", cohort.expression, tmp_path / "int8.deeppt", **settings)
    feature = ModelBundle.load(tmp_path / "int8.deeppt").feature
    assert feature["precision"] == "int8" and feature["int8"]["engine"] == quantized._engine()
    slide = cohort.manifest.parent / manifest["slide"][0]
    run = {"weights": "random", "progress": False, "cache_dir": tmp_path / "cache"}
    by_default = predict(slide, tmp_path / "int8.deeppt", **run)  # the model's precision
    assert by_default.provenance["features"]["precision"] == "int8"
    asked = predict(slide, tmp_path / "int8.deeppt", **run, precision="float32")
    assert asked.provenance["features"]["precision"] == "float32"
    with pytest.raises(ValueError, match="precision must be 'float32', 'bfloat16' or 'int8'"):
        predict(slide, tmp_path / "int8.deeppt", **run, precision="fp16")


def test_agreement_has_known_answers():
    rng = np.random.default_rng(0)
    fp32 = rng.normal(size=(50, 8)) + 3.0
    assert agreement(fp32, fp32) == pytest.approx((1.0, 1.0))
    shifted = fp32 + 1.0  # the same variation across tiles, other directions per tile
    r2, cosine = agreement(shifted, fp32)
    assert r2 == pytest.approx(1.0) and cosine < 1.0
    noisy = fp32 + rng.normal(scale=0.5, size=fp32.shape)  # var 1 vs 0.25: R2 ~ 0.75
    assert agreement(noisy, fp32)[0] == pytest.approx(0.75, abs=0.08)


def test_calibrating_reports_progress_once_and_can_be_cancelled(slide_and_grid):
    from napari_deeppt.errors import CancelledError

    slide, grid = slide_and_grid
    seen: list[str] = []

    def cancel() -> bool:  # cancelled during the calibration's second batch
        return len(seen) >= 2 and seen[0].startswith("making the int8 model")

    with pytest.raises(CancelledError, match="making the int8 model was cancelled"):
        extract_features(slide, grid, **{**RUN, "progress": lambda d, t, m: seen.append(m)},
                         precision="int8", cancel=cancel)  # fmt: skip
    assert seen[0] == "making the int8 model (once for these weights)"
    assert not list(quantized_dir().glob("*.pt*"))  # nothing kept of a cancelled calibration
    seen.clear()
    extract_features(slide, grid, **{**RUN, "progress": lambda d, t, m: seen.append(m)},
                     precision="int8")  # fmt: skip
    assert "making the int8 model (once for these weights)" in seen
    seen.clear()
    quantized._KEPT.clear()  # a new process: the model is loaded from disk, no calibration
    extract_features(slide, grid, **{**RUN, "progress": lambda d, t, m: seen.append(m)},
                     precision="int8")  # fmt: skip
    assert not any("int8 model" in m for m in seen) and seen


def test_a_cohort_runs_at_the_precision_asked_for_and_resumes_only_at_the_same(
    int8_cohort, tmp_path, capsys
):
    """A float32 bundle's cohort run at int8 (the speed it gives on a CPU): every slide's
    record says so, a rerun at int8 reuses them, a rerun at the bundle's precision redoes
    them and gives the float32 results again; int8 where it cannot run is refused before
    any slide."""
    import json

    import pandas as pd

    from napari_deeppt.cli import main
    from napari_deeppt.cohort import run_cohort
    from napari_deeppt.model.training import train
    from napari_deeppt.samples import demo_bundle

    cohort, manifest, stores = int8_cohort
    manifest.assign(features=[str(s) for s in stores["float32"]]).to_csv(tmp_path / "m.csv")
    settings = {"extractor": "resnet18", "weights": "random", "tile_px": 128, "tile_mpp": 1.0,
                "stain": None, "outer_folds": 2, "inner_folds": 2, "max_epochs": 5,
                "patience": 5, "progress": False}  # fmt: skip
    bundle = tmp_path / "fp32.deeppt"
    train(tmp_path / "m.csv", cohort.expression, bundle, **settings)
    slides = [str(cohort.manifest.parent / s) for s in manifest["slide"][:2]]
    table = pd.DataFrame({"slide": slides, "sample_id": ["A", "B"]})
    out, run = tmp_path / "out", {"weights": "random", "scheduler": "serial", "progress": False,
                                  "device": "cpu", "cache_dir": tmp_path / "cache"}  # fmt: skip
    first = run_cohort(table, bundle, out, **run)
    int8 = run_cohort(table, bundle, out, precision="int8", **run)
    notes = set(int8.report["note"])
    assert notes == {"recomputed: the earlier result was made with another precision (or "
                     "int8 engine or torch) than now"}  # fmt: skip
    record = json.loads((out / "slides" / "A.run.json").read_text())
    assert record["precision"] == {"precision": "int8", **quantized.int8_identity()}
    close = np.corrcoef(int8.expression.to_numpy().ravel(), first.expression.to_numpy().ravel())
    assert not np.allclose(int8.expression, first.expression) and close[0, 1] > 0.99
    again = run_cohort(table, bundle, out, precision="int8", **run)
    assert set(again.report["note"]) == {"made before by the same bundle, slide and settings"}
    other_torch = {**quantized.int8_identity(), "torch": "9.9"}  # int8 results depend on it
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(quantized, "int8_identity", lambda: other_torch)
        patch.setattr(quantized, "_KEPT", {})
        redone = run_cohort(table, bundle, out, precision="int8", **run)
    assert set(redone.report["status"]) == {"ok"}
    assert set(redone.report["note"]) == notes
    back = run_cohort(table, bundle, out, **run)
    assert "precision" not in json.loads((out / "slides" / "A.run.json").read_text())
    pd.testing.assert_frame_equal(back.expression, first.expression, rtol=1e-6)
    table.to_csv(tmp_path / "run.csv", index=False)
    command = ["run", str(tmp_path / "run.csv"), "--model", str(bundle), "--out", str(out),
               "--weights", "random", "--device", "cpu", "--scheduler", "serial", "--quiet",
               "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    assert main([*command, "--precision", "int8"]) == 0
    assert json.loads((out / "slides" / "B.run.json").read_text())["precision"]["engine"]
    capsys.readouterr()
    with pytest.raises(ValueError, match="precision must be 'float32', 'bfloat16' or 'int8'"):
        run_cohort(table, bundle, tmp_path / "never", precision="fp16", **run)
    with pytest.raises(DeepPTError, match="int8' is available for resnet18, resnet50"):
        run_cohort(table, demo_bundle(progress=False), tmp_path / "never", precision="int8", **run)
    assert not (tmp_path / "never").exists()


def test_an_int8_model_served_from_memory_is_marked_used_on_disk():
    """A long session reuses the int8 model kept in memory: each use marks its file used, so
    another process's clean-up (which keeps the most recently used) keeps it."""
    loaded = load_extractor("resnet18", "random")
    model = int8_model(loaded, CPU)
    (path,) = quantized_dir().glob("*.pt")
    os.utime(path, (1, 1))  # made long ago
    assert int8_model(loaded, CPU) is model  # from memory...
    assert path.stat().st_mtime > 1e9  # ...and marked used now
