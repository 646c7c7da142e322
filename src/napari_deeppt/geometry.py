"""Where a raster sits on level 0, and how napari must place it (scale/translate in µm).

Convention: level-0 pixel ``i`` covers the continuous interval ``[i, i + 1)``; napari puts the
centre of data pixel ``i`` at world ``i * scale + translate``. The slide layer has scale
``mpp`` and translate 0, so level-0 pixel ``i`` is centred at world ``i * mpp`` µm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["GridPlacement"]


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

    def centre_level0(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Continuous level-0 ``(x, y)`` of raster pixel centres."""
        x = self.origin_xy[0] + np.asarray(cols) * self.step_xy[0] + self.size_xy[0] / 2
        y = self.origin_xy[1] + np.asarray(rows) * self.step_xy[1] + self.size_xy[1] / 2
        return x, y

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
