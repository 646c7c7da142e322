"""Dock widget "Extract features": backbone features of the kept tiles, with an embedding layer."""

from __future__ import annotations

from typing import Any

from magicgui.widgets import CheckBox, FileEdit

from ..devices import Device
from ..features.extractors import list_extractors
from ..features.params import FeatureParams, ModelPrecision
from ..stain import StainMethod
from ._jobs import Job, JobWidget
from .console import slide_of
from .fields import choice_widget, layer_picker, param_widget, slide_picker
from .layers import add_or_update, embedding_layer_data

__all__ = ["FeaturesWidget"]


class FeaturesWidget(JobWidget):
    """Pick a slide layer and its tiles layer, extract features, show the embedding."""

    cancelled_message = "cancelled; nothing was cached"

    def __init__(self, napari_viewer: Any) -> None:
        import napari

        super().__init__(napari_viewer, "Extract features")
        self.result: Any = None
        self.slide_layer = slide_picker()
        self.tiles_layer = layer_picker(
            napari_viewer,
            napari.layers.Labels,
            "tiles",
            prefer="deeppt_grid",
            tooltip="the '<slide> tiles' layer (from Tissue & tiles)",
        )
        self.extractor = choice_widget(FeatureParams, "extractor", "extractor", list_extractors())
        self.weights = FileEdit(
            label="weights file",
            mode="r",
            value="",
            filter="*.pth *.pt *.bin *.safetensors",
            tooltip="the extractor's weights file (ResNet50's ImageNet weights, or a "
            "foundation model's downloaded state dict) when torchvision's or Hugging Face's "
            "local cache does not hold it; nothing is downloaded",
        )
        self.random_weights = CheckBox(
            label="random weights (testing only)",
            value=False,
            tooltip="random-initialised extractor: features that mean nothing, for trying "
            "the pipeline without weights",
        )
        self.device = choice_widget(FeatureParams, "device", "device", Device)
        self.batch_size = param_widget(
            FeatureParams, "batch_size", "batch size (0 = auto)", value=0, min=0, max=4096
        )
        self.stain = choice_widget(FeatureParams, "stain", "stain", StainMethod)
        self.precision = choice_widget(FeatureParams, "precision", "precision", ModelPrecision)
        self.extend(
            [
                self.slide_layer,
                self.tiles_layer,
                self.extractor,
                self.weights,
                self.random_weights,
                self.device,
                self.batch_size,
                self.stain,
                self.precision,
                *self._controls(),
            ]
        )

    def run(self) -> Job | None:
        """Extract features in a thread worker; adds/updates the embedding layer."""
        from ..features import extract_features
        from . import guard_against_triton_llvm_clash

        guard_against_triton_llvm_clash()

        try:
            layer = self.slide_layer.value
            tiles = self.tiles_layer.value
            if layer is None:
                raise ValueError("choose a slide layer first")
            grid = None if tiles is None else tiles.metadata.get("deeppt_grid")
            if grid is None:
                raise ValueError("choose the tiles layer made by 'Tissue & tiles' first")
            slide = slide_of(layer)
            weights: Any = (
                "random" if self.random_weights.value else self._chosen_file(self.weights)
            )
        except Exception as exc:
            self._on_error(exc)
            return None
        name = layer.name

        def on_result(features: Any) -> None:
            self.result = features
            add_or_update(self._viewer, embedding_layer_data(features, name))
            where = (  # a no-break space: "5.1 s" never wraps apart
                "from the cache"
                if features.from_cache
                else (
                    f"in {features.provenance.get('seconds', 0):.1f}\u00a0s "
                    f"on {features.provenance.get('device', '?')}"
                )
            )
            precision = features.provenance.get("precision", "float32")
            self.status.value = (
                f"{len(features)} tiles × {features.feature_dim} features "
                f"{where}; weights {features.provenance['weights_hash']}"
                + ("" if precision == "float32" else f"; {precision}")
            )

        return self._start(
            extract_features,
            {
                "slide": slide,
                "grid": grid,
                "extractor": self.extractor.value,
                "weights": weights,
                "device": self.device.value,
                "batch_size": self.batch_size.value or None,
                "stain": None if self.stain.value == "none" else self.stain.value,
                "precision": str(self.precision.value),
                # compiling loads triton, whose LLVM clashes with Mesa's (software GL) inside
                # a napari process; a model compiled earlier (CLI, console) is only loaded
                "compile": "cached",
            },
            on_result,
            status="loading the model…",
        )
