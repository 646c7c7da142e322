"""ResNet features in int8 on the CPU: post-training static quantization, calibrated once.

On a CPU without a GPU the model is most of a tile's cost (ResNet50: 8.2 GFLOP per 224²
tile), and fp32 cannot go faster than the cores' floating-point peak. ``precision="int8"``
runs the convolutions in 8-bit integers with torch's ``onednn`` quantized engine on x86
CPUs (1.25–1.4 × the speed of its ``x86`` engine on a 2-core AVX2 CPU): about 1.8 × the
compiled fp32 model there, for features that differ from fp32's by the quantization error
(bounded in the tests; check it on your own weights with ``benchmarks/bench_features.py
--precision int8 --weights FILE``). It is an opt-in: DeepPT's recipe, and every default,
stays fp32.

How the model is made, the same way every time for the same weights:

- torchvision's quantizable ResNet of the same architecture gets the extractor's weights,
  its convolutions, batch norms and ReLUs are fused, and per-channel weight and histogram
  activation observers are inserted (torch's ``x86`` qconfig whatever the engine: 7-bit
  activations, safe on CPUs without VNNI instructions);
- it is calibrated on fixed inputs: every tile of the bundled CMU-1-Small-Region slide
  (real H&E, CC0) with ≥ 50 % tissue at 512 px, 0.5 µm/px and a stride of 256 px,
  Macenko-normalised with DeepPT's reference and resized as extraction does — so the
  quantized model depends on the weights only, never on the slide being extracted;
- layer4's output is dequantized before the global average pool, so the 2048 features are
  means of 49 quantized values each rather than themselves rounded to 8 bits.

Calibrating takes about 15 s on two cores, so the quantized weights are kept on disk,
``<cache_root>/quantized/<key>.pt``, keyed on what makes them: a digest of the fp32 weights
themselves, the architecture, the torch and torchvision versions, the quantized engine, the
calibration recipe and the package version. The file records those fields and is used only
when they match; one that does not load is removed and made again (with a warning). In a
process the last one is also kept in memory. torch's eager-mode quantization API is
deprecated in favour of torchao; its deprecation warnings are silenced here and the torch
version is pinned.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import DeepPTError
from ..progress import check_cancelled, make_progress

__all__ = ["QUANTIZABLE", "agreement", "int8_identity", "int8_model", "require_int8"]

#: Extractors with an int8 version: torchvision's quantizable architectures.
QUANTIZABLE = ("resnet18", "resnet50")

_CALIBRATION = {"tile_px": 512, "mpp": 0.5, "stride_px": 256, "min_tissue": 0.5}
_CALIBRATION_BATCH = 16
_RECIPE = 3  # bump when the calibration or the model's layout changes (3: the Macenko fit
# computed channel-first, calibration tiles the same to float32 rounding, not bit for bit)
#: int8 models kept in :func:`quantized_dir` (about 25 MB each), the most recently used.
KEEP_MODELS = 4
#: the last int8 model and its file, by the JSON of what determines it
_KEPT: dict[str, tuple[Any, Path]] = {}


def int8_model(loaded: Any, device: Any, progress: Any = None, cancel: Any = None) -> Any:
    """The int8 version of a loaded ResNet extractor, for the CPU.

    Parameters
    ----------
    loaded
        A :class:`~napari_deeppt.features.extractors.LoadedExtractor` of ``resnet18`` or
        ``resnet50``.
    device
        The run's ``torch.device``: must be the CPU.
    progress, cancel
        Reported to and checked while calibrating (only when no int8 model is kept for
        these weights: about 15 s, once); a cancelled calibration keeps nothing.

    Returns
    -------
    torch.nn.Module
        Normalised ``(N, 3, 224, 224)`` float images → ``(N, D)`` float32 features.

    Raises
    ------
    DeepPTError
        Another extractor, another device, or a torch without x86 quantized engines.
    """
    from ..io import mark_used

    require_int8(loaded.spec.name, device)
    fields = _fields(loaded)
    key = json.dumps(fields, sort_keys=True)
    if key in _KEPT:
        model, path = _KEPT[key]
        mark_used(path)  # in use: another process's clean-up keeps it
        return model
    path = _stored_path(key)
    model = _stored(loaded, fields, path, progress, cancel)
    _KEPT.clear()  # one at a time: a cohort's slides reuse it
    _KEPT[key] = (model, path)
    return model


def agreement(int8: np.ndarray, fp32: np.ndarray) -> tuple[float, float]:
    """How far int8 features keep fp32's, for the same tiles.

    Parameters
    ----------
    int8, fp32
        ``(n_tiles, D)`` features of the same tiles.

    Returns
    -------
    r2 : float
        The share of fp32's variance across tiles that int8 keeps (1 - residual / total,
        both about each feature's mean): what the maps and the model see.
    cosine : float
        The least per-tile cosine between the two.
    """
    a, b = np.asarray(fp32, np.float64), np.asarray(int8, np.float64)
    ac, bc = a - a.mean(0), b - b.mean(0)
    r2 = 1 - ((ac - bc) ** 2).sum() / (ac**2).sum()
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return float(r2), float(cosine.min())


def require_int8(extractor: str, device: Any) -> None:
    """Refuse int8 for an extractor or a device it is not made for.

    Parameters
    ----------
    extractor
        The extractor's name.
    device
        A ``torch.device`` (not a name: its ``type`` is read).

    Raises
    ------
    DeepPTError
        ``extractor`` is not one of :data:`QUANTIZABLE`, ``device`` is not the CPU, or this
        torch has no x86 quantized engines.
    """
    if extractor not in QUANTIZABLE:
        raise DeepPTError(
            f"precision 'int8' is available for {', '.join(QUANTIZABLE)}, not extractor "
            f"{extractor!r}; use precision 'float32'"
        )
    if device.type != "cpu":
        raise DeepPTError(
            f"precision 'int8' runs on the CPU only, not on {device}; on a GPU use "
            "precision 'float32' (float32 weights under bfloat16 autocast)"
        )
    _engine()


def quantized_dir() -> Path:
    """Where int8 models are kept: ``<cache_root>/quantized``."""
    from ..io import cache_root

    return cache_root() / "quantized"


def int8_identity() -> dict[str, Any]:
    """What makes an int8 model besides its fp32 weights.

    The recipe number, the quantized engine, the calibration and the torch and torchvision
    versions: features of int8 models that differ in any of these differ, so the feature
    cache key and the provenance carry them.
    """
    import torch
    import torchvision

    return {
        "recipe": _RECIPE,
        "engine": _engine(),
        "calibration": _CALIBRATION,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }


def _fields(loaded: Any) -> dict[str, Any]:
    """What makes the int8 model: the fp32 weights' bytes, versions, engine and recipe."""
    digest = hashlib.sha256()
    for name, tensor in loaded.model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return {
        **int8_identity(),
        "extractor": loaded.spec.name,
        "weights_digest": digest.hexdigest(),
        "napari_deeppt": __version__,
    }


