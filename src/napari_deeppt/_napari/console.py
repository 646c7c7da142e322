"""The napari console's napari-deeppt: the core steps, called with layers, adding layers.

The core takes a :class:`~napari_deeppt.slide.Slide` and returns results; it never sees a
layer. In napari's console (where the plugin puts this module as ``deeppt`` once one of its
docks or a slide is opened), or from a script holding a viewer, these functions are the edge:
they turn the slide's image layer (and a Shapes layer given as regions) into core inputs, call
the one core function and add (or replace) the result's layers beside the slide::

    deeppt.detect_and_tile(viewer.layers["case-001"], roi=viewer.layers["Shapes"])
    prediction = deeppt.predict(viewer.layers["case-001"], "model.deeppt")

Each returns the core result, like the function of the same name in :mod:`napari_deeppt`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["detect_and_tile", "detect_tissue", "make_tile_grid", "predict", "slide_of"]


def slide_of(layer: Any, mpp: float | None = None) -> Any:
    """The :class:`~napari_deeppt.slide.Slide` behind an image layer opened by this plugin."""
    from ..slide import Slide, open_slide

    metadata = getattr(layer, "metadata", None) or {}
    slide = metadata.get("deeppt_slide")
    if isinstance(slide, Slide) and (mpp is None or slide.mpp == mpp):
        return slide
    if metadata.get("path"):
        return open_slide(metadata["path"], mpp=mpp)
    raise TypeError(
        f"layer {getattr(layer, 'name', layer)!r} was not opened by napari-deeppt (no slide "
        "behind it); open the slide with File ▸ Open or napari_deeppt.open_slide"
    )


def _regions_of(regions: Any, slide_layer: Any) -> Any:
    """A Shapes layer drawn over the slide → level-0 regions; anything else unchanged."""
    from napari.layers import Shapes

    from .layers import shapes_to_regions

    if not isinstance(regions, Shapes):
        return regions
    converted = shapes_to_regions(regions, slide_layer)
    if not converted:
        raise ValueError(f"shapes layer {regions.name!r} has no polygon, rectangle or ellipse")
    return converted


def _viewer_of(layer: Any) -> Any:
    import napari

    viewer = napari.current_viewer()
    if viewer is not None and any(lyr is layer for lyr in viewer.layers):
        return viewer
    return None


def _show(layer: Any, *results: Any) -> None:
    """Add (or replace) the layers of ``results`` beside the slide's ``layer``."""
    from ..prediction import Prediction
    from ..tiles import TileGrid
    from ..tissue import TissueMask
    from .layers import add_or_update, mask_layer_data, show_expression, tiles_layer_data

    viewer = _viewer_of(layer)
    if viewer is None:
        return
    for result in results:
        if isinstance(result, TissueMask):
            add_or_update(viewer, mask_layer_data(result, layer.name))
        elif isinstance(result, TileGrid):
            add_or_update(viewer, tiles_layer_data(result, layer.name))
        elif isinstance(result, Prediction):
            show_expression(viewer, result, result.top_genes(1).index[0], layer.name)


def detect_tissue(layer: Any, **options: Any) -> Any:
    """:func:`napari_deeppt.detect_tissue` on a slide layer; adds ``<slide> tissue``."""
    from .. import tissue

    mask = tissue.detect_tissue(slide_of(layer), **options)
    _show(layer, mask)
    return mask


def make_tile_grid(layer: Any, mask: Any = None, **options: Any) -> Any:
    """:func:`napari_deeppt.make_tile_grid` on a slide layer; adds ``<slide> tiles``."""
    from .. import tiles

    grid = tiles.make_tile_grid(slide_of(layer), mask, **options)
    _show(layer, grid)
    return grid


def detect_and_tile(
    layer: Any, *, roi: Any = None, exclude_regions: Any = None, **options: Any
) -> Any:
    """:func:`napari_deeppt.detect_and_tile` on a slide layer; regions may be Shapes layers."""
    from .. import tiles

    mask, grid = tiles.detect_and_tile(
        slide_of(layer),
        roi=_regions_of(roi, layer),
        exclude_regions=_regions_of(exclude_regions, layer),
        **options,
    )
    _show(layer, mask, grid)
    return mask, grid


def predict(layer: Any, bundle: Any, *, roi: Any = None, **options: Any) -> Any:
    """:func:`napari_deeppt.predict` on a slide layer; adds the top gene's expression map.

    Inside napari the CPU model is not compiled (``compile="cached"``: a package built
    earlier by the CLI or a script is loaded) unless ``compile`` says otherwise.
    """
    from .. import prediction

    options.setdefault("compile", "cached")  # compiling clashes with napari's software GL
    result = prediction.predict(slide_of(layer), bundle, roi=_regions_of(roi, layer), **options)
    _show(layer, result)
    return result
