"""Failure modes of weights, model bundles, demo caches and bundle/feature fit.

Each test states one guarantee: a file that is not what it claims is refused in one line that
names it and says what to do (never a torch traceback or its ``weights_only`` advice), and a
cache or a model is never silently used for something it was not made for.
"""

from __future__ import annotations

import hashlib
import json
import warnings
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from napari_deeppt.errors import (
    BundleError,
    BundleMismatchError,
    WeightsNotFoundError,
)
from napari_deeppt.model.bundle import BUNDLE_VERSION, ModelBundle
from napari_deeppt.model.nn import AutoEncoder, MLPRegression

# -- helpers ---------------------------------------------------------------------------------


def _one_clean_line(message: str) -> None:
    """A message for people: one line, no torch internals, no advice to unpickle code."""
    assert "\n" not in message, message
    assert "weights_only" not in message, message
    assert "Traceback" not in message and "PytorchStreamReader" not in message, message
    assert len(message) < 600, message


def _resnet_state(arch: str, seed: int = 0) -> dict:
    import torchvision

    torch.manual_seed(seed)
    return getattr(torchvision.models, arch)(weights=None).state_dict()


def _tiny_bundle(feature: dict | None = None, n_genes: int = 2) -> ModelBundle:
    """A hand-made bundle (random weights) that fits 21-dim colour-stats features."""
    torch.manual_seed(0)
    feature = feature or {
        "extractor": "colour-stats",
        "weights_hash": "none",
        "feature_dim": 21,
        "tile_px": 64,
        "tile_mpp": 1.0,
        "stain": {"method": None},
    }
    dim = int(feature["feature_dim"])
    return ModelBundle(
        genes=[f"G{i}" for i in range(n_genes)],
        transform="log2p1",
        feature=feature,
        autoencoder=AutoEncoder(dim, 8).state_dict(),
        ensemble=[MLPRegression(n_genes, in_dim=8).state_dict() for _ in range(2)],
        latent_dim=8,
        demo=True,
    )


@pytest.fixture()
def bundle_file(tmp_path) -> Path:
    return _tiny_bundle().save(tmp_path / "model.deeppt")


# -- extractor weights ---------------------------------------------------------------------


def test_weights_of_another_architecture_name_a_tensor_that_does_not_fit(tmp_path):
    """resnet18 weights given for resnet50 are refused naming the file, resnet50 and a tensor."""
    from napari_deeppt.errors import WeightsMismatchError
    from napari_deeppt.features.extractors import load_extractor

    path = tmp_path / "r18.pth"
    torch.save(_resnet_state("resnet18"), path)
    with pytest.raises(WeightsMismatchError) as info:
        load_extractor("resnet50", path)
    assert isinstance(info.value, WeightsNotFoundError)
    message = str(info.value)
    _one_clean_line(message)
    assert str(path) in message and "resnet50" in message
    assert "layer1.0.conv1.weight is [64, 64, 3, 3] in the file but [64, 64, 1, 1]" in message
    assert "size mismatch" not in message


def test_weights_with_missing_and_unexpected_tensors_are_named(tmp_path):
    """A state dict lacking tensors or carrying foreign ones names a few of each."""
    from napari_deeppt.errors import WeightsMismatchError
    from napari_deeppt.features.extractors import load_extractor

    state = {k: v for k, v in _resnet_state("resnet18").items() if not k.startswith("layer4.")}
    state["head.extra.weight"] = torch.zeros(3)
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(WeightsMismatchError) as info:
        load_extractor("resnet18", path)
    message = str(info.value)
    _one_clean_line(message)
    assert "do not fit resnet18" in message
    assert "missing" in message and "layer4.0.conv1.weight" in message
    assert "unexpected" in message and "head.extra.weight" in message


def test_truncated_weights_file_says_truncated(tmp_path):
    """A .pth cut short (an interrupted download) says so in one line."""
    from napari_deeppt.features.extractors import load_extractor

    full = tmp_path / "full.pth"
    torch.save(_resnet_state("resnet18"), full)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(WeightsNotFoundError) as info:
        load_extractor("resnet18", cut)
    message = str(info.value)
    _one_clean_line(message)
    assert str(cut) in message and "truncated" in message


