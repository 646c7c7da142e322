"""Layer data tuples built from core objects; scale and translate in µm."""

from __future__ import annotations

from typing import Any

from ..slide import Slide

__all__ = ["slide_layer_data", "slide_layer_name"]


def slide_layer_name(slide: Slide) -> str:
    name = slide.path.name
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr", ".svs", ".tiff", ".tif", ".zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return slide.path.stem


def slide_layer_data(slide: Slide, name: str | None = None) -> list[tuple[Any, dict, str]]:
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
