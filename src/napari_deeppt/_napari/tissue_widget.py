"""Dock widget "Tissue & tiles": mask and tile parameters, run with progress and Cancel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import (
    ComboBox,
    FloatSpinBox,
    PushButton,
    SpinBox,
)

from ..stain import StainMethod
from ._jobs import Job, JobWidget, StatusLine
from .console import slide_of
from .fields import param_widget, slide_picker
from .layers import add_or_update, mask_layer_data, regions_to_shapes_data, tiles_layer_data

__all__ = ["TissueTilesWidget"]


class TissueTilesWidget(JobWidget):
    """Detect tissue, cut the tile grid and preview stain normalisation for a slide layer."""

    def __init__(self, napari_viewer: Any) -> None:

        super().__init__(napari_viewer, "Detect tissue and cut tiles")
        self._last: tuple[Any, Any, Any] | None = None  # (slide, grid, layer name)
        self.preview_window: Any = None  # a StainPreviewWindow once a preview was shown

        self.slide_layer = slide_picker()
        self.pixel_size = StatusLine(label="pixel size")
        self.slide_mpp = FloatSpinBox(
            label="override µm/px",
            value=0.0,
            min=0.0,
            max=100.0,
            step=0.001,
            tooltip="0 = the file's pixel size; set it when the file has none or it is wrong",
        )
        self._parameter_fields()
        self.roi_layer = self._regions_picker()
        self._action_widgets()
        self.extend(
            [
                self.slide_layer,
                self.pixel_size,
                self.slide_mpp,
                self.tile_px,
                self.tile_mpp,
                self.stride_px,
                self.min_tissue,
                self.edge_filter,
                self.import_regions_button,
                self.roi_layer,
                self.roi_mode,
                *self._controls(),
                self.recut_button,
                self.export_button,
                self.preview_n,
                self.preview_method,
                self.preview_button,
            ]
        )
        self.tissue_settings = self._fold(
            "Tissue detection settings",
            [
                self.mask_mpp,
                self.min_saturation,
                self.min_area_um2,
                self.closing_um,
                self.opening_um,
                self.exclude_dark,
                self.exclude_pen,
            ],
            before=self.tile_px,
        )
        self.preview_button.changed.connect(self.preview)
        self.recut_button.changed.connect(self.recut)
        self.import_regions_button.changed.connect(self._import_regions_dialog)
        self.export_button.changed.connect(self._export_dialog)
        self.slide_layer.changed.connect(self._describe_slide)
        self.slide_mpp.changed.connect(self._describe_slide)
        self._describe_slide()

    def _action_widgets(self) -> None:
        """Regions, re-cut, export and stain preview controls."""
        self.import_regions_button = PushButton(
            text="Import QuPath annotations (GeoJSON)…",
            tooltip="add a Shapes layer of the file's polygons over the slide, to use as regions",
        )
        self.roi_mode = ComboBox(
            label="use regions to",
            choices=["keep tissue inside", "drop tissue inside"],
            value="keep tissue inside",
            tooltip="keep only the tissue inside the regions (e.g. an outlined tumour), or "
            "drop the tissue inside them (e.g. necrosis, folds)",
        )
        self.export_button = PushButton(
            text="Export tissue and tiles for QuPath (GeoJSON)…", enabled=False
        )
        self.recut_button = PushButton(
            text="Cut tiles from the edited tissue layer",
            tooltip="paint or erase on the '<slide> tissue' layer, then cut the tiles again "
            "from it (tissue detection is not rerun)",
        )
        self.preview_n = SpinBox(
            label="preview tiles",
            value=8,
            min=1,
            max=16,
            tooltip="how many random kept tiles the stain preview shows",
        )
        methods = [m.value for m in StainMethod if m is not StainMethod.NONE]
        self.preview_method = ComboBox(
            label="method",
            choices=methods,
            value=methods[0],
            tooltip="stain normalisation to preview: macenko (DeepPT's, to its H&E reference) "
            "or reinhard (colour statistics)",
        )
        self.preview_button = PushButton(text="Preview normalisation", enabled=False)

    def _parameter_fields(self) -> None:
        """Tissue and tile fields, with the defaults and help of TissueParams/TileGridParams."""
        from ..tiles import TileGridParams as Tiles
        from ..tissue import TissueParams as Tissue

        self.mask_mpp = param_widget(Tissue, "mpp", "mask µm/px", min=0.5, max=64.0)
        self.min_saturation = param_widget(
            Tissue, "min_saturation", "min saturation", min=0.0, max=0.99, step=0.01
        )
        self.min_area_um2 = param_widget(
            Tissue, "min_area_um2", "min piece (µm²)", min=0.0, max=1e9, step=1000.0
        )
        self.closing_um = param_widget(Tissue, "closing_um", "closing (µm)", min=0.0, max=1e3)
        self.opening_um = param_widget(Tissue, "opening_um", "opening (µm)", min=0.0, max=1e3)
        self.exclude_dark = param_widget(Tissue, "exclude_dark", "drop dark artefacts")
        self.exclude_pen = param_widget(Tissue, "exclude_pen", "drop pen marks")
        self.tile_px = param_widget(Tiles, "tile_px", "tile px", min=16, max=8192)
        self.tile_mpp = param_widget(Tiles, "mpp", "tile µm/px", min=0.05, max=50.0, step=0.05)
        self.stride_px = param_widget(
            Tiles, "stride_px", "stride px (0 = tile)", value=0, min=0, max=8192
        )
        self.min_tissue = param_widget(
            Tiles, "min_tissue", "min tissue", min=0.0, max=1.0, step=0.05
        )
        self.edge_filter = param_widget(Tiles, "edge_filter", "Sobel edge filter (DeepPT)")

    # -- helpers ------------------------------------------------------------------------------
    def _describe_slide(self, *_: Any) -> None:
        """Show the slide's pixel size and where it came from (or that the file has none)."""
        layer = self.slide_layer.value
        if layer is None:
            self.pixel_size.value = ""
            return
        try:
            slide = slide_of(layer)
        except Exception:  # not a layer this plugin opened
            self.pixel_size.value = "unknown: not opened with napari-deeppt"
            return
        if self.slide_mpp.value:
            self.pixel_size.value = f"{self.slide_mpp.value:.4g} µm/px (override)"
        elif slide.mpp is None:
            self.pixel_size.value = "none in the file: set the override below"
        else:
            power = f", {slide.objective_power:g}×" if slide.objective_power else ""
            self.pixel_size.value = f"{slide.mpp:.4g} µm/px ({slide.mpp_source}{power})"

    def _busy(self, busy: bool) -> None:
        super()._busy(busy)
        self.recut_button.enabled = not busy
        self.export_button.enabled = not busy and self._last is not None
        self.preview_button.enabled = not busy and self._last is not None

    def _grid_options(self) -> dict[str, Any]:
        return {
            "tile_px": self.tile_px.value,
            "mpp": self.tile_mpp.value,
            "stride_px": self.stride_px.value or None,
            "min_tissue": self.min_tissue.value,
            "edge_filter": self.edge_filter.value,
        }

    def _slide(self) -> Any:
        layer = self.slide_layer.value
        if layer is None:
            raise ValueError("choose a slide layer first (open a slide with napari-deeppt)")
        return layer, slide_of(layer, mpp=self.slide_mpp.value or None)

    # -- actions ------------------------------------------------------------------------------
    def run(self) -> Job | None:
        """Detect tissue and cut tiles in a thread worker; adds/updates the two layers."""
        from ..tiles import detect_and_tile

        try:
            layer, slide = self._slide()
            tissue = {
                "mpp": self.mask_mpp.value,
                "min_saturation": self.min_saturation.value,
                "min_area_um2": self.min_area_um2.value,
                "closing_um": self.closing_um.value,
                "opening_um": self.opening_um.value,
                "exclude_dark": self.exclude_dark.value,
                "exclude_pen": self.exclude_pen.value,
            }
            grid_options = self._grid_options()
            regions = self._chosen_regions(self.roi_layer, layer)
        except Exception as exc:
            self._on_error(exc)
            return None
        if regions is not None:
            key = "roi" if self.roi_mode.value == "keep tissue inside" else "exclude_regions"
            grid_options[key] = regions
        name = layer.name

        def on_result(result: tuple[Any, Any]) -> None:
            mask, grid = result
            add_or_update(self._viewer, mask_layer_data(mask, name))
            add_or_update(self._viewer, tiles_layer_data(grid, name))
            self._last = (slide, grid, name)
            area = f", tissue {mask.area_um2 / 1e6:.2f} mm²" if mask.slide_mpp else ""
            rows, cols = grid.grid_shape
            if mask.is_empty and regions is not None:
                self.status.value = "no tissue inside the regions: check the shapes layer"
            elif mask.is_empty:
                self.status.value = (
                    "no tissue found: lower 'min saturation' or 'min piece', or check the slide"
                )
            else:
                self.status.value = f"{len(grid)} tiles kept of {rows * cols}{area}"

        return self._start(
            detect_and_tile, {"slide": slide, "tissue": tissue, **grid_options}, on_result
        )

    def recut(self) -> Job | None:
        """Cut the tiles again from the tissue layer as the user painted or erased it."""
        from dataclasses import replace

        from ..tiles import make_tile_grid

        try:
            layer, slide = self._slide()
            name = f"{layer.name} tissue"
            if name not in self._viewer.layers:
                raise ValueError("detect tissue first: there is no tissue layer to edit")
            tissue_layer = self._viewer.layers[name]
            mask = tissue_layer.metadata.get("deeppt_mask")
            edited = np.asarray(tissue_layer.data) > 0
            if mask is None or edited.shape != mask.mask.shape:
                raise ValueError(f"{name!r} is not a tissue layer made by this dock")
            mask = replace(mask, mask=edited)
            grid_options = self._grid_options()
        except Exception as exc:
            self._on_error(exc)
            return None

        def on_result(grid: Any) -> None:
            tissue_layer.metadata["deeppt_mask"] = mask
            if mask.slide_mpp:
                tissue_layer.metadata["area_mm2"] = mask.area_um2 / 1e6
            add_or_update(self._viewer, tiles_layer_data(grid, layer.name))
            self._last = (slide, grid, layer.name)
            area = f", tissue {mask.area_um2 / 1e6:.2f} mm²" if mask.slide_mpp else ""
            self.status.value = f"{len(grid)} tiles kept from the edited tissue{area}"

        return self._start(
            make_tile_grid, {"slide": slide, "mask": mask, **grid_options}, on_result
        )

    def import_regions(self, path: str | Path) -> Any:
        """Add a Shapes layer of a GeoJSON file's polygons (level-0 px) over the slide."""
        from ..io.geojson import read_regions

        layer, _ = self._slide()
        regions = read_regions(path)
        data = regions_to_shapes_data(regions, layer, f"{layer.name} regions ({Path(path).stem})")
        shapes = add_or_update(self._viewer, data)
        self.reset_choices()
        self.roi_layer.value = shapes
        holes = sum(len(r.holes) for r in regions)
        note = f"; {holes} hole(s) not shown or used" if holes else ""
        self.status.value = f"imported {len(regions)} region(s) from {Path(path).name}{note}"
        return shapes

    def export_geojson(self, folder: str | Path, overwrite: bool = False) -> list[Path]:
        """Write ``<slide>.tissue.geojson`` and ``<slide>.tiles.geojson`` into ``folder``."""
        if self._last is None:
            raise ValueError("detect tissue and cut tiles first")
        _, grid, name = self._last
        tissue_layer = self._viewer.layers[f"{name} tissue"]
        mask = tissue_layer.metadata["deeppt_mask"]
        folder = Path(folder)
        return [
            mask.to_geojson(folder / f"{name}.tissue.geojson", overwrite=overwrite),
            grid.to_geojson(folder / f"{name}.tiles.geojson", overwrite=overwrite),
        ]

    def _slide_folder(self) -> str:
        """The folder of the chosen slide (where dialogs open), or "" when there is none."""
        layer = self.slide_layer.value
        path = None if layer is None else layer.metadata.get("path")
        return str(Path(path).parent) if path else ""

    def _import_regions_dialog(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getOpenFileName(
            self.native, "QuPath annotations", self._slide_folder(), "GeoJSON (*.geojson *.json)"
        )
        if path:
            try:
                self.import_regions(path)
            except Exception as exc:
                self._on_error(exc)

    def _export_dialog(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        folder = QFileDialog.getExistingDirectory(
            self.native, "Export tissue and tiles (GeoJSON) into", self._slide_folder()
        )
        if not folder:
            return

        def job(progress: Any = None, cancel: Any = None) -> list[Path]:
            return self.export_geojson(folder)

        def on_result(paths: list[Path]) -> None:
            self.status.value = "wrote " + ", ".join(p.name for p in paths)

        job.__name__ = "export_geojson"
        self._start(job, {}, on_result, status="writing GeoJSON…")

    def preview(self) -> Job | None:
        """Raw (top) and normalised (bottom) tiles in a window of their own, so the canvas
        stays in µm (see :mod:`~napari_deeppt._napari.stain_preview`)."""
        from ..features.preprocess import preview_mosaic
        from .stain_preview import StainPreviewWindow

        if self._last is None:
            self.status.value = "run tissue detection and tiling first"
            return None
        slide, grid, name = self._last
        n, method = self.preview_n.value, self.preview_method.value
        thumb_px, gap_px = _preview_tile_px(n), 8

        def job(progress: Any = None, cancel: Any = None) -> tuple[np.ndarray, Any]:
            return preview_mosaic(
                slide,
                grid,
                n=n,
                method=method,
                thumb_px=thumb_px,
                gap_px=gap_px,
                progress=progress,
                cancel=cancel,
            )

        def on_result(result: tuple[np.ndarray, Any]) -> None:
            mosaic, chosen = result
            if self.preview_window is None:
                self.preview_window = StainPreviewWindow(self.native)
            tile_um = grid.tile_px * grid.mpp
            tiles = f"{len(chosen)} random kept tiles of {tile_um:g} µm ({grid.tile_px} px)"
            self.preview_window.show(mosaic, method, name, tiles, gap_px)
            self.status.value = f"preview ({method}) in its own window"

        job.__name__ = "preview_mosaic"
        return self._start(job, {}, on_result, status="reading and normalising tiles…")


def _preview_tile_px(n: int, gap_px: int = 8, largest: int = 192, smallest: int = 48) -> int:
    """Side of each preview tile so that ``n`` of them in a row fit the screen's width."""
    from qtpy.QtWidgets import QApplication

    screen = QApplication.primaryScreen()
    width = screen.availableGeometry().width() if screen is not None else 1280
    fitting = (width - 200) // max(n, 1) - gap_px  # room for the row labels and the frame
    return int(max(smallest, min(largest, fitting)))