def test_random_bytes_as_weights_never_show_torchs_advice(tmp_path):
    """Random bytes as a .pth give one line naming the file, never torch's weights_only text."""
    from napari_deeppt.features.extractors import load_extractor

    path = tmp_path / "noise.pth"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    with pytest.raises(WeightsNotFoundError) as info:
        load_extractor("resnet18", path)
    message = str(info.value)
    _one_clean_line(message)
    assert str(path) in message and "not a readable weights file" in message


def test_a_pickled_model_instead_of_a_state_dict_says_what_to_save(tmp_path):
    """A whole pickled module (not a state dict) is refused with how to save weights instead."""
    import torchvision

    from napari_deeppt.features.extractors import load_extractor

    path = tmp_path / "whole-model.pth"
    torch.save(torchvision.models.resnet18(weights=None), path)
    with pytest.raises(WeightsNotFoundError) as info:
        load_extractor("resnet18", path)
    message = str(info.value)
    _one_clean_line(message)
    assert str(path) in message and "state_dict()" in message


def test_empty_weights_file(tmp_path):
    """An empty weights file says it is empty."""
    from napari_deeppt.features.extractors import load_extractor

    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    with pytest.raises(WeightsNotFoundError, match="empty") as info:
        load_extractor("resnet18", path)
    _one_clean_line(str(info.value))


def test_safetensors_of_the_wrong_model_are_refused(tmp_path):
    """A .safetensors file of another architecture is refused like a .pth one."""
    from safetensors.torch import save_file

    from napari_deeppt.errors import WeightsMismatchError
    from napari_deeppt.features.extractors import load_extractor

    path = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in _resnet_state("resnet18").items()}, str(path))
    with pytest.raises(WeightsMismatchError) as info:
        load_extractor("resnet50", path)
    message = str(info.value)
    _one_clean_line(message)
    assert str(path) in message and "in the file but" in message
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(WeightsNotFoundError) as info:
        load_extractor("resnet18", junk)
    _one_clean_line(str(info.value))
    assert str(junk) in str(info.value)


def test_check_weights_returns_the_hash_the_features_record(tmp_path):
    """check_weights gives the weights hash extract_features records, and refuses bad files."""
    from napari_deeppt.features.extractors import check_weights, load_extractor

    good = tmp_path / "r18.pth"
    torch.save(_resnet_state("resnet18"), good)
    expected = load_extractor("resnet18", good).weights_hash
    assert check_weights("resnet18", good) == expected
    assert expected == hashlib.sha256(good.read_bytes()).hexdigest()[:16]
    assert check_weights("resnet18", "random") == "random-0"
    assert check_weights("colour-stats") == "none"
    assert check_weights("resnet18", good, expected_hash=expected) == expected
    with pytest.raises(BundleMismatchError) as info:
        check_weights("resnet18", good, expected_hash="0123456789abcdef")
    message = str(info.value)
    assert str(good) in message and expected in message and "0123456789abcdef" in message
    with pytest.raises(WeightsNotFoundError):
        check_weights("resnet50", good)


# -- model bundles -------------------------------------------------------------------------


def _refused(path: Path) -> str:
    with pytest.raises(BundleError) as info:
        ModelBundle.load(path)
    message = str(info.value)
    _one_clean_line(message)
    assert message.startswith(f"{path}: ")
    return message


def test_random_bytes_are_not_a_bundle(tmp_path):
    """Random bytes as a .deeppt say 'not a napari-deeppt model bundle', never torch's text."""
    path = tmp_path / "noise.deeppt"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, np.uint8).tobytes())
    assert "not a napari-deeppt model bundle" in _refused(path)


