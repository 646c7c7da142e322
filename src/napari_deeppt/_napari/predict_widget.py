"""Dock widget "Predict expression": a slide and a model bundle → expression maps and tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from magicgui.widgets import (
    ComboBox,
    FileEdit,
    LineEdit,
    PushButton,
    SpinBox,
    Table,
)

from ..devices import Device
from ..features.params import FeatureParams, ModelPrecision
from ._jobs import Job, JobWidget, StatusLine
from .console import slide_of
from .fields import choice_widget, slide_picker
from .layers import robust_limits, show_expression, show_map, signature_layer_data
from .spots_section import MeasuredSpots

__all__ = ["PredictWidget"]

#: The precision choice that means the bundle's own (float32 unless trained on bfloat16 or
#: int8 features).
MODELS_PRECISION = "the model's"


_EXPORT_SUFFIXES = {"csv": ".expression.csv", "h5ad": ".tiles.h5ad", "geojson": ".tiles.geojson"}
_EXPORT_TITLES = {
    "csv": "slide-level expression",
    "h5ad": "tile-level expression",
    "geojson": "tiles for QuPath",
}
_EXPORT_FILTERS = {
    "csv": "CSV table (*.csv)",
    "h5ad": "AnnData (*.h5ad)",
    "geojson": "GeoJSON for QuPath (*.geojson *.json)",
}

#: The tiles choice that cuts the model's own tiles inside the tissue (the default).
MODEL_TILES = "the model's own tiles (cut now)"


class PredictWidget(JobWidget):
    """Predict with a ``.deeppt`` bundle; pick a gene (type to search) to show its map."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer, "Predict expression")
        self.prediction: Any = None
        self._slide_name = ""
        self.slide_layer = slide_picker()
        self.roi_layer = self._regions_picker()
        self._model_fields()
        self.device = choice_widget(FeatureParams, "device", "device", Device)
        self.precision = ComboBox(
            label="precision",
            choices=[MODELS_PRECISION, *(str(p) for p in ModelPrecision)],
            value=MODELS_PRECISION,
            tooltip="the model's arithmetic for the features: the one it was trained with, "
            "bfloat16 (CPUs with AVX-512 BF16 or AMX: about twice as fast, within bfloat16 "
            "rounding) or int8 on the CPU (ResNets; about twice as fast, within quantization "
            "error)",
        )
        # choices come from a callable: napari calls reset_choices() on docked widgets
        # whenever layers change, which must not forget the predicted genes
        self.gene = ComboBox(
            label="gene",
            choices=self._gene_choices,
            nullable=True,
            tooltip="the gene whose tile map is shown (type to search); switching is instant",
        )
        self.signature_genes = LineEdit(
            label="signature",
            tooltip="genes separated by commas or spaces; their mean is mapped per tile",
        )
        self.signature_button = PushButton(text="Show signature map", enabled=False)
        self.top_n = SpinBox(
            label="top genes",
            value=20,
            min=1,
            max=500,
            tooltip="how many of the slide's most expressed genes the table (and the GeoJSON "
            "export) lists",
        )
        self.table = Table(label="slide-level", value={"gene": [], "expression": []})
        self.export_csv_button = PushButton(text="Export slide CSV…", enabled=False)
        self.export_h5ad_button = PushButton(text="Export tiles h5ad…", enabled=False)
        self.export_geojson_button = PushButton(
            text="Export tiles for QuPath (GeoJSON)…", enabled=False
        )
        self.extend(
            [
                self.slide_layer,
                self.roi_layer,
                self.bundle,
                self.model_tiles,
                self.tiles_layer,
                self.weights,
                self.device,
                self.precision,
                *self._controls(),
                self.gene,
                self.signature_genes,
                self.signature_button,
                self.top_n,
                self.table,
                self.export_csv_button,
                self.export_h5ad_button,
                self.export_geojson_button,
            ]
        )
        self._make_gene_box_searchable()
        self.spots = MeasuredSpots(self)  # measured spots beside the map, with their R
        self._fold("Measured spots", self.spots.widgets(), before=self.top_n)
        rows = self.table.native.verticalHeader().defaultSectionSize()
        self.table.native.setMinimumHeight(9 * rows)  # the dock scrolls, the table stays readable
        self.bundle.changed.connect(self._describe_bundle)
        self.gene.changed.connect(self.show_gene)
        self.signature_button.changed.connect(lambda: self.show_signature())
        self.top_n.changed.connect(self._fill_table)
        self.export_csv_button.changed.connect(lambda: self._export("csv"))
        self.export_h5ad_button.changed.connect(lambda: self._export("h5ad"))
        self.export_geojson_button.changed.connect(lambda: self._export("geojson"))

    def _model_fields(self) -> None:
        """The bundle, what it was trained on, the tiles to predict on and the weights."""
        self.bundle = FileEdit(
            label="model bundle",
            mode="r",
            filter="*.deeppt",
            tooltip="a .deeppt file written by 'deeppt train' (or 'deeppt demo'): the trained "
            "model with its genes, tile size and feature extractor",
        )
        self.model_tiles = StatusLine(label="model", value="choose a bundle")
        self.tiles_layer = ComboBox(
            label="tiles",
            choices=self._tile_choices,
            tooltip="where the map's values come from: the model's own tiles, cut now inside "
            "the tissue at the model's tile size, or tiles cut in 'Tissue & tiles' (only "
            "tiles of the model's size and resolution are accepted)",
        )
        self.weights = FileEdit(
            label="extractor weights",
            mode="r",
            filter="*.pth *.pt *.safetensors",
            tooltip="the feature extractor's weights file, when torchvision's cache does not "
            "hold it; it must be the file the model was trained with (checked by hash)",
        )

    def _tile_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        """The model's own tiles first, then the tiles layers made by 'Tissue & tiles'."""
        layers = [layer for layer in self._viewer.layers if "deeppt_grid" in layer.metadata]
        return [(MODEL_TILES, None), *((layer.name, layer) for layer in layers)]

    def _describe_bundle(self, *_: Any) -> None:
        """Say which tiles the chosen bundle was trained on (or why it is not a bundle)."""
        from ..model.bundle import ModelBundle
        from ..prediction import tiles_described

        path = Path(str(self.bundle.value or ""))
        if not path.is_file():
            self.model_tiles.value = "choose a bundle"
            return
        try:
            feature = ModelBundle.load(path).feature
        except Exception as exc:
            self.model_tiles.value = f"error: {exc}"
            return
        tiles = tiles_described(float(feature["tile_px"]), float(feature["tile_mpp"]))
        self.model_tiles.value = f"trained on {tiles}, {feature['extractor']} features"

    def _chosen_grid(self, bundle: Any, slide: Any) -> Any:
        """The picked tiles layer's grid after checking it fits the model and the slide, or
        None for the model's own tiles."""
        from ..prediction import grid_misfit

        layer = self.tiles_layer.value
        if layer is None:
            return None
        grid = layer.metadata["deeppt_grid"]
        if Path(grid.slide_path).resolve() != Path(slide.path).resolve():
            raise ValueError(f"{layer.name!r} was cut from another slide ({grid.slide_path})")
        misfit = grid_misfit(grid, bundle)
        if misfit is not None:
            raise ValueError(
                f"{layer.name!r}: {misfit}. Choose {MODEL_TILES!r}, or cut tiles of the "
                "model's size in 'Tissue & tiles'"
            )
        return grid

    def _gene_choices(self, _widget: Any = None) -> list[str]:
        prediction = getattr(self, "prediction", None)
        return [] if prediction is None else list(prediction.genes)

    def _make_gene_box_searchable(self) -> None:
        from qtpy.QtCore import Qt
        from qtpy.QtWidgets import QCompleter

        box = self.gene.native
        box.setEditable(True)
        box.setInsertPolicy(box.InsertPolicy.NoInsert)
        completer = QCompleter(box.model(), box)
        completer.setFilterMode(Qt.MatchFlag.MatchContains)
        completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        box.setCompleter(completer)

    # -- running ------------------------------------------------------------------------------
    def _busy(self, busy: bool) -> None:
        super()._busy(busy)
        done = not busy and self.prediction is not None
        self.spots.show_button.enabled = not busy
        self.export_csv_button.enabled = done
        self.export_h5ad_button.enabled = done
        self.export_geojson_button.enabled = done
        self.signature_button.enabled = done

    def run(self) -> Job | None:
        """Predict in a thread worker; then fill the gene picker, the table and the layer."""
        from ..prediction import predict
        from . import guard_against_triton_llvm_clash

        guard_against_triton_llvm_clash()
        try:
            layer = self.slide_layer.value
            if layer is None:
                raise ValueError("choose a slide layer first")
            bundle_path = Path(str(self.bundle.value or ""))
            if not bundle_path.is_file():
                raise ValueError("choose a model bundle (.deeppt) first")
            from ..model.bundle import ModelBundle

            bundle = ModelBundle.load(bundle_path)
            slide = slide_of(layer)
            weights = self._chosen_file(self.weights)
            regions = self._chosen_regions(self.roi_layer, layer)
            grid = self._chosen_grid(bundle, slide)
            if grid is not None and regions is not None:
                raise ValueError(
                    "regions apply when the model's own tiles are cut: choose "
                    f"{MODEL_TILES!r}, or cut the tiles inside the regions in 'Tissue & tiles'"
                )
        except Exception as exc:
            self._on_error(exc)
            return None
        self._slide_name = layer.name

        def on_result(prediction: Any) -> None:
            prediction.bundle_path = str(bundle_path)
            self.prediction = prediction
            self.gene.changed.disconnect(self.show_gene)
            self.gene.reset_choices()
            self.gene.changed.connect(self.show_gene)
            top = prediction.top_genes(1).index[0]
            self.gene.value = top
            self.show_gene(top)
            self._fill_table()
            self.status.value = self._summary(prediction, grid, regions)

        return self._start(
            predict,
            {
                "slide": slide,
                "bundle": bundle,
                "roi": regions,
                "grid": grid,
                "weights": weights,
                "device": self.device.value,
                "precision": None
                if self.precision.value == MODELS_PRECISION
                else self.precision.value,
                "compile": "cached",  # never compiled in napari: see features_widget
            },
            on_result,
        )

    def _summary(self, prediction: Any, grid: Any, regions: Any) -> str:
        """What was predicted from which tiles; names other tiles of the slide it did not use."""
        from ..prediction import tiles_described

        used = prediction.grid
        tiles = tiles_described(float(used.tile_px), float(used.mpp))
        source = "the model's own" if grid is None else f"from {self.tiles_layer.value.name!r}"
        inside = " inside the regions" if regions is not None else ""
        others = [
            layer
            for name, layer in self._tile_choices()[1:]
            if layer.metadata["deeppt_grid"].slide_path == used.slide_path
            and (layer.metadata["deeppt_grid"].tile_px, layer.metadata["deeppt_grid"].mpp)
            != (used.tile_px, used.mpp)
        ]
        note = "".join(f"; not the tiles of {layer.name!r}, another size" for layer in others[:1])
        demo = " — DEMO MODEL (synthetic data)" if prediction.demo else ""
        return (
            f"{len(prediction.genes)} genes from {len(used)} {tiles}{inside}, {source}{note}{demo}"
        )

    # -- showing ------------------------------------------------------------------------------
    def show_gene(self, gene: str | None = None) -> Any:
        """Switch the expression layer to ``gene`` (no recomputation)."""
        gene = gene or self.gene.value
        if self.prediction is None or not gene or gene not in self.prediction.genes:
            return None
        layer = show_expression(self._viewer, self.prediction, gene, self._slide_name)
        low, high = robust_limits(layer.data)
        unit = layer.metadata["unit"]
        self.status.value = (
            f"{gene}: {self.prediction.slide_expression[gene]:.3f} {unit} "
            f"(slide mean), tiles {low:.2f}–{high:.2f}"
        )
        self.spots.refresh()  # the measured spots follow the gene (the status then gives R)
        return layer

    def show_signature(self, genes: list[str] | str | None = None) -> Any:
        """Add (or update) ``<slide> signature``: the mean of several genes per tile."""
        if self.prediction is None:
            self.status.value = "predict first"
            return None
        text = self.signature_genes.value if genes is None else genes
        if isinstance(text, str):
            genes = [g for g in text.replace(",", " ").split() if g]
        try:
            data = signature_layer_data(self.prediction, list(genes or []), self._slide_name)
        except Exception as exc:
            self._on_error(exc)
            return None
        layer = show_map(self._viewer, data)
        slide_value = data[1]["metadata"]["slide_value"]
        self.status.value = (
            f"signature of {len(data[1]['metadata']['genes'])} genes: {slide_value:.3f} "
            f"(slide, {data[1]['metadata']['unit']})"
        )
        return layer

    def _fill_table(self) -> None:
        if self.prediction is None:
            return
        top = self.prediction.top_genes(self.top_n.value)
        self.table.value = {
            "gene": list(top.index),
            "expression": [round(float(v), 4) for v in top.values],
        }

    def export(self, kind: str, path: str | Path, overwrite: bool = False) -> Path:
        """Write the slide-level CSV (``"csv"``), the tile-level h5ad (``"h5ad"``) or the
        tiles as QuPath GeoJSON (``"geojson"``) with the top genes and the shown one."""
        if self.prediction is None:
            raise ValueError("nothing to export: run a prediction first")
        writers = {
            "csv": self.prediction.to_csv,
            "h5ad": self.prediction.to_h5ad,
            "geojson": self._export_geojson,
        }
        if kind not in writers:
            raise ValueError(f"unknown export {kind!r}; use one of {sorted(writers)}")
        return writers[kind](path, overwrite=overwrite)

    def _export_geojson(self, path: str | Path, overwrite: bool = False) -> Path:
        """The table's top genes and the shown gene (tiles × all genes can be gigabytes)."""
        genes = list(self.prediction.top_genes(self.top_n.value).index)
        if self.gene.value and self.gene.value not in genes:
            genes.append(self.gene.value)
        return self.prediction.to_geojson(path, genes=genes, overwrite=overwrite)

    def _export(self, kind: str) -> None:
        from qtpy.QtWidgets import QFileDialog

        # beside the slide, named after it; the save dialog itself asks before replacing a file
        folder = Path(self.prediction.grid.slide_path).parent
        suffix = _EXPORT_SUFFIXES[kind]
        path, _ = QFileDialog.getSaveFileName(
            self.native,
            f"Export {_EXPORT_TITLES[kind]}",
            str(folder / (self._slide_name + suffix)),
            _EXPORT_FILTERS[kind],
        )
        if not path:
            return

        def job(progress: Any = None, cancel: Any = None) -> Path:
            return self.export(kind, path, overwrite=True)

        def on_result(written: Path) -> None:
            self.status.value = f"wrote {written}"

        job.__name__ = f"export_{kind}"
        self._start(job, {}, on_result, status=f"writing {Path(path).name}…")
