"""Layer data tuples built from core objects; scale and translate in µm.

Every layer of this plugin is placed with :class:`~napari_deeppt.geometry.GridPlacement`, so
a pixel of a mask or tile map sits on the level-0 pixels it summarises.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..geometry import GridPlacement
from ..slide import Slide, slide_stem

__all__ = [
    "add_or_update",
    "embedding_layer_data",
    "expression_layer_data",
    "legend_overlay",
    "mask_layer_data",
    "refresh_legend",
    "response_layer_data",
    "robust_limits",
    "show_expression",
    "show_map",
    "signature_layer_data",
    "slide_layer_data",
    "slide_layer_name",
    "tiles_layer_data",
    "value_unit",
]

LayerData = tuple[Any, dict[str, Any], str]


def slide_layer_name(slide: Slide) -> str:
    """The slide's layer name: its file name without the extension."""
    return slide_stem(slide.path)


def slide_layer_data(slide: Slide, name: str | None = None) -> list[LayerData]:
    """An image layer (multiscale, lazy) for a slide.

    Level-0 pixel ``(row, col)`` is centred at world ``(row * mpp_y, col * mpp_x)`` µm when the
    pixel size is known (else in pixels); every other layer of this plugin uses the same frame.
    """
    levels = slide.levels
    kwargs: dict[str, Any] = {
        "name": name or slide_layer_name(slide),
        "multiscale": len(levels) > 1,
        "metadata": {
            "path": str(slide.path),
            "mpp": slide.mpp,
            "mpp_source": slide.mpp_source,
            "objective_power": slide.objective_power,
            "format": slide.format,
            "deeppt_slide": slide,
        },
    }
    if slide.mpp_xy is not None:
        kwargs["scale"] = (slide.mpp_xy[1], slide.mpp_xy[0])
        kwargs["units"] = ("micrometer", "micrometer")
    kwargs["axis_labels"] = ("y", "x")
    data: Any
    if slide.is_rgb:
        data = levels
        kwargs.update(rgb=True, contrast_limits=(0, 255))
    elif slide.n_channels == 1:
        data = [lv[..., 0] for lv in levels]
        kwargs["rgb"] = False
    else:
        data = levels
        kwargs.update(rgb=False, channel_axis=2)
        kwargs["name"] = [f"{kwargs['name']} [c{i}]" for i in range(slide.n_channels)]
    if not kwargs["multiscale"]:
        data = data[0]
    return [(data, kwargs, "image")]


def _placed(placement: GridPlacement, mpp_xy: tuple[float, float] | None) -> dict[str, Any]:
    scale, translate = placement.napari_transform(mpp_xy)
    out: dict[str, Any] = {"scale": scale, "translate": translate, "axis_labels": ("y", "x")}
    if mpp_xy is not None:
        out["units"] = ("micrometer", "micrometer")
    return out


def mask_layer_data(mask: Any, slide_name: str) -> LayerData:
    """A Labels layer of the tissue pieces (1..n), exactly over the tissue."""
    mpp = (mask.slide_mpp, mask.slide_mpp) if mask.slide_mpp else None
    from napari.utils.colormaps import DirectLabelColormap

    kwargs = {
        "name": f"{slide_name} tissue",
        "opacity": 0.35,
        "colormap": DirectLabelColormap(color_dict=TISSUE_COLOURS),
        "metadata": {
            "deeppt_mask": mask,
            "area_mm2": (mask.area_um2 / 1e6) if mask.slide_mpp else None,
        },
        **_placed(mask.placement, mpp),
    }
    return (mask.pieces(), kwargs, "labels")


#: Every tissue piece in one green: napari's random colour for label 1 (a light tan) was
#: nearly invisible on eosin, and green never looks like the tiles' blues.
TISSUE_COLOURS = {
    None: (0.15, 0.85, 0.3, 1.0),
    0: (0.0, 0.0, 0.0, 0.0),
}

#: Kept tiles in two blues, checkerwise: neighbouring tiles never merge, and tiles never look
#: like the tissue layer's colours.
TILE_COLOURS = {
    None: (0.0, 0.0, 0.0, 0.0),
    0: (0.0, 0.0, 0.0, 0.0),
    1: (0.12, 0.35, 1.0, 1.0),
    2: (0.45, 0.75, 1.0, 1.0),
}


