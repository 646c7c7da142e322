"""Vision transformers of the pathology presets, built with timm (imported on first use).

Each preset is timm's architecture with its published settings; the token pooling that
makes its embedding is part of the module, so the feature engine, :meth:`embed` and a
saved state dict all see the same model (the state dict keys are timm's, as the published
checkpoints have them).
"""

from __future__ import annotations

from typing import Any

import timm
import torch
from timm.models.vision_transformer import VisionTransformer

__all__ = ["ClassAndPatchMeanViT", "build_vit"]


class ClassAndPatchMeanViT(VisionTransformer):
    """A ViT whose embedding is its class token concatenated with the mean of its patch
    tokens (register tokens left out): Virchow's ``2 × width`` embedding."""

    def pool(self, x: torch.Tensor, pool_type: str | None = None) -> torch.Tensor:
        patches = x[:, self.num_prefix_tokens :]
        return torch.cat([x[:, 0], patches.mean(dim=1)], dim=-1)


def build_vit(arch: str, pooling: str = "token", **options: Any) -> torch.nn.Module:
    """timm's ``arch`` with random weights, no classifier, and the preset's pooling.

    Parameters
    ----------
    arch
        A timm architecture (``"vit_large_patch16_224"``).
    pooling
        ``"token"`` (the class token) or ``"token+mean"`` (class token and the mean of the
        patch tokens, concatenated).
    **options
        The preset's architecture settings (depth, width, registers, MLP, …).

    Returns
    -------
    torch.nn.Module
        In evaluation mode.
    """
    layers = {}
    if options.pop("swiglu", False):
        layers = {"mlp_layer": timm.layers.SwiGLUPacked, "act_layer": torch.nn.SiLU}
    global_pool = "" if pooling == "token+mean" else "token"
    model = timm.create_model(
        arch, pretrained=False, num_classes=0, global_pool=global_pool, **layers, **options
    )
    if pooling == "token+mean":
        model.__class__ = ClassAndPatchMeanViT  # the same module, pooled as Virchow pools
    return model.eval()
