"""Devices: a device asked for that this machine lacks is a one-line DeepPTError, never a
failure deep inside torch later (or a misleading refusal such as int8's)."""

from __future__ import annotations

import pytest
import torch

from napari_deeppt.devices import resolve_device
from napari_deeppt.errors import DeepPTError


def test_the_cpu_and_torch_devices_are_taken_as_they_are():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("CPU") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_asked_for_without_cuda_is_refused():
    for name in ("cuda", "cuda:1"):
        with pytest.raises(DeepPTError, match="CUDA is not available here; use device='auto'"):
            resolve_device(name)


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_mps_asked_for_without_mps_is_refused():
    with pytest.raises(DeepPTError, match="MPS is not available here; use device='auto'"):
        resolve_device("mps")
    with pytest.raises(DeepPTError, match="MPS is not available"):  # before int8's refusal
        from napari_deeppt.features.params import FeatureParams

        resolve_device(FeatureParams(device="mps", precision="int8").device)


@pytest.mark.skipif(
    torch.cuda.is_available() or torch.backends.mps.is_available(), reason="an accelerator"
)
def test_auto_is_the_cpu_without_an_accelerator():
    assert resolve_device("auto") == torch.device("cpu")


def test_a_name_that_is_no_device_is_one_line_before_any_work(tmp_path, capsys):
    """A mistyped device ('quantum', 'gpu', 'cuda:x', 3) is a DeepPTError in the API and an
    argparse error (exit 2) on the command line before any slide is read: never torch's
    RuntimeError and traceback."""
    from napari_deeppt.cli import main

    assert resolve_device("cpu:0") == torch.device("cpu:0")
    for name in ("quantum", "gpu", "cuda:x", "meta", 3):
        with pytest.raises(DeepPTError, match="is not one napari-deeppt runs on"):
            resolve_device(name)
    with pytest.raises(SystemExit) as info:
        main(["features", str(tmp_path / "no.svs"), "--out", str(tmp_path / "o"),
              "--device", "quantum"])  # fmt: skip
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().endswith(
        "argument --device: device 'quantum' is not one napari-deeppt runs on; use auto, "
        "cpu, cuda, cuda:N (the N-th GPU) or mps"
    )
    assert "Traceback" not in err and not (tmp_path / "o").exists()
