"""The extractor in bfloat16, where the hardware computes in it natively.

On a CPU without a GPU the model is most of a tile's cost, and fp32 cannot go faster than
the cores' floating-point peak. CPUs with bfloat16 dot products (x86: AVX-512 BF16 — AMD Zen
4 and later, Intel Cooper Lake — or AMX — Intel Sapphire Rapids and later) do twice the
multiply-adds per instruction in bfloat16, or many more with AMX. ``precision="bfloat16"``
runs the extractor with bfloat16 weights and activations, its input cast from the pipeline's
float32 and its features cast back to float32 (then stored as ever, float16 by default).

Features agree with fp32's far more closely than int8's (random ResNet50 weights on a
synthetic H&E slide: 0.9999 of the variance across tiles, every tile's cosine ≥ 0.99999,
against int8's 0.995 and 0.999) because bfloat16 keeps float32's range and the convolutions
accumulate in float32. On such a CPU (2-core AMD EPYC with AVX-512 BF16) ResNet50 ran 2.0 ×
as fast as in float32, eager and compiled alike. It is an opt-in: DeepPT's recipe, and every
default, stays fp32.

Where bfloat16 is not native, torch still computes it, emulated, slower than float32: the
choice is refused there, in one line, before any weights are looked for. On CUDA it runs on
GPUs with bfloat16 (float32 already runs under bfloat16 autocast there).
"""

from __future__ import annotations

import copy
import platform
from typing import Any

import torch

from ..errors import DeepPTError

__all__ = ["BFloat16Model", "bfloat16_model", "native_bfloat16", "require_bfloat16"]

#: the last bfloat16 copy made, with the model it was made from, by the caller's key
_KEPT: dict[Any, tuple[Any, Any]] = {}


class BFloat16Model(torch.nn.Module):
    """A model run in bfloat16: float32 in, bfloat16 inside, float32 out.

    Parameters
    ----------
    model
        The extractor's ``torch.nn.Module``, left as it is: a copy is converted to bfloat16.

    Attributes
    ----------
    wrapped
        The bfloat16 model.
    precision
        ``"bfloat16"`` (compiled packages record it: :mod:`.compiled`).
    """

    precision = "bfloat16"

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.wrapped = copy.deepcopy(model).to(torch.bfloat16)

    def forward(self, x: Any) -> Any:
        """The wrapped model's output for ``x`` (any float dtype), as float32."""
        return self.wrapped(x.to(torch.bfloat16)).float()


def bfloat16_model(model: Any, key: Any) -> BFloat16Model:
    """The :class:`BFloat16Model` of ``model``, the last one made kept for the process.

    Copying ResNet50 into bfloat16 takes about half a second: a cohort run, or a dock run
    again on the same slide, would pay it every slide.

    Parameters
    ----------
    model
        The float32 extractor module.
    key
        What identifies its weights (extractor, weights hash); the copy is reused only for
        the same key and the very same ``model`` object.

    Returns
    -------
    BFloat16Model
    """
    kept = _KEPT.get(key)
    if kept is None or kept[0] is not model:
        _KEPT.clear()  # one kept: models are large
        kept = _KEPT[key] = (model, BFloat16Model(model))
    return kept[1]


def native_bfloat16(device: Any) -> bool:
    """Whether ``device`` computes in bfloat16 natively (faster than in float32).

    Parameters
    ----------
    device
        A ``torch.device``.

    Returns
    -------
    bool
        CPU: x86 with AVX-512 BF16 or AMX tiles, or another architecture whose oneDNN says
        it has bfloat16 (Arm with BF16); CUDA: a GPU with bfloat16; else False.
    """
    if device.type == "cuda":
        # torch counts emulated bfloat16 as supported unless told not to (pre-Ampere GPUs)
        return bool(
            torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
        )
    if device.type != "cpu":
        return False
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def require_bfloat16(device: Any) -> None:
    """Raise unless ``device`` runs bfloat16 natively.

    Parameters
    ----------
    device
        A ``torch.device`` (not a name: its ``type`` is read).

    Raises
    ------
    DeepPTError
        ``device`` is neither the CPU nor CUDA, or has no native bfloat16.
    """
    if device.type not in ("cpu", "cuda"):
        raise DeepPTError(
            f"precision 'bfloat16' runs on CPUs and CUDA GPUs with bfloat16, not on "
            f"{device}; use precision 'float32'"
        )
    if not native_bfloat16(device):
        if device.type == "cpu":
            what, needs = "this CPU has", "CPUs need AVX-512 BF16 or AMX"
            instead = "precision 'float32' (or 'int8')"
        else:
            what, needs = f"{device} has", "GPUs need compute capability 8.0 or later"
            instead = "precision 'float32' (float16 autocast there)"
        raise DeepPTError(
            f"precision 'bfloat16': {what} no native bfloat16 ({needs}), so it would run "
            f"slower than float32; use {instead}"
        )
