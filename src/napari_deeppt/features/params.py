"""How tile features are made: :class:`FeatureParams`, the one source of their defaults.

:func:`~napari_deeppt.features.extract_features` takes these fields as keywords (or a
``params=FeatureParams(...)``); the command line and the docks take their defaults and help
from here (:mod:`napari_deeppt.params`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..devices import Device
from ..stain import StainMethod

__all__ = ["COMPILE_MODES", "FeatureDtype", "FeatureParams", "ModelPrecision"]


#: The string choices of ``compile`` besides True and False (see :class:`FeatureParams`).
COMPILE_MODES = ("auto", "cached")


class FeatureDtype(str, Enum):
    """How features are stored: half precision (DeepPT's size) or single."""

    FLOAT16 = "float16"
    FLOAT32 = "float32"

    def __str__(self) -> str:
        return self.value


class ModelPrecision(str, Enum):
    """The model's arithmetic: fp32 (DeepPT's), or the opt-ins bfloat16 (where the hardware
    has it natively) and int8 (ResNets on the CPU)."""

    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    INT8 = "int8"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class FeatureParams:
    """How tile features are made (DeepPT: ResNet50 with ImageNet weights, Macenko, 224 px).

    Attributes
    ----------
    extractor
        Registry key of the feature extractor (``resnet50``: DeepPT's, pooled to 2048).
    weights
        A weights file, ``random`` (seeded with seed; tests and demos), or None for
        torchvision's cache or download.
    device
        ``auto`` (cuda, then mps, then cpu), ``cpu``, ``cuda``, ``cuda:1`` …
    batch_size
        Tiles per forward pass; None: 256 on CUDA, 32 on a CPU.
    stain
        Stain normalisation: ``macenko`` (DeepPT's reference), ``reinhard``, ``none``, or a
        fitted target.
    fit_max_pixels
        Pixels per tile that fit Macenko (None: every pixel).
    dtype
        Storage precision of the features: ``float16`` or ``float32``.
    workers
        Threads reading tiles ahead of the model; None: from the number of cores.
    compile
        Compile the model: True, False, ``auto`` or ``cached``. On the CPU a compiled model
        is kept on disk (:mod:`napari_deeppt.features.compiled`): ``auto`` uses one that is
        there and builds one for 2048 tiles or more, where the first build pays; ``cached``
        only uses one that is there; True builds it now. On CUDA, ``auto`` compiles in
        memory for 2048 tiles or more.
    use_cache
        Read and write the feature cache.
    seed
        Seed of random weights.
    gpu_decode
        Decode the slide's JPEG tiles on the device: ``auto`` (on CUDA), True, False.
    precision
        The model's arithmetic: ``float32`` (DeepPT's); ``bfloat16`` on CPUs with native
        bfloat16 (AVX-512 BF16 or AMX) and CUDA GPUs — about twice as fast on such a CPU,
        features within bfloat16's rounding of fp32's
        (:mod:`napari_deeppt.features.bfloat16`); or ``int8`` on the CPU for
        resnet18/resnet50 — about twice as fast, features within the quantization error of
        fp32's (:mod:`napari_deeppt.features.quantized`). Recorded with the features.
    """

    extractor: str = "resnet50"
    weights: Any = None
    device: Any = Device.AUTO.value
    batch_size: int | None = None
    stain: Any = StainMethod.MACENKO.value
    fit_max_pixels: int | None = 8192
    dtype: str = FeatureDtype.FLOAT16.value
    workers: int | None = None
    compile: Any = "auto"
    use_cache: bool = True
    seed: int = 0
    gpu_decode: Any = "auto"
    precision: str = ModelPrecision.FLOAT32.value

    def __post_init__(self) -> None:
        dtype = str(self.dtype)
        if dtype not in {d.value for d in FeatureDtype}:
            raise ValueError(f"dtype must be 'float16' or 'float32', got {self.dtype!r}")
        object.__setattr__(self, "dtype", dtype)
        if self.batch_size is not None and int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {self.batch_size}")
        if not (self.compile is True or self.compile is False or self.compile in COMPILE_MODES):
            raise ValueError(
                f"compile must be True, False, 'auto' or 'cached', got {self.compile!r}"
            )
        precision = str(self.precision)
        if precision not in {p.value for p in ModelPrecision}:
            raise ValueError(
                f"precision must be 'float32', 'bfloat16' or 'int8', got {self.precision!r}"
            )
        object.__setattr__(self, "precision", precision)
        if precision == ModelPrecision.INT8 and self.compile is True:
            raise ValueError("compile=True does not apply to precision 'int8' (run as is)")
        if self.workers is not None and int(self.workers) < 1:
            raise ValueError(f"workers must be ≥ 1, got {self.workers}")