def tiles_layer_data(grid: Any, slide_name: str) -> LayerData:
    """Kept tiles as a Labels raster at tile stride (fast with 50,000 tiles): 1 and 2 alternate
    like a chessboard, drawn in two blues, so each tile stands apart from its neighbours."""
    from napari.utils.colormaps import DirectLabelColormap

    checker = (1 + (grid.rowcol[:, 0] + grid.rowcol[:, 1]) % 2).astype(np.uint8)
    raster = grid.raster(checker, fill=0)
    kwargs = {
        "name": f"{slide_name} tiles",
        "opacity": 0.35,
        "colormap": DirectLabelColormap(color_dict=TILE_COLOURS),
        "metadata": {"deeppt_grid": grid, "n_tiles": len(grid)},
        **_placed(grid.placement, (grid.slide_mpp, grid.slide_mpp)),
    }
    return (raster, kwargs, "labels")


def add_or_update(viewer: Any, layer_data: LayerData) -> Any:
    """Add a layer, or replace the data and placement of the same-named layer of that kind."""
    import napari.layers

    data, kwargs, kind = layer_data
    name = kwargs["name"]
    layer_class = getattr(napari.layers, kind.capitalize())
    # isinstance, not type(): docks get a PublicOnlyProxy of the viewer, whose layers are
    # proxies too (their type is the proxy's; isinstance sees through it)
    if name in viewer.layers and isinstance(viewer.layers[name], layer_class):
        layer = viewer.layers[name]
        layer.data = data
        for key in ("scale", "translate"):
            if key in kwargs:
                setattr(layer, key, kwargs[key])
        layer.metadata.update(kwargs.get("metadata", {}))
        return layer
    return getattr(viewer, f"add_{kind}")(data, **kwargs)


def embedding_layer_data(features: Any, slide_name: str) -> LayerData:
    """First three principal components of tile features as an RGBA image at tile stride."""
    rgb = features.embedding_rgb()
    alpha = (~np.isnan(rgb[..., 0])).astype(np.float32)
    rgba = np.concatenate([np.nan_to_num(rgb), alpha[..., None]], axis=-1)
    grid = features.grid
    kwargs = {
        "name": f"{slide_name} feature embedding",
        "rgb": True,
        "opacity": 0.7,
        "metadata": {"deeppt_features": features, "n_tiles": len(features)},
        **_placed(grid.placement, (grid.slide_mpp, grid.slide_mpp)),
    }
    return (rgba, kwargs, "image")


def robust_limits(values: np.ndarray) -> tuple[float, float]:
    """2nd–98th percentile of the finite values (a flat map gets a unit-wide range)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, [2, 98]))
    return (lo, hi) if hi > lo else (lo - 0.5, lo + 0.5)


#: How each prediction scale (``model.inputs.TRANSFORMS``) is written beside a value
#: (colour-bar titles, hover): ``none`` is whatever unit the training table had.
UNITS = {"log2p1": "log2(x+1)", "none": "(untransformed)"}


def value_unit(transform: str) -> str:
    """The unit a prediction's values are on, as shown to a user (``log2p1`` → log2(x+1))."""
    return UNITS.get(transform, transform)


def tile_values_layer_data(
    grid: Any,
    values: np.ndarray,
    name: str,
    metadata: dict[str, Any],
    colormap: str = "viridis",
    contrast_limits: tuple[float, float] | None = None,
) -> LayerData:
    """One value per tile as a float image at tile stride over the slide; NaN (clear) where
    no tile was kept."""
    raster = grid.raster(np.asarray(values, np.float32), fill=np.nan).astype(np.float32)
    kwargs = {
        "name": name,
        "colormap": colormap,
        "contrast_limits": contrast_limits or robust_limits(raster),
        "opacity": 0.75,
        "metadata": metadata,
        **_placed(grid.placement, (grid.slide_mpp, grid.slide_mpp)),
    }
    return (raster, kwargs, "image")


def _map_metadata(
    kind: str, slide_name: str, prediction: Any, label: str, unit: str, title: str
) -> dict[str, Any]:
    """What every map layer carries: which map of which slide, and how to name its values."""
    return {
        "deeppt_map": kind,
        "slide_name": slide_name,
        "deeppt_prediction": prediction,
        "value_label": label,
        "unit": unit,
        "title": title,
        "transform": prediction.transform,
        "demo_model": prediction.demo,
    }


def expression_layer_data(prediction: Any, gene: str, slide_name: str) -> LayerData:
    """One gene's tile predictions as ``<slide> <gene>``, at tile stride; NaN (clear) off
    tissue. Its colour bar is titled with the gene and the unit."""
    values = prediction.tile_expression[:, prediction.gene_index(gene)]
    unit = value_unit(prediction.transform)
    metadata = _map_metadata("expression", slide_name, prediction, gene, unit, f"{gene} {unit}")
    metadata["gene"] = gene
    return tile_values_layer_data(prediction.grid, values, f"{slide_name} {gene}", metadata)