def _stored_path(recorded: str) -> Path:
    """Where the int8 model for ``recorded`` (the JSON of its fields) is kept."""
    return quantized_dir() / f"{hashlib.sha256(recorded.encode()).hexdigest()[:32]}.pt"


def _stored(loaded: Any, fields: dict[str, Any], path: Path, progress: Any, cancel: Any) -> Any:
    """The int8 model kept at ``path`` for ``fields``, else quantized now and kept there."""
    import torch

    from ..io import atomic_path, keep_recent, remove_stale_partials
    from ..io.torchfile import load_weights_only

    recorded = json.dumps(fields, sort_keys=True)  # plain text: loads with weights_only
    if path.is_file():
        try:
            saved = load_weights_only(path)
            if saved.get("fields") == recorded:
                keep_recent(path, KEEP_MODELS)
                return _skeleton(loaded.spec.name, fields["engine"], saved["state"])
        except Exception:  # a damaged file: made again, never trusted
            warnings.warn(
                f"{path}: the int8 model kept there does not load; making it again", stacklevel=4
            )
    model = _quantize(loaded, fields["engine"], progress, cancel)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(path.parent)  # of processes that died while saving
        with atomic_path(path, overwrite=True) as tmp:
            torch.save({"fields": recorded, "state": model.state_dict()}, tmp)
        keep_recent(path, KEEP_MODELS)  # older torch, recipe or weights' models go
    except (OSError, RuntimeError) as exc:  # torch.save fails with a C++ RuntimeError
        reason = getattr(exc, "strerror", None) or "its folder is not writable or the disk is full"
        warnings.warn(f"{path}: the int8 model could not be kept ({reason})", stacklevel=4)
    return model


