"""Compiled models kept on disk (issue 15): built once, loaded by later processes, keyed on
what the compiled code depends on, never another model's or a stale one."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from napari_deeppt.features import compiled
from napari_deeppt.features.compiled import (
    CompiledPackage,
    compiled_dir,
    needs_fixed_batch,
    prepare_model,
)
from napari_deeppt.io import keep_recent

SIZE, BATCH = 16, 2
CPU = torch.device("cpu")


def _tiny(seed: int = 0, width: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    with torch.no_grad():  # a BatchNorm that does something: freezing folds it into the conv
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


def _x() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(BATCH, 3, SIZE, SIZE).contiguous(memory_format=torch.channels_last)


@pytest.fixture(autouse=True)
def _fresh(tmp_path, monkeypatch):
    """Each test starts with an empty package folder and no model kept in memory."""
    monkeypatch.setenv("NAPARI_DEEPPT_CACHE", str(tmp_path / "cache"))
    compiled._PREPARED.clear()
    yield
    compiled._PREPARED.clear()


def _prepare(model: nn.Module, key: tuple, mode: object = True, n_tiles: int = 10) -> object:
    return prepare_model(model, CPU, mode, n_tiles, key, batch=BATCH, input_size=SIZE)


def _no_build(*args, **kwargs):
    raise AssertionError("a package was built although one was on disk")


def test_package_built_once_then_loaded_by_a_fresh_process(monkeypatch) -> None:
    model = _tiny()
    first = _prepare(model, ("tiny", "w0"))
    assert isinstance(first, CompiledPackage) and needs_fixed_batch(first)
    with torch.inference_mode():
        expected = model(_x())
        torch.testing.assert_close(first(_x()), expected, rtol=1e-4, atol=1e-5)
    assert [p.suffix for p in sorted(compiled_dir().iterdir())] == [".json", ".pt2"]
    # a fresh process: nothing in memory; "auto" for a few tiles loads it, never builds
    compiled._PREPARED.clear()
    monkeypatch.setattr(compiled, "_build", _no_build)
    again = _prepare(_tiny(), ("tiny", "w0"), mode="auto", n_tiles=3)
    assert isinstance(again, CompiledPackage) and again.path == first.path
    with torch.inference_mode():
        torch.testing.assert_close(again(_x()), expected, rtol=1e-4, atol=1e-5)


def test_the_package_is_frozen_into_onednn_convolutions() -> None:
    """Freezing must really happen when the package is built: inductor freezes only with
    gradients off, and without it the package ran plain convolutions (ResNet50 on a 2-core
    AMD EPYC: 19.7 tiles/s against 22 frozen, as ``torch.compile`` with freezing gives)."""
    import zipfile

    package = _prepare(_tiny(), ("tiny", "w0"))
    with zipfile.ZipFile(package.path) as archive:
        (wrapper,) = [name for name in archive.namelist() if name.endswith("wrapper.cpp")]
        code = archive.read(wrapper).decode()
    assert "mkldnn__convolution_pointwise" in code  # weights prepacked, ReLU fused
    assert "aoti_torch_cpu_convolution(" not in code


def test_auto_without_a_package_runs_eagerly_and_builds_nothing() -> None:
    model = _tiny()
    prepared = _prepare(model, ("tiny", "w0"), mode="auto", n_tiles=300)
    assert prepared is model and not needs_fixed_batch(prepared)
    assert not compiled_dir().exists() or not any(compiled_dir().iterdir())


def test_compile_false_never_touches_the_packages(monkeypatch) -> None:
    monkeypatch.setattr(compiled, "_load", _no_build)
    model = _tiny()
    assert _prepare(model, ("tiny", "w0"), mode=False) is model


def test_other_weights_structure_or_shape_get_their_own_package() -> None:
    base = _prepare(_tiny(), ("tiny", "w0"))
    other_weights = _prepare(_tiny(seed=5), ("tiny", "w1"))
    other_structure = _prepare(_tiny(width=6), ("tiny", "w0"))
    paths = {base.path, other_weights.path, other_structure.path}
    assert len(paths) == 3
    with torch.inference_mode():  # each computes its own model, not the first one's
        assert other_weights(_x()).shape == (BATCH, 4)
        assert other_structure(_x()).shape == (BATCH, 6)
        torch.testing.assert_close(other_weights(_x()), _tiny(seed=5)(_x()), rtol=1e-4, atol=1e-5)


def test_fields_name_torch_cpu_and_model() -> None:
    fields = compiled.package_fields(_tiny(), ("tiny", "w0"), (BATCH, 3, SIZE, SIZE))
    assert fields["torch"] == torch.__version__
    assert fields["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert fields["model"] == ["tiny", "w0"] and fields["input"]["shape"] == [2, 3, 16, 16]
    changed = dict(fields, torch="0.0.0")
    assert compiled._key(changed) != compiled._key(fields)


def test_a_package_recorded_for_other_fields_is_not_used(monkeypatch) -> None:
    first = _prepare(_tiny(), ("tiny", "w0"))
    record = first.path.with_suffix(".json")
    fields = json.loads(record.read_text())
    other = "AVX2" if fields["cpu_capability"] != "AVX2" else "AVX512"  # not this CPU
    record.write_text(json.dumps(dict(fields, cpu_capability=other)))  # built elsewhere
    compiled._PREPARED.clear()
    built = []
    real_build = compiled._build
    monkeypatch.setattr(compiled, "_build", lambda *a: built.append(1) or real_build(*a))
    _prepare(_tiny(), ("tiny", "w0"))
    assert built == [1] and json.loads(record.read_text()) == fields


def test_a_damaged_package_is_rebuilt_with_a_warning() -> None:
    first = _prepare(_tiny(), ("tiny", "w0"))
    first.path.write_bytes(b"not a package")
    compiled._PREPARED.clear()
    with pytest.warns(UserWarning, match="does not load"):
        again = _prepare(_tiny(), ("tiny", "w0"))
    with torch.inference_mode():
        torch.testing.assert_close(again(_x()), _tiny()(_x()), rtol=1e-4, atol=1e-5)


def test_a_failed_compile_runs_eagerly_with_a_warning(monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(compiled, "_build", broken)
    model = _tiny()
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler found.*running eagerly"):
        assert _prepare(model, ("tiny", "w0")) is model


def test_compile_must_be_a_known_choice(svs_slide) -> None:
    """Refused by the parameters, before any slide is read or model built."""
    from napari_deeppt import extract_features
    from napari_deeppt.features.params import FeatureParams

    with pytest.raises(ValueError, match="compile must be"):
        _prepare(_tiny(), ("tiny", "w0"), mode="always")
    with pytest.raises(ValueError, match="compile must be True, False, 'auto' or 'cached'"):
        FeatureParams(compile="yes")
    with pytest.raises(ValueError, match="compile must be"):
        extract_features(svs_slide.path, compile="always", progress=False)


def test_extraction_with_the_package_equals_eager_and_a_later_run_loads_it(
    svs_slide, monkeypatch
) -> None:
    """extract_features compiled (a short last batch padded) gives the eager features; a
    later process's small run (compile="auto") uses the package instead of running eagerly."""
    import numpy as np

    from napari_deeppt import extract_features, open_slide
    from napari_deeppt.features import ExtractorSpec, register_extractor
    from napari_deeppt.tiles import make_tile_grid

    register_extractor(ExtractorSpec("tiny-compiled", _tiny, 4, input_size=32))
    slide = open_slide(svs_slide.path)
    grid = make_tile_grid(slide, tile_px=128, mpp=0.5, min_tissue=0.0).subset(np.arange(11))
    run = {"extractor": "tiny-compiled", "weights": "random", "batch_size": 4,
           "use_cache": False, "progress": False, "dtype": "float32", "device": "cpu"}  # fmt: skip
    eager = extract_features(slide, grid, compile=False, **run).features
    built = extract_features(slide, grid, compile=True, **run).features
    np.testing.assert_allclose(built, eager, rtol=1e-4, atol=1e-5)
    assert len(list(compiled_dir().glob("*.pt2"))) == 1

    compiled._PREPARED.clear()  # a fresh process
    monkeypatch.setattr(compiled, "_build", _no_build)
    calls = []
    real_load = compiled._load
    monkeypatch.setattr(compiled, "_load", lambda *a: calls.append(1) or real_load(*a))
    later = extract_features(slide, grid.subset(np.arange(3)), compile="auto", **run).features
    assert (
        calls
        and compiled._PREPARED
        and isinstance(next(iter(compiled._PREPARED.values())), CompiledPackage)
    )
    np.testing.assert_allclose(later, eager[:3], rtol=1e-4, atol=1e-5)