def test_truncated_bundle_says_truncated(bundle_file, tmp_path):
    """The first half of a real bundle (an interrupted copy) says it is truncated."""
    cut = tmp_path / "half.deeppt"
    cut.write_bytes(bundle_file.read_bytes()[: bundle_file.stat().st_size // 2])
    message = _refused(cut)
    assert "not a napari-deeppt model bundle" in message and "truncated" in message


def test_empty_bundle_file(tmp_path):
    """An empty file says it is empty."""
    path = tmp_path / "empty.deeppt"
    path.write_bytes(b"")
    message = _refused(path)
    assert "not a napari-deeppt model bundle" in message and "empty" in message


def test_a_zip_that_is_not_a_bundle(tmp_path):
    """A zip archive of something else is not taken for a bundle."""
    path = tmp_path / "archive.deeppt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    assert "not a napari-deeppt model bundle" in _refused(path)


def test_torch_files_of_other_objects_are_not_bundles(tmp_path):
    """A torch file of a state dict, a list or a pickled module is refused plainly."""
    torch.save({"w": torch.zeros(2)}, tmp_path / "state.deeppt")
    torch.save([1, 2, 3], tmp_path / "list.deeppt")
    torch.save(AutoEncoder(4, 2), tmp_path / "module.deeppt")
    for name in ("state", "list", "module"):
        assert "not a napari-deeppt model bundle" in _refused(tmp_path / f"{name}.deeppt")


def test_a_directory_is_not_a_bundle(tmp_path):
    """A directory given as a bundle says so (no IsADirectoryError traceback)."""
    (tmp_path / "dir.deeppt").mkdir()
    assert "directory" in _refused(tmp_path / "dir.deeppt")


def test_a_bundle_from_a_newer_format_says_upgrade(bundle_file, tmp_path):
    """A bundle written by a newer napari-deeppt says so, and to upgrade."""
    payload = torch.load(bundle_file, weights_only=True)
    meta = json.loads(payload["metadata_json"])
    meta["version"] = BUNDLE_VERSION + 1
    payload["metadata_json"] = json.dumps(meta)
    newer = tmp_path / "newer.deeppt"
    torch.save(payload, newer)
    message = _refused(newer)
    assert "newer napari-deeppt" in message and "upgrade" in message


def test_a_bundle_whose_tensors_do_not_fit_is_refused_in_one_line(bundle_file, tmp_path):
    """A bundle whose ensemble does not fit its genes is refused without torch's listing."""
    payload = torch.load(bundle_file, weights_only=True)
    payload["ensemble"] = [MLPRegression(5, in_dim=8).state_dict()]
    bad = tmp_path / "bad.deeppt"
    torch.save(payload, bad)
    message = _refused(bad)
    assert "not a napari-deeppt model bundle" in message or "does not fit" in message


def test_bundle_sha256_is_the_hash_of_the_file(bundle_file, tmp_path):
    """A loaded (or saved) bundle carries the sha256 of its file's bytes."""
    from napari_deeppt.model.bundle import bundle_digest

    expected = hashlib.sha256(bundle_file.read_bytes()).hexdigest()
    assert ModelBundle.load(bundle_file).sha256 == expected
    assert bundle_digest(bundle_file) == expected
    bundle = _tiny_bundle()
    assert bundle.sha256 is None
    saved = bundle.save(tmp_path / "again.deeppt")
    assert bundle.sha256 == hashlib.sha256(saved.read_bytes()).hexdigest()


def test_bundle_save_never_overwrites_and_leaves_nothing_when_it_fails(
    bundle_file, tmp_path, monkeypatch
):
    """save refuses an existing file unless asked, and a failed save leaves no partial file."""
    before = bundle_file.read_bytes()
    with pytest.raises(FileExistsError):
        _tiny_bundle(n_genes=3).save(bundle_file)
    assert bundle_file.read_bytes() == before

    def half_then_fail(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04 partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(OSError):
        _tiny_bundle(n_genes=3).save(bundle_file, overwrite=True)
    assert bundle_file.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.deeppt"]


# -- bundle and features must fit ------------------------------------------------------------


@pytest.fixture(scope="module")
def colour_features(svs_slide, tmp_path_factory):
    from napari_deeppt import open_slide
    from napari_deeppt.features import extract_features
    from napari_deeppt.tiles import make_tile_grid

    slide = open_slide(svs_slide.path)
    grid = make_tile_grid(slide, tile_px=64, mpp=1.0).subset(np.arange(8))
    return extract_features(
        slide,
        grid,
        extractor="colour-stats",
        stain="macenko",
        cache_dir=tmp_path_factory.mktemp("features"),
        progress=False,
    )


def _bundle_for(features) -> ModelBundle:
    prov = features.provenance
    return _tiny_bundle(
        {
            "extractor": prov["extractor"],
            "weights_hash": prov["weights_hash"],
            "feature_dim": features.feature_dim,
            "tile_px": 64,
            "tile_mpp": 1.0,
            "stain": json.loads(json.dumps(prov["stain"])),
        }
    )


def test_features_that_fit_predict(colour_features):
    """Features made with the bundle's settings predict (the control for the tests below)."""
    from napari_deeppt.prediction import predict_from_features

    prediction = predict_from_features(colour_features, _bundle_for(colour_features))
    assert prediction.tile_expression.shape == (8, 2)


def test_another_stain_target_with_the_same_method_is_refused(colour_features):
    """Features normalised to another Macenko target do not pass for the bundle's."""
    from napari_deeppt.features import FeatureSet
    from napari_deeppt.prediction import predict_from_features

    bundle = _bundle_for(colour_features)
    stain = dict(colour_features.provenance["stain"])
    stain["max_concentrations"] = [x * 2 for x in stain["max_concentrations"]]
    other = FeatureSet(
        colour_features.features,
        colour_features.grid,
        {**colour_features.provenance, "stain": stain},
    )
    with pytest.raises(BundleMismatchError, match="stain") as info:
        predict_from_features(other, bundle)
    assert "max_concentrations" in str(info.value)


def test_tiles_of_another_size_are_refused_even_without_grid_provenance(colour_features, svs_slide):
    """The tile size is checked on the grid itself, not only on what the provenance says."""
    from napari_deeppt import open_slide
    from napari_deeppt.features import FeatureSet
    from napari_deeppt.prediction import predict_from_features
    from napari_deeppt.tiles import make_tile_grid

    bundle = _bundle_for(colour_features)
    grid = make_tile_grid(open_slide(svs_slide.path), tile_px=32, mpp=1.0).subset(np.arange(8))
    provenance = {k: v for k, v in colour_features.provenance.items() if k != "grid"}
    other = FeatureSet(colour_features.features, grid, provenance)
    with pytest.raises(BundleMismatchError, match="tile_px=32"):
        predict_from_features(other, bundle)


def test_extractor_and_weights_mismatches_name_both(colour_features):
    """Another extractor or weights hash is refused naming what was given and what is needed."""
    from napari_deeppt.features import FeatureSet
    from napari_deeppt.prediction import predict_from_features

    bundle = _bundle_for(colour_features)
    prov = colour_features.provenance
    other = FeatureSet(
        colour_features.features, colour_features.grid, {**prov, "weights_hash": "abc"}
    )
    with pytest.raises(BundleMismatchError, match=r"weights 'abc' \(the model needs 'none'\)"):
        predict_from_features(other, bundle)


def test_predict_refuses_other_weights_before_extracting(svs_slide, tmp_path):
    """predict with a weights file that is not the bundle's fails before any tile is read."""
    from napari_deeppt import open_slide
    from napari_deeppt.prediction import predict
    from napari_deeppt.tiles import make_tile_grid

    trained_with, other = tmp_path / "a.pth", tmp_path / "b.pth"
    torch.save(_resnet_state("resnet18", seed=1), trained_with)
    torch.save(_resnet_state("resnet18", seed=2), other)
    bundle = _tiny_bundle(
        {
            "extractor": "resnet18",
            "weights_hash": hashlib.sha256(trained_with.read_bytes()).hexdigest()[:16],
            "feature_dim": 512,
            "tile_px": 64,
            "tile_mpp": 1.0,
            "stain": {"method": None},
        }
    )
    slide = open_slide(svs_slide.path)
    grid = make_tile_grid(slide, tile_px=64, mpp=1.0).subset(np.arange(4))
    cache = tmp_path / "features"
    with pytest.raises(BundleMismatchError) as info:
        predict(slide, bundle, grid=grid, weights=other, cache_dir=cache, progress=False)
    assert str(other) in str(info.value)
    assert not cache.exists()  # refused before extracting anything


# -- demo caches -----------------------------------------------------------------------------


def test_a_corrupt_cached_sample_slide_is_made_again(tmp_path):
    """A cached synthetic sample whose bytes changed is regenerated (with a warning), not reused."""
    from napari_deeppt import open_slide
    from napari_deeppt.samples import synthetic_sample

    first = synthetic_sample(tmp_path)
    good = first.path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert synthetic_sample(tmp_path).path == first.path  # reused when intact
    first.path.write_bytes(good[: len(good) // 2])  # an interrupted write or a bad disk
    with pytest.warns(UserWarning, match="making it again"):
        again = synthetic_sample(tmp_path)
    assert again.path.read_bytes() == good
    assert open_slide(again.path).dimensions == (6144, 4096)


def test_a_sample_slide_without_its_record_is_not_trusted(tmp_path):
    """A file at the sample's name that this code did not record (or another key) is remade."""
    from napari_deeppt.samples import synthetic_sample

    first = synthetic_sample(tmp_path)
    good = first.path.read_bytes()
    first.path.write_bytes(b"II*\x00 something else")
    for sidecar in tmp_path.glob("*.json"):
        sidecar.unlink()
    with pytest.warns(UserWarning, match="making it again"):
        again = synthetic_sample(tmp_path)
    assert again.path.read_bytes() == good
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]


def _fast_demo(monkeypatch, calls: list) -> None:
    """Replace the demo's cohort and training (minutes on a CPU) by a hand-made bundle."""
    import napari_deeppt.model.training as training
    import napari_deeppt.testing as testing

    def cohort(directory, **kwargs):
        Path(directory).mkdir(parents=True, exist_ok=True)
        return SimpleNamespace(manifest=Path(directory) / "m.csv", expression="e.csv")

    def train(manifest, expression, out, **kwargs):
        calls.append(kwargs)
        _tiny_bundle().save(out, overwrite=kwargs.get("overwrite", False))

    monkeypatch.setattr(testing, "write_synthetic_cohort", cohort)
    monkeypatch.setattr(training, "train", train)


def test_a_corrupt_cached_demo_bundle_is_trained_again(tmp_path, monkeypatch):
    """A cached demo bundle whose bytes changed is remade (with a warning), never reused."""
    from napari_deeppt.samples import demo_bundle

    calls: list = []
    _fast_demo(monkeypatch, calls)
    path = demo_bundle(tmp_path, progress=False)
    assert len(calls) == 1 and ModelBundle.load(path).demo
    assert demo_bundle(tmp_path, progress=False) == path and len(calls) == 1  # reused
    path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(UserWarning, match="making it again"):
        again = demo_bundle(tmp_path, progress=False)
    assert len(calls) == 2 and ModelBundle.load(again).n_genes == 2


def test_the_demo_bundle_is_keyed_on_the_code_version(tmp_path, monkeypatch):
    """A demo bundle made by another napari-deeppt version is not reused by this one."""
    from napari_deeppt import _version
    from napari_deeppt.samples import demo_bundle

    calls: list = []
    _fast_demo(monkeypatch, calls)
    first = demo_bundle(tmp_path, progress=False)
    monkeypatch.setattr(_version, "__version__", "99.0.0")
    second = demo_bundle(tmp_path, progress=False)
    assert len(calls) == 2 and second != first
    assert json.loads(Path(f"{second}.json").read_text())["key"]["napari_deeppt"] == "99.0.0"
