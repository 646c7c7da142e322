# The public API, declared once: napari_deeppt/__init__.py loads these names lazily from this
# stub (lazy_loader), and type checkers and IDEs read them from here.
from ._version import __version__
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
from .evaluation import evaluate, predict_spots
from .extractor_benchmark import ExtractorBenchmark, benchmark_extractors
from .features import FeatureSet, extract_features, list_extractors, load_extractor
from .model.bundle import ModelBundle
from .model.training import TrainingResult, train
from .prediction import Prediction, predict
from .progress import CancelToken
from .response import read_partners, response_scores, tile_response
from .slide import Slide, open_slide
from .spatial import SpatialData, read_hest, read_legacy_st, read_visium
from .stain import DEEPPT_TARGET, fit_macenko_target, macenko_normalize, reinhard_normalize
from .testing import SyntheticSlide, write_synthetic_slide
from .tiles import TileGrid, detect_and_tile, make_tile_grid
from .tissue import TissueMask, detect_tissue
