"""Pathology foundation models as named presets (issue 14).

Known answers: the published embedding widths and sizes of each architecture, built on the
meta device (no memory); a saved state dict, a Hugging Face snapshot folder and the hub
cache give back the features of the model they were saved from (shallow copies of the
presets: the same code with two blocks); Virchow2's embedding is its class token beside
the mean of its patch tokens; H-optimus normalises with its own statistics.
"""

from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np
import pytest
import torch

from napari_deeppt.errors import DeepPTError, WeightsMismatchError, WeightsNotFoundError
from napari_deeppt.features import extractors, presets
from napari_deeppt.features.extractors import get_spec, list_extractors, load_extractor

pytest.importorskip("timm")

#: name → (embedding width, parameters in millions as published, input size)
PUBLISHED = {
    "uni": (1024, 303, 224),
    "uni2-h": (1536, 681, 224),
    "virchow2": (2560, 632, 224),
    "h-optimus-0": (1536, 1135, 224),
    "h-optimus-1": (1536, 1135, 224),
    "prov-gigapath": (1536, 1135, 224),
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_every_preset_builds_its_published_architecture_and_width(name):
    width, millions, size = PUBLISHED[name]
    spec = get_spec(name)
    with torch.device("meta"):
        model = spec.build()
        out = model(torch.empty(2, 3, spec.input_size, spec.input_size))
    assert tuple(out.shape) == (2, width) == (2, spec.feature_dim)
    assert spec.input_size == size
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params - millions) / millions < 0.01, params
    assert spec.hf_repo and spec.licence


def test_list_extractors_names_what_can_be_built_here(monkeypatch):
    names = list_extractors()
    assert names[0] == "resnet50"
    assert set(PUBLISHED) <= set(names)
    has_transformers = importlib.util.find_spec("transformers") is not None
    assert ("phikon-v2" in names) == has_transformers
    monkeypatch.setattr(presets, "_installed", lambda package: package != "transformers")
    names = list_extractors()
    assert "phikon-v2" not in names and "conch-v1.5" not in names and "uni" in names


@pytest.mark.parametrize("name", ["phikon-v2", "conch-v1.5"])
def test_presets_of_a_missing_package_are_refused_saying_what_to_install(name, monkeypatch):
    monkeypatch.setattr(presets, "_installed", lambda package: package != "transformers")
    with pytest.raises(DeepPTError, match=rf"{name}.*needs the transformers package.*pip install"):
        load_extractor(name, "random")


def _shallow(name: str, depth: int = 2) -> extractors.ExtractorSpec:
    """The preset with ``depth`` blocks: the same build code, small enough for a test."""
    build = get_spec(name).build
    options = {**build.options, "depth": depth}
    return dataclasses.replace(
        get_spec(name), build=presets._vit(build.arch, build.pooling, **options)
    )


@pytest.fixture
def shallow(monkeypatch):
    """Replace presets by shallow copies for the test's duration."""

    def install(*names: str) -> None:
        for name in names:
            monkeypatch.setitem(extractors.EXTRACTORS, name, _shallow(name))

    return install


def _tiles(n: int = 3, size: int = 96, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _save(model: torch.nn.Module, path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def test_a_saved_state_dict_a_snapshot_and_the_hub_cache_round_trip(shallow, tmp_path, monkeypatch):
    shallow("virchow2")
    made = load_extractor("virchow2", "random", seed=3)
    want = made.embed(_tiles())
    assert want.shape == (3, 2560)
    weights = tmp_path / "virchow2.safetensors"
    _save(made.model, weights)
    from_file = load_extractor("virchow2", weights)
    np.testing.assert_allclose(from_file.embed(_tiles()), want, rtol=1e-5, atol=1e-5)
    # the hub's layout: models--paige-ai--Virchow2/{refs/main, snapshots/<rev>/model.safetensors}
    repo = tmp_path / "hub" / "models--paige-ai--Virchow2"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    _save(made.model, repo / "snapshots" / "abc123" / "model.safetensors")
    (repo / "snapshots" / "abc123" / "config.json").write_text("{}")
    for given in (repo / "snapshots" / "abc123", repo, tmp_path / "hub"):
        loaded = load_extractor("virchow2", given)
        assert loaded.weights_hash == from_file.weights_hash, given
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    cached = load_extractor("virchow2")  # no weights given: the local hub cache
    np.testing.assert_allclose(cached.embed(_tiles()), want, rtol=1e-5, atol=1e-5)


def test_virchow2_embeds_its_class_token_beside_the_mean_of_its_patch_tokens(shallow):
    shallow("virchow2")
    loaded = load_extractor("virchow2", "random")
    model = loaded.model
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        tokens = model.forward_features(x)
        got = model(x)
    assert model.num_prefix_tokens == 5  # the class token and 4 registers
    want = torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], dim=1)
    torch.testing.assert_close(got, want)


