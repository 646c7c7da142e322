"""Synthetic slides and cohorts with known truth, for tests, benchmarks, the demo and napari's
sample data.

:mod:`.render` draws the tissue (:class:`SyntheticSlide`), :mod:`.slides` writes it as slide
files, :mod:`.cohorts` writes cohorts and spatial spots whose expression it drives. Nothing in
the pipeline imports this package; only the demo and the sample data do.
"""

from __future__ import annotations

from .cohorts import SyntheticCohort, write_synthetic_cohort, write_synthetic_spots
from .render import (
    DEFAULT_TISSUE_TYPES,
    GENERATOR_VERSION,
    STAIN_VECTORS,
    SyntheticSlide,
    TissueRegion,
    TissueType,
    default_sample_spec,
)
from .slides import write_giant_slide, write_synthetic_slide

__all__ = [
    "DEFAULT_TISSUE_TYPES",
    "GENERATOR_VERSION",
    "STAIN_VECTORS",
    "SyntheticCohort",
    "SyntheticSlide",
    "TissueRegion",
    "TissueType",
    "default_sample_spec",
    "write_giant_slide",
    "write_synthetic_cohort",
    "write_synthetic_slide",
    "write_synthetic_spots",
]