def _plain_net() -> type:
    class Net(nn.Sequential):
        def forward(self, x):
            return super().forward(x)

    return Net


def _doubling_net() -> type:
    class Net(nn.Sequential):
        def forward(self, x):
            return 2 * super().forward(x)

    return Net


def test_a_changed_forward_is_another_package() -> None:
    """Same structure (repr) and weights, other forward code: another key."""
    plain, doubled = _plain_net()(*_tiny()), _doubling_net()(*_tiny())
    shape = (BATCH, 3, SIZE, SIZE)
    fields = [compiled.package_fields(m, ("tiny", "w0"), shape) for m in (plain, doubled)]
    assert fields[0]["structure"] == fields[1]["structure"]
    assert compiled._key(fields[0]) != compiled._key(fields[1])
    assert fields[0]["code"]["packages"]["torchvision"]


def test_cached_loads_a_package_but_never_builds_one(monkeypatch) -> None:
    model = _tiny()
    monkeypatch.setattr(compiled, "_build", _no_build)
    assert _prepare(model, ("tiny", "w0"), mode="cached", n_tiles=10_000) is model
    monkeypatch.undo()
    monkeypatch.setenv("NAPARI_DEEPPT_CACHE", str(compiled_dir().parent))
    built = _prepare(_tiny(), ("tiny", "w0"))
    compiled._PREPARED.clear()
    monkeypatch.setattr(compiled, "_build", _no_build)
    loaded = _prepare(_tiny(), ("tiny", "w0"), mode="cached")
    assert isinstance(loaded, CompiledPackage) and loaded.path == built.path


