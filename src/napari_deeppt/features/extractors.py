"""Feature extractors: a small registry of backbones and how their weights are found.

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

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DeepPTError, WeightsNotFoundError

__all__ = [
    "EXTRACTORS",
    "ExtractorSpec",
    "LoadedExtractor",
    "load_extractor",
    "register_extractor",
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


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _read_state_dict(path: Path) -> dict[str, Any]:
    import torch

    if not path.exists():
        raise WeightsNotFoundError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsNotFoundError(f"{path}: not a readable weights file ({exc})") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsNotFoundError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def _apply_state(model: Any, state: dict[str, Any], source: str, spec: ExtractorSpec) -> None:
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsNotFoundError(
            f"{source}: these weights do not fit {spec.name} (missing {len(missing)} tensors, "
            f"e.g. {missing[:2]}; unexpected {len(unexpected)}, e.g. {unexpected[:2]})"
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
