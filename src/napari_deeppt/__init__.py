"""napari-deeppt: gene expression and treatment response from H&E whole-slide images.

The public API is re-exported here lazily, so ``import napari_deeppt`` stays fast (no torch,
dask or napari until a function that needs them is called).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "open_slide": "slide",
    "Slide": "slide",
    "DeepPTError": "errors",
    "SlideReadError": "errors",
    "SlideFormatError": "errors",
    "SlideNotFoundError": "errors",
    "MissingMppError": "errors",
    "NotRGBError": "errors",
    "CancelledError": "errors",
    "write_synthetic_slide": "testing",
    "SyntheticSlide": "testing",
    "detect_tissue": "tissue",
    "TissueMask": "tissue",
    "make_tile_grid": "tiles",
    "detect_and_tile": "tiles",
    "TileGrid": "tiles",
    "macenko_normalize": "stain",
    "reinhard_normalize": "stain",
    "fit_macenko_target": "stain",
    "DEEPPT_TARGET": "stain",
    "CancelToken": "progress",
    "extract_features": "features",
    "FeatureSet": "features",
    "load_extractor": "features",
    "train": "model.training",
    "TrainingResult": "model.training",
    "predict": "prediction",
    "Prediction": "prediction",
    "ModelBundle": "model.bundle",
    "response_scores": "response",
    "read_partners": "response",
    "tile_response": "response",
    "run_cohort": "cohort",
}

__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:  # pragma: no cover
    from .cohort import run_cohort
    from .errors import (
        CancelledError,
        DeepPTError,
        MissingMppError,
        NotRGBError,
        SlideFormatError,
        SlideNotFoundError,
        SlideReadError,
    )
    from .features import FeatureSet, extract_features, load_extractor
    from .model.bundle import ModelBundle
    from .model.training import TrainingResult, train
    from .prediction import Prediction, predict
    from .progress import CancelToken
    from .response import read_partners, response_scores, tile_response
    from .slide import Slide, open_slide
    from .stain import DEEPPT_TARGET, fit_macenko_target, macenko_normalize, reinhard_normalize
    from .testing import SyntheticSlide, write_synthetic_slide
    from .tiles import TileGrid, detect_and_tile, make_tile_grid
    from .tissue import TissueMask, detect_tissue


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_deeppt' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
