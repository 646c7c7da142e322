"""npe2 reader contribution: whole-slide images as lazy multiscale layers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..slide import SLIDE_SUFFIXES, open_slide
from .layers import slide_layer_data

__all__ = ["get_reader", "read_slide"]


def get_reader(path: str | list[str]) -> Callable[[Any], list] | None:
    """Return :func:`read_slide` for paths we can open, else None (napari asks others)."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    name = str(path).rstrip("/").lower()
    if not name.endswith(SLIDE_SUFFIXES):
        return None
    return read_slide


def read_slide(path: str | list[str]) -> list[tuple[Any, dict, str]]:
    """Open the slide lazily and return its image layer data."""
    if isinstance(path, list):
        path = path[0]
    return slide_layer_data(open_slide(Path(path)))
