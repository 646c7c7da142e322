"""npe2 sample data contributions."""

from __future__ import annotations

from typing import Any

from ..samples import cmu1_small_region_path, synthetic_sample
from ..slide import open_slide
from .layers import slide_layer_data
from .reader import prefer_this_reader, show_scale_bar

__all__ = ["cmu1_small_region", "synthetic_slide"]


def synthetic_slide() -> list[tuple[Any, dict, str]]:
    """A synthetic H&E slide whose tissue geometry is known (regions in the metadata)."""
    sample = synthetic_sample()
    show_scale_bar()
    layers = slide_layer_data(open_slide(sample.path), name="synthetic H&E")
    layers[0][1]["metadata"]["synthetic_truth"] = sample
    return layers


def cmu1_small_region() -> list[tuple[Any, dict, str]]:
    """CMU-1-Small-Region.svs, a real Aperio slide (Carnegie Mellon University, CC0 1.0)."""
    prefer_this_reader()
    show_scale_bar()
    return slide_layer_data(open_slide(cmu1_small_region_path()))