def test_h_optimus_normalises_with_its_own_statistics(shallow):
    shallow("h-optimus-0")
    loaded = load_extractor("h-optimus-0", "random")
    tiles = _tiles(2, 224)
    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(presets.H_OPTIMUS_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(presets.H_OPTIMUS_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        want = loaded.model((x - mean) / std).numpy()
    np.testing.assert_allclose(loaded.embed(tiles), want, rtol=1e-4, atol=1e-4)
    assert loaded.spec.mean == (0.707223, 0.578729, 0.703617)


def test_weights_of_another_model_are_refused_naming_the_file_and_a_tensor(shallow, tmp_path):
    shallow("uni", "virchow2")
    path = tmp_path / "uni.safetensors"
    _save(load_extractor("uni", "random").model, path)
    with pytest.raises(WeightsMismatchError) as info:
        load_extractor("virchow2", path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "virchow2" in message
    assert "cls_token is [1, 1, 1024] in the file but [1, 1, 1280] in virchow2" in message
    assert "1 tensor virchow2 needs is missing (e.g. reg_token)" in message  # its registers
    assert "weights_only" not in message and "Traceback" not in message


def test_absent_weights_say_where_they_come_from_and_on_what_terms(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(WeightsNotFoundError) as info:
        load_extractor("h-optimus-0")
    message = str(info.value)
    assert "bioptimus/H-optimus-0" in message and "Apache-2.0" in message
    assert "weights=PATH" in message and "--weights" in message
    with pytest.raises(WeightsNotFoundError, match=r"nowhere: weights file not found"):
        load_extractor("uni", tmp_path / "nowhere")
    empty = tmp_path / "snapshot"
    empty.mkdir()
    with pytest.raises(WeightsNotFoundError, match=r"snapshot: is a folder without a weights"):
        load_extractor("uni", empty)


def test_a_large_model_on_the_cpu_says_its_expected_time_before_starting(shallow, svs_slide):
    from napari_deeppt import extract_features, open_slide
    from napari_deeppt.model.sample_features import spot_grid

    shallow("h-optimus-0")
    slide = open_slide(svs_slide.path)
    grid = spot_grid(slide, np.array([600.0, 900.0]), np.array([500.0, 700.0]), 112, 0.5)
    expected = r"h-optimus-0 on the CPU: about .* s a tile .* min for 2 tiles"
    with pytest.warns(extractors.SlowOnCPUWarning, match=expected):
        fs = extract_features(
            slide, grid, extractor="h-optimus-0", weights="random", device="cpu",
            stain=None, progress=False, use_cache=False,
        )  # fmt: skip
    assert fs.features.shape == (2, 1536)


def test_embed_refuses_what_is_not_uint8_rgb_tiles():
    loaded = load_extractor("resnet18", "random")
    with pytest.raises(DeepPTError, match=r"\(N, H, W, 3\) uint8"):
        loaded.embed(np.zeros((2, 64, 64, 3), np.float32))
    assert loaded.embed(_tiles(2, 64)).shape == (2, 512)


def test_phikon_v2_is_built_by_transformers_from_its_snapshot_folder(tmp_path, monkeypatch):
    """A snapshot folder as Hugging Face lays it out (config.json, model.safetensors) of a
    small DINOv2: the preset's embedding is that model's class token on the normalised
    tiles, from the folder and from the hub cache."""
    transformers = pytest.importorskip("transformers")
    config = transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        patch_size=16, image_size=224,
    )  # fmt: skip
    torch.manual_seed(0)
    folder = tmp_path / "hub" / "models--owkin--phikon-v2" / "snapshots" / "rev1"
    transformers.Dinov2Model(config).eval().save_pretrained(folder)
    spec = dataclasses.replace(get_spec("phikon-v2"), feature_dim=32)
    monkeypatch.setitem(extractors.EXTRACTORS, "phikon-v2", spec)
    tiles = _tiles(2, 224)
    loaded = load_extractor("phikon-v2", folder)
    reference = transformers.Dinov2Model.from_pretrained(folder).eval()
    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (spec.mean, spec.std))
    with torch.no_grad():
        want = reference(pixel_values=(x - mean) / std).last_hidden_state[:, 0].numpy()
    np.testing.assert_allclose(loaded.embed(tiles), want, rtol=1e-4, atol=1e-4)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert load_extractor("phikon-v2").weights_hash == loaded.weights_hash
    with pytest.raises(DeepPTError, match="snapshot folder"):
        load_extractor("phikon-v2", "random")


_TITAN_CONFIG = """
from transformers import PretrainedConfig


class TitanConfig(PretrainedConfig):
    model_type = "fake_titan"

    def __init__(self, width=768, **kwargs):
        self.width = width
        super().__init__(**kwargs)
"""
_TITAN_MODEL = """
import torch
from transformers import PreTrainedModel

from .configuration_titan import TitanConfig


class Conch(torch.nn.Module):
    def __init__(self, width):
        super().__init__()
        self.proj = torch.nn.Linear(3, width)

    def forward(self, x):
        return self.proj(x.mean(dim=(2, 3)))


class Titan(PreTrainedModel):
    config_class = TitanConfig

    def __init__(self, config):
        super().__init__(config)
        self.conch = Conch(config.width)
        self.post_init()

    def _init_weights(self, module):
        pass

    def return_conch(self):
        return self.conch, None
"""


def test_conch_v15_comes_from_the_titan_snapshot_folder_and_its_own_code(tmp_path):
    """CONCH v1.5 ships inside TITAN's repository, built by its remote code: a snapshot
    folder laid out the same way (config.json naming its code, the code, the weights), with
    a stand-in CONCH, is loaded from the folder alone and embeds 448 px tiles."""
    import json

    pytest.importorskip("transformers")
    from safetensors.torch import save_file

    folder = tmp_path / "TITAN"
    folder.mkdir()
    (folder / "configuration_titan.py").write_text(_TITAN_CONFIG)
    (folder / "modeling_titan.py").write_text(_TITAN_MODEL)
    auto = {"AutoConfig": "configuration_titan.TitanConfig", "AutoModel": "modeling_titan.Titan"}
    config = {"model_type": "fake_titan", "width": 768, "auto_map": auto}
    (folder / "config.json").write_text(json.dumps(config))
    weight, bias = torch.randn(768, 3), torch.randn(768)
    save_file({"conch.proj.weight": weight, "conch.proj.bias": bias}, folder / "model.safetensors")
    loaded = load_extractor("conch-v1.5", folder)
    assert loaded.spec.input_size == 448
    tiles = _tiles(2, 448)
    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (loaded.spec.mean, loaded.spec.std))
    want = (((x - mean) / std).mean(dim=(2, 3)) @ weight.T + bias).numpy()
    np.testing.assert_allclose(loaded.embed(tiles), want, rtol=1e-4, atol=1e-4)


def test_an_extractor_is_built_once_for_a_cohort_and_again_when_its_file_changes(
    tmp_path, monkeypatch
):
    """extract_features loads the extractor for every slide: a foundation model must not be
    rebuilt and re-read per slide, yet a rewritten weights file or another spec is new."""
    import os

    builds = []
    spec = get_spec("resnet18")

    def counted():
        builds.append(1)
        return spec.build()

    monkeypatch.setitem(extractors.EXTRACTORS, "resnet18", dataclasses.replace(spec, build=counted))
    path = tmp_path / "r18.pth"
    torch.save(load_extractor("resnet18", "random", seed=1).model.state_dict(), path)
    first = load_extractor("resnet18", path)
    assert load_extractor("resnet18", path) is first and len(builds) == 2  # random, then path
    assert load_extractor("resnet18", "random", seed=2) is not first
    torch.save(load_extractor("resnet18", "random", seed=3).model.state_dict(), path)
    os.utime(path, ns=(1, 10**18))  # another mtime, whatever the clock's resolution
    again = load_extractor("resnet18", path)
    assert again is not first and again.weights_hash != first.weights_hash
    monkeypatch.setitem(extractors.EXTRACTORS, "resnet18", dataclasses.replace(spec))
    assert load_extractor("resnet18", path) is not again  # another spec: built anew
