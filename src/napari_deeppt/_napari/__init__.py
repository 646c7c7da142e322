"""napari glue: the only package that imports napari or Qt.

Importing it registers a result sink, so that core functions called from the napari console
with a layer of this plugin (``napari_deeppt.detect_tissue(viewer.layers["slide"])``) also add
their layers next to it.
"""

from __future__ import annotations

from typing import Any

from ..hooks import register_result_sink


def _viewer_of(layer: Any) -> Any:
    import napari

    viewer = napari.current_viewer()
    if viewer is not None and any(lyr is layer for lyr in viewer.layers):
        return viewer
    return None


def _show_result(source: Any, result: Any) -> None:
    from napari.layers import Layer

    from ..tiles import TileGrid
    from ..tissue import TissueMask
    from .layers import add_or_update, mask_layer_data, tiles_layer_data

    if not isinstance(source, Layer):
        return
    viewer = _viewer_of(source)
    if viewer is None:
        return
    if isinstance(result, TissueMask):
        add_or_update(viewer, mask_layer_data(result, source.name))
    elif isinstance(result, TileGrid):
        add_or_update(viewer, tiles_layer_data(result, source.name))


register_result_sink(_show_result)
