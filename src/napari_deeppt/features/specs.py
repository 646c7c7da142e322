"""The registry of feature extractors: how to build each backbone and what it expects.

An :class:`ExtractorSpec` says how to build a model that maps normalised ``(N, 3, S, S)``
images to ``(N, D)`` features (pooling included), its input size and normalisation, and
where its weights come from. DeepPT's ResNet50 and two smaller ResNets come from
torchvision; ``colour-stats`` is a weightless function for tests and demos; the pathology
foundation models are in :mod:`.presets`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["EXTRACTORS", "IMAGENET_MEAN", "IMAGENET_STD", "ExtractorSpec", "register_extractor"]

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
        ``build() -> torch.nn.Module`` with random weights, the classifier removed and the
        preset's token pooling applied.
    feature_dim
        D.
    input_size
        S (images are resized to S×S).
    weights_name
        torchvision weight enum, e.g. ``"ResNet50_Weights.IMAGENET1K_V2"`` (None: no
        pretrained weights known to torchvision).
    mean, std
        Input normalisation.
    extra
        Anything else the spec records (e.g. the timm architecture).
    needs_weights
        False for a fixed function (no weights file).
    hf_repo
        The Hugging Face repository its weights come from (``"MahmoodLab/UNI"``): looked
        up in the local hub cache, downloaded only when asked.
    licence
        Licence and access terms of the weights, for messages and the README.
    gmacs
        Multiply-accumulates per tile (billions), for the time a CPU will take.
    package
        A Python package the build needs beyond torch (``"timm"``, ``"transformers"``).
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
    hf_repo: str | None = None
    licence: str = ""
    gmacs: float = 0.0
    package: str | None = None


EXTRACTORS: dict[str, ExtractorSpec] = {}


def register_extractor(spec: ExtractorSpec) -> None:
    """Add (or replace) an extractor in the registry.

    Parameters
    ----------
    spec
        The extractor; one already registered under ``spec.name`` is replaced.
    """
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
        licence="BSD-3-Clause (torchvision)",
        gmacs=4.1,
    )
)
register_extractor(
    ExtractorSpec(
        "resnet18",
        _torchvision_backbone("resnet18"),
        512,
        weights_name="ResNet18_Weights.IMAGENET1K_V1",
        licence="BSD-3-Clause (torchvision)",
        gmacs=1.8,
    )
)
register_extractor(
    ExtractorSpec(
        "resnet34",
        _torchvision_backbone("resnet34"),
        512,
        weights_name="ResNet34_Weights.IMAGENET1K_V1",
        licence="BSD-3-Clause (torchvision)",
        gmacs=3.7,
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