def test_the_model_kept_in_memory_is_never_another_architectures() -> None:
    """Two extractors registered under one name with the same weights hash (random weights
    in one process) do not share the model kept between slides."""
    small, wide = _tiny(width=4), _tiny(width=6)
    assert _prepare(small, ("same", "random-0"), mode=False) is small
    assert _prepare(wide, ("same", "random-0"), mode=False) is wide
    assert _prepare(_tiny(width=6), ("same", "random-0"), mode=False) is wide  # kept


def test_only_the_most_recently_used_packages_are_kept(monkeypatch) -> None:
    """Packages pile up with every torch, weights and batch size (about 100 MB each for
    ResNet50): the least recently used beyond KEEP_PACKAGES go, the one in use never."""
    monkeypatch.setattr(compiled, "KEEP_PACKAGES", 2)
    first = _prepare(_tiny(), ("tiny", "w0")).path
    second = _prepare(_tiny(seed=5), ("tiny", "w1")).path
    compiled._PREPARED.clear()
    _prepare(_tiny(), ("tiny", "w0"))  # the first is used again: now the most recent
    third = _prepare(_tiny(seed=6), ("tiny", "w2")).path
    kept = {p.name for p in compiled_dir().iterdir()}
    assert kept == {first.name, first.with_suffix(".json").name, third.name,
                    third.with_suffix(".json").name}  # fmt: skip
    assert not second.exists()


def test_a_package_served_from_memory_stays_the_most_recently_used_on_disk(monkeypatch) -> None:
    """A long session reuses the package kept in memory: each use marks its file used, so
    another process's clean-up removes older packages, never the one in use."""
    monkeypatch.setattr(compiled, "KEEP_PACKAGES", 2)
    other = _prepare(_tiny(seed=5), ("tiny", "w1")).path  # another process's
    compiled._PREPARED.clear()
    kept = _prepare(_tiny(), ("tiny", "w0"))  # this session's model, from memory from here on
    in_use = kept.path
    os.utime(in_use, (1, 1))  # loaded long ago
    assert _prepare(_tiny(), ("tiny", "w0")) is kept  # served from memory...
    assert in_use.stat().st_mtime > other.stat().st_mtime  # ...and marked used
    third = compiled_dir() / ("f" * 32 + ".pt2")  # another process's newer package...
    third.write_bytes(b"")
    keep_recent(third, 2)  # ...and its clean-up: it keeps its own and the most recently used
    assert in_use.exists() and not other.exists()
