"""The PNG pictures ``deeppt`` writes beside its tables: overview, tiles, expression map.

Pillow and matplotlib are imported inside the writers, so ``deeppt --help`` stays fast.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_path

__all__ = ["write_expression_png", "write_overview_png", "write_tiles_overview_png"]


def write_overview_png(
    slide: Any, path: Path, max_size: int = 1600, overwrite: bool = True
) -> Path:
    """Save a thumbnail of ``slide`` with a scale bar (when the pixel size is known).

    Parameters
    ----------
    slide
        An open :class:`~napari_deeppt.slide.Slide`.
    path
        The PNG to write.
    max_size
        Longest side of the thumbnail in pixels.
    overwrite
        Replace an existing file.

    Returns
    -------
    Path
        ``path``.
    """
    from PIL import Image, ImageDraw

    thumb = slide.get_thumbnail(max_size)
    image = Image.fromarray(thumb[..., :3] if thumb.shape[2] >= 3 else thumb[..., 0])
    image = image.convert("RGB")
    if slide.mpp is not None:
        um_per_px = slide.mpp * slide.dimensions[0] / image.width
        bar_um = _nice_length(image.width * um_per_px / 5)
        bar_px = round(bar_um / um_per_px)
        draw = ImageDraw.Draw(image)
        x0, y0 = 12, image.height - 22
        draw.rectangle([x0 - 4, y0 - 16, x0 + bar_px + 4, y0 + 10], fill=(255, 255, 255))
        draw.rectangle([x0, y0, x0 + bar_px, y0 + 6], fill=(0, 0, 0))
        label = f"{bar_um / 1000:g} mm" if bar_um >= 1000 else f"{bar_um:g} um"
        draw.text((x0, y0 - 14), label, fill=(0, 0, 0))
    with atomic_path(path, overwrite=overwrite) as tmp:
        image.save(tmp, format="PNG")
    return path


def _nice_length(value: float) -> float:
    """The largest 1, 2 or 5 × 10ⁿ not above ``value``: a scale bar's length."""
    exponent = math.floor(math.log10(value))
    for step in (5, 2, 1):
        if step * 10**exponent <= value:
            return float(step * 10**exponent)
    return float(10**exponent)


def write_tiles_overview_png(
    slide: Any, mask: Any, grid: Any, path: Path, max_size: int = 1600, overwrite: bool = False
) -> Path:
    """Thumbnail with the tissue outline (green) and the kept tiles (blue) drawn on it.

    Parameters
    ----------
    slide, path, max_size, overwrite
        As for :func:`write_overview_png`; returns ``path``.
    mask, grid
        The slide's :class:`~napari_deeppt.tissue.TissueMask` and
        :class:`~napari_deeppt.tiles.TileGrid`.
    """
    from PIL import Image, ImageDraw
    from scipy import ndimage

    thumb = slide.get_thumbnail(max_size)
    image = Image.fromarray(thumb[..., :3]).convert("RGB")
    scale_x = image.width / slide.dimensions[0]
    scale_y = image.height / slide.dimensions[1]
    outline = mask.mask ^ ndimage.binary_erosion(mask.mask)
    outline_img = Image.fromarray((outline * 255).astype(np.uint8)).resize(image.size)
    green = Image.new("RGB", image.size, (0, 200, 0))
    image.paste(green, mask=outline_img.point(lambda v: 255 if v > 0 else 0))
    draw = ImageDraw.Draw(image)
    size = grid.size_level0
    for x, y in grid.xy:
        draw.rectangle(
            [x * scale_x, y * scale_y, (x + size) * scale_x - 1, (y + size) * scale_y - 1],
            outline=(30, 80, 255),
        )
    with atomic_path(path, overwrite=overwrite) as tmp:
        image.save(tmp, format="PNG")
    return path


def write_expression_png(
    slide: Any,
    prediction: Any,
    gene: str,
    path: Path,
    max_size: int = 1200,
    overwrite: bool = False,
) -> Path:
    """Thumbnail beside the same thumbnail with one gene's tile map over it (viridis).

    Parameters
    ----------
    slide, path, max_size, overwrite
        As for :func:`write_overview_png` (``max_size`` for each of the two thumbnails);
        returns ``path``.
    prediction
        The slide's :class:`~napari_deeppt.prediction.Prediction`.
    gene
        The gene to map; the colour scale spans its 2nd to 98th percentile.
    """
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    thumb = Image.fromarray(slide.get_thumbnail(max_size)[..., :3]).convert("RGB")
    raster = prediction.tile_map(gene)
    finite = raster[np.isfinite(raster)]
    lo, hi = np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0)
    scaled = np.clip((raster - lo) / max(hi - lo, 1e-9), 0, 1)
    rgba = (colormaps["viridis"](np.nan_to_num(scaled)) * 255).astype(np.uint8)
    rgba[..., 3] = np.where(np.isfinite(raster), 190, 0)
    grid = prediction.grid
    scale = thumb.width / slide.dimensions[0]
    stride = grid.stride_level0 * scale
    overlay = Image.fromarray(rgba, "RGBA").resize(
        (max(1, round(raster.shape[1] * stride)), max(1, round(raster.shape[0] * stride))),
        Image.Resampling.NEAREST,
    )
    right = thumb.copy()
    right.paste(overlay, (0, 0), overlay)
    canvas = Image.new("RGB", (thumb.width * 2 + 10, thumb.height + 40), (255, 255, 255))
    canvas.paste(thumb, (0, 40))
    canvas.paste(right, (thumb.width + 10, 40))
    label = f"{gene} predicted per tile ({prediction.transform}, {lo:.2f} to {hi:.2f})" + (
        "  -  DEMO MODEL trained on synthetic data" if prediction.demo else ""
    )
    ImageDraw.Draw(canvas).text((10, 12), label, fill=(0, 0, 0))
    with atomic_path(path, overwrite=overwrite) as tmp:
        canvas.save(tmp, format="PNG")
    return path