def signature_layer_data(prediction: Any, genes: list[str], slide_name: str) -> LayerData:
    """The mean of several genes' tile predictions (a signature) as ``<slide> signature``."""
    genes = list(dict.fromkeys(genes))
    values, slide_value = prediction.signature(genes)
    unit = value_unit(prediction.transform)
    shown = ", ".join(genes[:3]) + (f" +{len(genes) - 3}" if len(genes) > 3 else "")
    metadata = _map_metadata(
        "signature", slide_name, prediction, "signature", f"mean {unit}", f"{shown} mean {unit}"
    )
    metadata.update(genes=list(genes), slide_value=slide_value)
    name = f"{slide_name} signature"
    return tile_values_layer_data(prediction.grid, values, name, metadata)


def response_layer_data(
    prediction: Any, tile_scores: np.ndarray, drug: str, slide_name: str, threshold: float
) -> LayerData:
    """A drug's per-tile matching scores (0–1) as ``<slide> <drug> response``."""
    metadata = _map_metadata(
        "response", slide_name, prediction, drug, "score", f"{drug} response score (0-1)"
    )
    metadata.update(
        drug=drug,
        threshold=threshold,
        note="tile scores against the cohort's cut-offs: exploratory",
    )
    name = f"{slide_name} {drug} response"
    return tile_values_layer_data(prediction.grid, tile_scores, name, metadata, "PiYG", (0.0, 1.0))


def _unwrapped(obj: Any) -> Any:
    """The object behind napari's PublicOnlyProxy (docks get proxies of viewer and layers)."""
    return getattr(obj, "__wrapped__", obj)


#: The legend title each viewer last got from :func:`refresh_legend` (by ``id`` of the viewer),
#: so a text the user put in the viewer's text overlay is never overwritten.
_LEGEND_TEXT: dict[int, str] = {}


def legend_overlay(viewer: Any) -> Any:
    """The viewer's text overlay (``canvas.overlays.text`` since napari 0.9)."""
    canvas = getattr(viewer, "canvas", None)
    overlays = getattr(canvas, "overlays", None)
    return overlays.text if overlays is not None else viewer.text_overlay


def refresh_legend(viewer: Any) -> None:
    """One legend for the maps: the colour bar and title of the topmost visible map layer.

    napari's colour bar has no title, and every visible colour bar stacks in the same corner,
    so several maps would show several unnamed bars. Only the topmost visible map's colour bar
    is shown, with the viewer's text overlay above it as its title (e.g. ``ERBB2 log2(x+1)``).
    Called when a map is shown, hidden, moved or removed.
    """
    maps = [layer for layer in viewer.layers if "deeppt_map" in layer.metadata]
    top = next((layer for layer in reversed(maps) if layer.visible), None)
    for layer in maps:
        layer.colorbar.visible = layer is top
    overlay = legend_overlay(viewer)
    key = id(_unwrapped(viewer))
    ours = overlay.text in ("", _LEGEND_TEXT.get(key))
    if not ours:
        return
    if top is None:
        overlay.visible = False
        overlay.text = _LEGEND_TEXT[key] = ""
        return
    overlay.text = _LEGEND_TEXT[key] = top.metadata["title"]
    overlay.position = top.colorbar.position
    tiling = getattr(getattr(viewer, "canvas", None), "overlay_tiling", None)
    if tiling is not None:  # napari ≥ 0.9 puts a corner's overlays side by side by default
        setattr(tiling, str(top.colorbar.position), "vertical")
    overlay.font_size = 11
    overlay.visible = True


def _follow_legend(viewer: Any, layer: Any) -> None:
    """Keep the legend right when ``layer`` is hidden or the layer list changes."""
    inner = _unwrapped(layer)
    if not getattr(inner, "_deeppt_legend_followed", False):
        inner._deeppt_legend_followed = True
        inner.events.visible.connect(lambda _event: refresh_legend(viewer))
    watched = _unwrapped(viewer)
    if not getattr(watched, "_deeppt_legend_followed", False):
        watched._deeppt_legend_followed = True
        events = viewer.layers.events
        for name in ("inserted", "removed", "moved", "reordered"):
            getattr(events, name).connect(lambda _event: refresh_legend(viewer))
    refresh_legend(viewer)


def _title_and_hover(viewer: Any, layer: Any) -> None:
    """Title the map's colour bar (see :func:`refresh_legend`) and say on hover what a value is:
    ``<label> <value> <unit>`` (e.g. ``ERBB2 6.36 log2(x+1)``) instead of a bare number."""
    inner = _unwrapped(layer)
    if not getattr(inner.get_status, "deeppt_labelled", False):
        inner.get_status = _labelled_status(inner)
    _follow_legend(viewer, layer)


