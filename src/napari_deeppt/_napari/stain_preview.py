"""A window beside napari's canvas showing raw and stain-normalised tiles.

The preview is a picture of a few tiles, not a place on the slide: it opens in its own window
so the canvas keeps one world in µm (a pixel-unit layer would break the scale bar and Home).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["StainPreviewWindow"]


def _pixmap(rgb: np.ndarray) -> Any:
    """A QPixmap of an ``(h, w, 3)`` uint8 array (copied: Qt keeps no reference to numpy)."""
    from qtpy.QtGui import QImage, QPixmap

    rgb = np.ascontiguousarray(rgb, np.uint8)
    height, width, _ = rgb.shape
    image = QImage(rgb.data, width, height, 3 * width, QImage.Format.Format_RGB888)
    return QPixmap.fromImage(image.copy())


class StainPreviewWindow:
    """A non-modal window: row labels "raw" / "normalised (<method>)" beside the mosaic.

    One window per dock: showing another preview replaces the picture in place.
    """

    def __init__(self, parent: Any) -> None:
        from qtpy.QtCore import Qt
        from qtpy.QtWidgets import QDialog, QGridLayout, QLabel

        self.dialog = QDialog(parent)
        self.dialog.setWindowFlag(Qt.WindowType.Window, True)
        self.dialog.setModal(False)
        layout = QGridLayout(self.dialog)
        self.raw_label = QLabel("raw")
        self.normalised_label = QLabel("normalised")
        self.picture = QLabel()
        self.caption = QLabel()
        self.caption.setWordWrap(True)
        for row, label in enumerate((self.raw_label, self.normalised_label)):
            label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            layout.addWidget(label, row, 0)
        layout.addWidget(self.picture, 0, 1, 2, 1)
        layout.addWidget(self.caption, 2, 0, 1, 2)
        self.mosaic: np.ndarray | None = None

    def show(
        self, mosaic: np.ndarray, method: str, slide_name: str, tiles: str, gap_px: int
    ) -> None:
        """Show ``mosaic`` (raw row over normalised row, ``gap_px`` apart) and raise the window.

        ``tiles`` describes the tiles shown (how many, their size in µm) for the caption.
        """
        self.mosaic = mosaic
        row_px = (mosaic.shape[0] - gap_px) // 2
        self.dialog.setWindowTitle(f"Stain normalisation preview: {slide_name} ({method})")
        self.normalised_label.setText(f"normalised\n({method})")
        for label in (self.raw_label, self.normalised_label):
            label.setFixedHeight(row_px + gap_px // 2)
        self.picture.setPixmap(_pixmap(mosaic))
        self.caption.setText(f"{tiles}; top raw, bottom normalised with {method}")
        self.dialog.adjustSize()
        self.dialog.show()
        self.dialog.raise_()
