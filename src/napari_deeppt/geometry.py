"""Where a raster sits on level 0, and how napari must place it (scale/translate in µm).

Convention: level-0 pixel ``i`` covers the continuous interval ``[i, i + 1)``; napari puts the
centre of data pixel ``i`` at world ``i * scale + translate``. The slide layer has scale
``mpp`` and translate 0, so level-0 pixel ``i`` is centred at world ``i * mpp`` µm.

Regions read from files (GeoJSON) come from :mod:`napari_deeppt.io.geojson`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["GridPlacement", "Region", "rasterize_regions"]


@dataclass(frozen=True)
class GridPlacement:
    """A raster whose pixel ``(row, col)`` covers a rectangle of level 0.

    Pixel ``(r, c)`` covers ``[x0 + c·step_x, x0 + c·step_x + size_x)`` ×
    ``[y0 + r·step_y, y0 + r·step_y + size_y)`` in level-0 pixels.

    Attributes
    ----------
    step_xy
        Level-0 pixels between neighbouring raster pixels.
    size_xy
        Level-0 pixels one raster pixel covers (larger than ``step_xy`` for overlapping tiles).
    origin_xy
        Level-0 position of the top-left corner of raster pixel ``(0, 0)``.
    """

    step_xy: tuple[float, float]
    size_xy: tuple[float, float]
    origin_xy: tuple[float, float] = (0.0, 0.0)

    def napari_transform(
        self, mpp_xy: tuple[float, float] | None
    ) -> tuple[tuple[float, float], tuple[float, float]]:
        """``(scale, translate)`` in (y, x) order, µm when ``mpp_xy`` is known else pixels."""
        mx, my = mpp_xy if mpp_xy is not None else (1.0, 1.0)
        scale = (self.step_xy[1] * my, self.step_xy[0] * mx)
        translate = (
            (self.origin_xy[1] + self.size_xy[1] / 2 - 0.5) * my,
            (self.origin_xy[0] + self.size_xy[0] / 2 - 0.5) * mx,
        )
        return scale, translate


@dataclass(frozen=True)
class Region:
    """A polygon on level 0 (continuous pixel coordinates, origin at the first pixel's corner).

    Attributes
    ----------
    exterior
        ``(n, 2)`` vertices ``(x, y)``.
    holes
        Rings cut out of it, each ``(m, 2)``.
    name, classification
        From the annotation it came from (QuPath's name and class), when known.
    """

    exterior: np.ndarray
    holes: tuple[np.ndarray, ...] = ()
    name: str = ""
    classification: str | None = None

    def rasterize(self, shape: tuple[int, int], downsample_xy: tuple[float, float]) -> np.ndarray:
        """Boolean raster of ``shape`` whose pixel ``(r, c)`` covers level-0
        ``[c·dx, (c+1)·dx) × [r·dy, (r+1)·dy)``: true where the pixel's centre is inside."""
        out = _fill(self.exterior, shape, downsample_xy)
        for hole in self.holes:
            out &= ~_fill(hole, shape, downsample_xy)
        return out


def _fill(ring: np.ndarray, shape: tuple[int, int], downsample_xy: tuple[float, float]) -> Any:
    from skimage.draw import polygon

    ring = np.asarray(ring, np.float64)
    out = np.zeros(shape, bool)
    if len(ring) < 3:
        return out
    # level-0 x → raster column whose centre is at x: c = x / dx − 0.5
    rows = ring[:, 1] / downsample_xy[1] - 0.5
    cols = ring[:, 0] / downsample_xy[0] - 0.5
    rr, cc = polygon(rows, cols, shape)
    out[rr, cc] = True
    return out


def rasterize_regions(
    regions: list[Region], shape: tuple[int, int], downsample_xy: tuple[float, float]
) -> np.ndarray:
    """Union of :meth:`Region.rasterize` over ``regions``.

    Parameters
    ----------
    regions
        Regions in level-0 pixels.
    shape, downsample_xy
        The raster's ``(rows, cols)`` and its ``(x, y)`` downsample from level 0.

    Returns
    -------
    numpy.ndarray
        Boolean ``shape``: true where a pixel's centre is inside any region (all false for
        no regions).
    """
    out = np.zeros(shape, bool)
    for region in regions:
        out |= region.rasterize(shape, downsample_xy)
    return out
