"""Tile features: extractor registry, weights resolution, streaming engine, cache."""

from __future__ import annotations

from .engine import FeatureSet, extract_features
from .extractors import EXTRACTORS, ExtractorSpec, load_extractor, register_extractor

__all__ = [
    "EXTRACTORS",
    "ExtractorSpec",
    "FeatureSet",
    "extract_features",
    "load_extractor",
    "register_extractor",
]
