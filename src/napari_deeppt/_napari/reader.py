"""npe2 reader contribution: whole-slide images as lazy multiscale layers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..slide import SLIDE_SUFFIXES, open_slide
from .layers import slide_layer_data

__all__ = ["get_reader", "prefer_this_reader", "read_slide", "scale_bar", "show_scale_bar"]

#: Files only a whole-slide reader should open: napari's builtin reader also claims ``.svs``
#: (through imageio) but would read level 0 whole into memory, so napari asks which reader
#: to use. Generic ``.tif``/``.zarr`` stay the user's choice.
WHOLE_SLIDE_PATTERNS = ("*.svs",)


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
    """Open the slide lazily and return its image layer data; the scale bar is switched on
    when the slide knows its pixel size, and this plugin becomes napari's reader for .svs."""
    if isinstance(path, list):
        path = path[0]
    slide = open_slide(Path(path))
    prefer_this_reader()
    if slide.mpp is not None:
        show_scale_bar()
    return slide_layer_data(slide)


def prefer_this_reader() -> list[str]:
    """Make napari-deeppt napari's reader for whole-slide-only files (``.svs``), so dropping
    one never asks which plugin to use. A choice the user already made is kept.

    Returns the patterns that were set now.
    """
    from napari.settings import get_settings

    plugins = get_settings().plugins
    chosen = dict(plugins.extension2reader)
    missing = [pattern for pattern in WHOLE_SLIDE_PATTERNS if pattern not in chosen]
    if missing:
        plugins.extension2reader = {**chosen, **dict.fromkeys(missing, "napari-deeppt")}
    return missing


def show_scale_bar(viewer: Any = None) -> None:
    """Switch on the scale bar of ``viewer`` (napari's current viewer by default): our layers
    carry µm, so it reads in µm."""
    import napari

    viewer = viewer or napari.current_viewer()
    if viewer is not None:
        scale_bar(viewer).visible = True


def scale_bar(viewer: Any) -> Any:
    """The viewer's scale bar overlay (``canvas.overlays.scale_bar`` since napari 0.9)."""
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)
    return overlays.scale_bar if overlays is not None else viewer.scale_bar
