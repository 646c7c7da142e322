"""Feature extractors: a small registry of backbones, how their weights are found, and the
model made ready on a device (kept for the next slide of the process).

Weights are resolved in this order:

1. an explicit file (``.pth``/``.pt`` state dict, or ``.safetensors``);
2. torchvision's hub cache (``$TORCH_HOME/hub/checkpoints/<file>``, what torchvision's
   downloader writes);
3. torchvision's download, when online;
4. otherwise a :class:`~napari_deeppt.errors.WeightsNotFoundError` saying which file to put
   where. Random initialisation happens only with ``weights="random"`` (tests, demos) and is
   recorded in the provenance.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import (
    BundleMismatchError,
    DeepPTError,
    WeightsMismatchError,
    WeightsNotFoundError,
)

__all__ = [
    "EXTRACTORS",
    "ExtractorSpec",
    "LoadedExtractor",
    "check_weights",
    "load_extractor",
    "prepare_model",
    "register_extractor",
    "weights_file_hash",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ExtractorSpec:
    """How to build one backbone that maps ``(N, 3, S, S)`` images to ``(N, D)`` features.

    Attributes
    ----------
    name
        Registry key.
    build
        ``build() -> torch.nn.Module`` with random weights and the classifier removed.
    feature_dim
        D.
    input_size
        S (images are resized to S×S).
    weights_name
        torchvision weight enum, e.g. ``"ResNet50_Weights.IMAGENET1K_V2"`` (None: no
        pretrained weights known to torchvision).
    mean, std
        Input normalisation.
    """

    name: str
    build: Callable[[], Any]
    feature_dim: int
    input_size: int = 224
    weights_name: str | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    extra: dict[str, Any] = field(default_factory=dict)
    needs_weights: bool = True


EXTRACTORS: dict[str, ExtractorSpec] = {}


def register_extractor(spec: ExtractorSpec) -> None:
    """Add (or replace) an extractor in the registry."""
    EXTRACTORS[spec.name] = spec


def _torchvision_backbone(arch: str) -> Callable[[], Any]:
    def build() -> Any:
        import torch
        import torchvision

        model = getattr(torchvision.models, arch)(weights=None)
        model.fc = torch.nn.Identity()  # global average pool after layer4 → features
        return model

    return build


register_extractor(
    ExtractorSpec(
        "resnet50",
        _torchvision_backbone("resnet50"),
        2048,
        weights_name="ResNet50_Weights.IMAGENET1K_V2",
    )
)
register_extractor(
    ExtractorSpec(
        "resnet18",
        _torchvision_backbone("resnet18"),
        512,
        weights_name="ResNet18_Weights.IMAGENET1K_V1",
    )
)
register_extractor(
    ExtractorSpec(
        "resnet34",
        _torchvision_backbone("resnet34"),
        512,
        weights_name="ResNet34_Weights.IMAGENET1K_V1",
    )
)


class _ColourStats:
    """Fixed colour/texture statistics of a tile (no weights): for tests, demos and baselines.

    Per channel: mean, standard deviation, 10th/50th/90th percentile of the normalised input
    and the mean absolute horizontal/vertical gradient → 21 features.
    """

    def __new__(cls) -> Any:
        import torch

        class ColourStats(torch.nn.Module):
            def forward(self, x: Any) -> Any:
                flat = x.flatten(2)
                q = (
                    torch.quantile(
                        flat.float(), torch.tensor([0.1, 0.5, 0.9], device=x.device), dim=2
                    )
                    .permute(1, 2, 0)
                    .flatten(1)
                )
                gx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean(dim=(2, 3))
                gy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=(2, 3))
                return torch.cat([flat.mean(2), flat.std(2), q, gx, gy], dim=1)

        return ColourStats()


register_extractor(
    ExtractorSpec("colour-stats", _ColourStats, 21, input_size=64, needs_weights=False)
)


def _timm_spec(name: str) -> ExtractorSpec:
    try:
        import timm
    except ImportError as exc:
        raise DeepPTError(f"extractor {name!r} needs timm (pip install timm)") from exc
    model_name = name.split(":", 1)[1]
    probe = timm.create_model(model_name, pretrained=False, num_classes=0)
    config = probe.pretrained_cfg
    size = int(config.get("input_size", (3, 224, 224))[-1])
    return ExtractorSpec(
        name,
        lambda: timm.create_model(model_name, pretrained=False, num_classes=0),
        int(probe.num_features),
        size,
        None,
        tuple(config.get("mean", IMAGENET_MEAN)),
        tuple(config.get("std", IMAGENET_STD)),
        {"timm": model_name},
    )


def get_spec(name: str) -> ExtractorSpec:
    """The registered extractor ``name`` (``timm:<model>`` works when timm is installed)."""
    if name in EXTRACTORS:
        return EXTRACTORS[name]
    if name.startswith("timm:"):
        return _timm_spec(name)
    raise DeepPTError(
        f"unknown feature extractor {name!r}; available: "
        f"{', '.join(sorted(EXTRACTORS))} (or timm:<model> with timm installed)"
    )


@dataclass
class LoadedExtractor:
    """A ready model and where its weights came from."""

    spec: ExtractorSpec
    model: Any
    weights_source: str
    weights_hash: str


def weights_file_hash(path: str | os.PathLike[str]) -> str:
    """The hash a weights file is recorded under (first 16 hex digits of its sha256).

    It is the ``weights_hash`` of :func:`load_extractor`, of features' provenance and of a
    model bundle's ``feature``, so that a file can be checked against them without loading it.
    """
    from ..io import file_sha256

    return file_sha256(path)[:16]


_file_hash = weights_file_hash

_STATE_DICT_FIX = (
    "pass a state dict saved with torch.save(model.state_dict(), path), or a .safetensors file"
)


def _load_file(path: Path) -> Any:
    """``torch.load``/safetensors, every failure turned into one line naming the file."""

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        from ..io.torchfile import load_weights_only

        return load_weights_only(path)
    except Exception as exc:
        if path.suffix == ".safetensors":
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
            reason = f"not a valid .safetensors file: {first}"
        else:
            from ..io.torchfile import why_unreadable

            reason = why_unreadable(path, exc) or "corrupt, or not a torch file"
        fix = _STATE_DICT_FIX if "pickled" in reason else "download or copy it again"
        raise WeightsNotFoundError(
            f"{path}: not a readable weights file ({reason}); {fix}"
        ) from exc


def _read_state_dict(path: Path) -> dict[str, Any]:
    import torch

    if not path.exists():
        raise WeightsNotFoundError(f"{path}: weights file not found")
    if path.is_dir():
        raise WeightsNotFoundError(f"{path}: is a directory, not a weights file")
    state = _load_file(path)
    for key in ("state_dict", "model"):  # training checkpoints wrap the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise WeightsNotFoundError(
            f"{path}: expected a state dict (names → tensors), got a {type(state).__name__}; "
            + _STATE_DICT_FIX
        )
    odd = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise WeightsNotFoundError(
            f"{path}: expected a state dict (names → tensors), but {odd[0]!r} is a "
            f"{type(state[odd[0]]).__name__}; " + _STATE_DICT_FIX
        )
    return state


def _fit_problems(model: Any, state: dict[str, Any], name: str) -> list[str]:
    """What does not fit, naming a few tensors: shapes first, then missing, then unexpected."""
    own = model.state_dict()
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    # BatchNorm fills num_batches_tracked itself when an (older) state dict lacks it
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    problems = []
    if wrong:
        key = wrong[0]
        more = f" (and {len(wrong) - 1} more of another shape)" if len(wrong) > 1 else ""
        problems.append(
            f"{key} is {list(state[key].shape)} in the file but {list(own[key].shape)} "
            f"in {name}{more}"
        )
    if missing:
        problems.append(
            f"{len(missing)} tensors {name} needs are missing (e.g. {', '.join(missing[:3])})"
        )
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors (e.g. {', '.join(unexpected[:3])})")
    return problems


def _apply_state(model: Any, state: dict[str, Any], source: str, spec: ExtractorSpec) -> None:
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("fc.")}
    problems = _fit_problems(model, state, spec.name)
    if not problems:
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # what our check does not foresee: torch's first line
            problems = [(str(exc).splitlines() or ["load_state_dict failed"])[0][:200]]
        else:
            if missing or unexpected:
                problems = [f"missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]}"]
    if problems:
        expected = f" ({spec.weights_name})" if spec.weights_name else ""
        raise WeightsMismatchError(
            f"{source}: these weights do not fit {spec.name}: "
            + "; ".join(problems)
            + f". Pass weights made for {spec.name}{expected}, or choose the extractor "
            "these were made for"
        )


def _torchvision_weights(spec: ExtractorSpec) -> Any:
    import torchvision

    enum_name, member = spec.weights_name.split(".")  # type: ignore[union-attr]
    return getattr(getattr(torchvision.models, enum_name), member)


def load_extractor(
    name: str = "resnet50",
    weights: str | os.PathLike[str] | None = None,
    *,
    download: bool | None = None,
    seed: int = 0,
) -> LoadedExtractor:
    """Build extractor ``name`` with its weights resolved as the module docstring says.

    Parameters
    ----------
    name
        Registry key (``"resnet50"`` for DeepPT).
    weights
        A weights file, ``"random"`` (seeded random initialisation, for tests), or None to use
        the torchvision cache or download.
    download
        Allow torchvision's download; default: unless ``$NAPARI_DEEPPT_OFFLINE`` is set.
    seed
        Seed of the random initialisation.
    """
    import torch

    spec = get_spec(name)
    # not torch.manual_seed: its dynamo guard imports triton, which can crash a process that
    # already loaded Mesa's LLVM (napari on software GL); the CPU generator is what init uses
    torch.default_generator.manual_seed(seed)
    model = spec.build()
    model.eval()
    if not spec.needs_weights:
        if weights is not None and str(weights) != "random":
            raise WeightsNotFoundError(
                f"{weights}: extractor {name} uses no weights (a fixed function); leave the "
                "weights out (--weights)"
            )
        return LoadedExtractor(spec, model, "none (a fixed function)", "none")
    if weights is not None and str(weights) == "random":
        return LoadedExtractor(
            spec, model, f"random initialisation (seed {seed})", f"random-{seed}"
        )
    if weights is not None:
        path = Path(weights).expanduser()
        _apply_state(model, _read_state_dict(path), str(path), spec)
        return LoadedExtractor(spec, model, str(path), _file_hash(path))
    if spec.weights_name is None:
        raise WeightsNotFoundError(
            f"extractor {name!r} has no known pretrained weights; pass weights=PATH"
        )
    enum = _torchvision_weights(spec)
    filename = enum.url.rsplit("/", 1)[-1]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if cached.exists():
        _apply_state(model, _read_state_dict(cached), str(cached), spec)
        return LoadedExtractor(spec, model, str(cached), _file_hash(cached))
    if download is None:
        download = not os.environ.get("NAPARI_DEEPPT_OFFLINE")
    if download:
        try:
            state = enum.get_state_dict(progress=True, check_hash=True)
        except Exception:  # offline, proxy, server error: say what to do instead
            state = None
        if state is not None and cached.exists():
            _apply_state(model, state, enum.url, spec)
            return LoadedExtractor(spec, model, str(cached), _file_hash(cached))
    raise WeightsNotFoundError(
        f"no weights for {name} ({spec.weights_name}) and they could not be downloaded. "
        f"Put {filename} (from {enum.url}) at {cached}, or pass weights=PATH (a .pth/.pt or "
        ".safetensors state dict; on the command line --weights PATH). weights='random' "
        "runs with random weights, for tests only."
    )


def check_weights(
    extractor: str = "resnet50",
    weights: str | os.PathLike[str] | None = None,
    *,
    expected_hash: str | None = None,
    download: bool | None = None,
    seed: int = 0,
) -> str:
    """Resolve and load an extractor's weights once, and return their hash.

    Meant for a driver (a cohort run, a CLI command) before it schedules any slide: bad
    weights then fail once, in the driver, instead of in every worker.

    Parameters
    ----------
    extractor, weights, download, seed
        As for :func:`load_extractor`.
    expected_hash
        The hash the features must have (a model bundle's ``feature["weights_hash"]``).

    Returns
    -------
    str
        The weights hash that :func:`~napari_deeppt.features.extract_features` will record.

    Raises
    ------
    WeightsNotFoundError
        Missing, unreadable or (:class:`~napari_deeppt.errors.WeightsMismatchError`) not
        fitting weights.
    BundleMismatchError
        The weights are not the ones ``expected_hash`` names.
    """
    loaded = load_extractor(extractor, weights, download=download, seed=seed)
    if expected_hash is not None and loaded.weights_hash != expected_hash:
        raise BundleMismatchError(
            f"{loaded.weights_source}: {extractor} weights {loaded.weights_hash}, but the model "
            f"was trained on features from weights {expected_hash}; pass the weights file it "
            "was trained with (--weights PATH)"
        )
    return loaded.weights_hash


_PREPARED: dict[tuple[Any, ...], Any] = {}


def prepare_model(
    model: Any, device: Any, compile_mode: Any, n_tiles: int, key: tuple[Any, ...] | None = None
) -> Any:
    """Move to the device in channels-last, optionally ``torch.compile`` (freezing on CPU).

    Parameters
    ----------
    model
        The extractor's ``torch.nn.Module``.
    device
        The ``torch.device``.
    compile_mode
        ``True``, ``False`` or ``"auto"`` (compile for ≥ 2048 tiles, where it pays).
    n_tiles
        How many tiles the model will see.
    key
        What identifies the model (extractor, weights hash): the last prepared model is kept
        per key, device and compile choice, so a cohort pays for loading and compiling once
        per process. None: nothing kept.

    Returns
    -------
    torch.nn.Module
        Compiled when ``compile`` was chosen and available (it has ``_orig_mod``).
    """
    import torch

    want = compile_mode is True or (compile_mode == "auto" and n_tiles >= 2048)
    full_key = None if key is None else (*key, str(device), want)
    if full_key is not None and full_key in _PREPARED:
        return _PREPARED[full_key]
    model = model.to(device).to(memory_format=torch.channels_last).eval()
    if want:
        try:
            import torch._inductor.config as inductor_config

            if device.type == "cpu":
                inductor_config.freezing = True
            model = torch.compile(model)
        except Exception as exc:  # compile is an optimisation: never a reason to fail
            warnings.warn(f"torch.compile unavailable ({exc}); running eagerly", stacklevel=3)
    if full_key is not None:
        _PREPARED.clear()  # keep one model: they are large
        _PREPARED[full_key] = model
    return model
