"""napari glue: the only package that imports napari or Qt.

Importing it registers a result sink, so that core functions called from the napari console
with a layer of this plugin (``napari_deeppt.detect_tissue(viewer.layers["slide"])``) also add
their layers next to it, and a region adapter, so that a Shapes layer can be the ``roi`` of
``detect_and_tile``/``predict`` called with the slide's layer.
"""

from __future__ import annotations

from typing import Any

from ..hooks import register_region_adapter, register_result_sink


def _viewer_of(layer: Any) -> Any:
    import napari

    viewer = napari.current_viewer()
    if viewer is not None and any(lyr is layer for lyr in viewer.layers):
        return viewer
    return None


def _show_result(source: Any, result: Any) -> None:
    from napari.layers import Layer

    from ..prediction import Prediction
    from ..tiles import TileGrid
    from ..tissue import TissueMask
    from .layers import add_or_update, mask_layer_data, show_expression, tiles_layer_data

    if not isinstance(source, Layer):
        return
    viewer = _viewer_of(source)
    if viewer is None:
        return
    if isinstance(result, TissueMask):
        add_or_update(viewer, mask_layer_data(result, source.name))
    elif isinstance(result, TileGrid):
        add_or_update(viewer, tiles_layer_data(result, source.name))
    elif isinstance(result, Prediction):
        show_expression(viewer, result, result.top_genes(1).index[0], source.name)


def _shapes_as_regions(regions: Any, source: Any) -> Any:
    """A Shapes layer given as ``roi`` in the console: its shapes on the slide layer's pixels."""
    from napari.layers import Image, Shapes

    from .layers import shapes_to_regions

    if not isinstance(regions, Shapes):
        return None
    if not isinstance(source, Image):
        raise TypeError(
            "a Shapes layer as regions needs the slide's layer as the slide (to place them), "
            f"got {type(source).__name__}"
        )
    converted = shapes_to_regions(regions, source)
    if not converted:
        raise ValueError(f"shapes layer {regions.name!r} has no polygon, rectangle or ellipse")
    return converted


def guard_against_triton_llvm_clash() -> bool:
    """Keep torch from importing triton in a process that already mapped Mesa's LLVM.

    torchvision imports ``torch._dynamo``, which imports triton when it is installed; loading
    triton's native library after Mesa's llvmpipe (software OpenGL: VMs, remote desktops, CI)
    has loaded ``libLLVM`` crashes the process. napari-deeppt needs no triton (it never
    compiles inside napari), so in that situation triton is hidden from this process.
    Returns True when the guard was applied.
    """
    import sys

    if "triton" in sys.modules:
        return False
    try:
        with open("/proc/self/maps") as maps:
            llvm_loaded = "libLLVM" in maps.read()
    except OSError:
        return False
    if llvm_loaded:
        sys.modules["triton"] = None  # type: ignore[assignment]  # import triton → ImportError
    return llvm_loaded


register_result_sink(_show_result)
register_region_adapter(_shapes_as_regions)
guard_against_triton_llvm_clash()