def _labelled_status(layer: Any) -> Any:
    """``layer.get_status`` whose value reads ``<label> <value> <unit>`` (labels read live from
    the metadata, so a gene switch renames them)."""
    plain = type(layer).get_status.__get__(layer)

    def get_status(*args: Any, **kwargs: Any) -> dict[str, str]:
        status = plain(*args, **kwargs)
        value = status.get("value", "")
        if value and value.strip().lower() != "nan":
            label, unit = layer.metadata.get("value_label", ""), layer.metadata.get("unit", "")
            status["value"] = " ".join(part for part in (label, value, unit) if part)
            status["coordinates"] = f"{status.get('coords', '')}: {status['value']}"
        return status

    get_status.deeppt_labelled = True  # type: ignore[attr-defined]
    return get_status


def show_map(viewer: Any, layer_data: LayerData) -> Any:
    """Add a map layer, or replace the slide's map of the same kind (one per kind and slide).

    Switching gene or drug renames and refills the existing layer rather than adding another,
    so maps of several genes never blend; the colour bar is shown with its title.
    """
    data, kwargs, _ = layer_data
    metadata = kwargs["metadata"]
    key = (metadata["deeppt_map"], metadata["slide_name"])
    layer = next(
        (
            lyr
            for lyr in viewer.layers
            if (lyr.metadata.get("deeppt_map"), lyr.metadata.get("slide_name")) == key
        ),
        None,
    )
    if layer is None:
        layer = viewer.add_image(data, **kwargs)
    else:
        layer.data = data
        for attribute in ("scale", "translate", "contrast_limits", "colormap"):
            setattr(layer, attribute, kwargs[attribute])
        layer.metadata.clear()
        layer.metadata.update(metadata)
        layer.name = kwargs["name"]
    _title_and_hover(viewer, layer)
    return layer


def show_expression(viewer: Any, prediction: Any, gene: str, slide_name: str) -> Any:
    """Show ``gene``'s map as ``<slide> <gene>`` (replacing the slide's expression map)."""
    return show_map(viewer, expression_layer_data(prediction, gene, slide_name))


def shapes_to_regions(shapes: Any, slide_layer: Any) -> list[Any]:
    """A napari Shapes layer's polygons, rectangles and ellipses as level-0 regions.

    Vertices go through world coordinates (µm) into the slide layer's level-0 pixels, where
    napari puts pixel ``i``'s centre at data coordinate ``i`` and our level-0 pixel ``i``
    covers ``[i, i + 1)``. Lines and paths enclose nothing and are skipped.
    """
    from ..geometry import Region

    regions = []
    for vertices, kind in zip(shapes.data, shapes.shape_type, strict=True):
        vertices = np.asarray(vertices, np.float64)[:, -2:]
        if kind == "ellipse":  # napari stores an ellipse's bounding box corners
            centre = vertices.mean(axis=0)
            u, v = (vertices[1] - vertices[0]) / 2, (vertices[3] - vertices[0]) / 2
            angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)[:, None]
            vertices = centre + np.cos(angles) * u + np.sin(angles) * v
        elif kind not in ("polygon", "rectangle"):
            continue
        world = np.array([shapes.data_to_world(p) for p in vertices])[:, -2:]
        data = np.array([slide_layer.world_to_data(p) for p in world])[:, -2:]
        regions.append(Region(np.column_stack([data[:, 1] + 0.5, data[:, 0] + 0.5])))
    return regions


def regions_to_shapes_data(regions: list[Any], slide_layer: Any, name: str) -> LayerData:
    """Level-0 regions (QuPath annotations, say) as a Shapes layer over the slide.

    The inverse of :func:`shapes_to_regions`. napari shapes have no holes: only each
    region's exterior is drawn.
    """
    polygons = []
    for region in regions:
        xy = np.asarray(region.exterior, np.float64)
        if len(xy) > 3 and np.allclose(xy[0], xy[-1]):
            xy = xy[:-1]  # GeoJSON rings repeat their first vertex
        data = np.column_stack([xy[:, 1] - 0.5, xy[:, 0] - 0.5])  # (row, col) napari data
        world = np.array([slide_layer.data_to_world(p) for p in data])
        polygons.append(world)
    classes = [region.classification or "" for region in regions]
    kwargs = {
        "name": name,
        "shape_type": "polygon",
        "edge_width": 4 * float(np.min(slide_layer.scale[-2:])),
        "edge_color": "yellow",
        "face_color": "transparent",
        "features": {"class": classes, "name": [region.name for region in regions]},
        "text": {"string": "{class}", "color": "yellow"} if any(classes) else None,
    }
    return (polygons, kwargs, "shapes")