def _engine(engines: list[str] | None = None) -> str:
    """The quantized engine int8 models use: oneDNN's on an x86 build of torch."""
    import torch

    engines = torch.backends.quantized.supported_engines if engines is None else engines
    if "x86" in engines or "fbgemm" in engines:  # an x86 build: oneDNN's kernels first
        for engine in ("onednn", "x86", "fbgemm"):
            if engine in engines:
                return engine
    raise DeepPTError(
        f"this torch has no x86 quantized engine (it has {', '.join(engines)}); "
        "use precision 'float32'"
    )


def _observed(name: str, engine: str, state: dict[str, Any] | None) -> Any:
    """torchvision's quantizable ``name`` with ``state`` (fp32), fused, with observers."""
    import torch
    import torchvision.models.quantization as tvq

    torch.backends.quantized.engine = engine
    model = getattr(tvq, name)(weights=None, quantize=False)
    model.fc = torch.nn.Identity()
    if state is not None:
        model.load_state_dict(state)
    model.eval().fuse_model(is_qat=False)
    # x86's qconfig whatever the engine: 7-bit activations, which AVX2 CPUs without VNNI
    # need (their u8×s8 pair sums saturate in 16 bits at 8 bits)
    model.qconfig = torch.ao.quantization.get_default_qconfig("x86")
    torch.ao.quantization.prepare(model, inplace=True)
    return model


def _quantize(loaded: Any, engine: str, progress: Any = None, cancel: Any = None) -> Any:
    """Fuse, observe, calibrate and convert a quantizable copy of ``loaded.model``."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices; see module notes
        model = _observed(loaded.spec.name, engine, loaded.model.state_dict())
        wrapped = _pooled(model)
        with torch.inference_mode():
            slide, grid = _calibration_tiles()
            total = -(-len(grid) // _CALIBRATION_BATCH)
            what = "making the int8 model (once for these weights)"
            with make_progress(progress, total, what, unit="batch") as bar:
                for batch in _calibration_batches(loaded.spec, slide, grid):
                    check_cancelled(cancel, "making the int8 model")
                    wrapped(batch)
                    bar.update()
        torch.ao.quantization.convert(model, inplace=True)
    return wrapped.eval()


def _skeleton(name: str, engine: str, state: dict[str, Any]) -> Any:
    """A converted model of ``name`` given a saved int8 ``state`` (no calibration)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _observed(name, engine, None)
        torch.ao.quantization.convert(model, inplace=True)
        wrapped = _pooled(model)
        wrapped.load_state_dict(state)
    return wrapped.eval()


def _calibration_tiles() -> tuple[Any, Any]:
    """The bundled slide and its calibration tiles (see the module notes)."""
    from ..io import bundled_slide_path
    from ..slide import open_slide
    from ..tiles import make_tile_grid

    slide = open_slide(bundled_slide_path())
    return slide, make_tile_grid(slide, **_CALIBRATION, workers=1)


def _calibration_batches(spec: Any, slide: Any, grid: Any) -> Any:
    """The fixed calibration inputs, preprocessed as extraction does, a batch at a time."""
    import torch

    from .preprocess import preprocess_batch, stain_config

    stain = stain_config("macenko", 8192)
    for start in range(0, len(grid), _CALIBRATION_BATCH):
        stop = min(start + _CALIBRATION_BATCH, len(grid))
        tiles = np.stack([grid.read_tile(slide, i) for i in range(start, stop)])
        yield preprocess_batch(torch.from_numpy(tiles), spec, stain)


def _pooled_in_float() -> type:
    import torch

    class PooledInFloat(torch.nn.Module):
        """A quantizable ResNet up to layer4 in int8, then average pooling in float."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: Any) -> Any:
            m = self.model
            x = m.maxpool(m.relu(m.bn1(m.conv1(m.quant(x)))))
            x = m.layer4(m.layer3(m.layer2(m.layer1(x))))
            return torch.flatten(torch.nn.functional.adaptive_avg_pool2d(m.dequant(x), 1), 1)

    return PooledInFloat


def _pooled(model: Any) -> Any:
    """``model`` (quantizable, observed or converted) wrapped to pool layer4 in float."""
    return _pooled_in_float()(model)
