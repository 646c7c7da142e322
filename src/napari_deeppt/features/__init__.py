"""Tile features.

- :mod:`.params`: :class:`FeatureParams`, how features are made (the defaults);
- :mod:`.specs` and :mod:`.presets`: the registry of backbones (DeepPT's ResNet50, the
  pathology foundation models) and :mod:`.vit`, the presets' transformers;
- :mod:`.weights`: weights files and Hugging Face snapshots, read and checked;
- :mod:`.extractors`: a model with its weights, ``embed``, a model ready on a device;
- :mod:`.preprocess`: tiles → model input (stain normalisation, resize, normalisation);
- :mod:`.batches`: tiles into device batches, read ahead in threads;
- :mod:`.store`: :class:`FeatureSet`, its zarr store and exports, the cache key and lookup;
- :mod:`.engine`: :func:`extract_features`, the streaming loop;
- :mod:`.bfloat16`: the extractor in bfloat16, where the hardware has it natively;
- :mod:`.quantized`: the int8 form of the ResNets on the CPU, calibrated once and kept;
- :mod:`.gpu`: JPEG decoding, Pillow-exact resizing and pinned readback on the device.
"""

from __future__ import annotations

from .engine import extract_features
from .extractors import (
    EXTRACTORS,
    ExtractorSpec,
    list_extractors,
    load_extractor,
    register_extractor,
)
from .params import FeatureDtype, FeatureParams, ModelPrecision
from .store import FeatureSet

__all__ = [
    "EXTRACTORS",
    "ExtractorSpec",
    "FeatureDtype",
    "FeatureParams",
    "FeatureSet",
    "ModelPrecision",
    "extract_features",
    "list_extractors",
    "load_extractor",
    "register_extractor",
]
