"""The "Measured spots" section of the Predict dock: measured spots beside the predicted map.

A Visium folder, a HEST-1k ``.h5ad`` or a spot table with its counts is read by the core
(:func:`~napari_deeppt.spatial.compare.read_measured`) and shown as one Points layer
``<slide> measured <GENE>`` in µm over the slide, coloured by the gene's measured
log2(count + 1) with the map's colour map and contrast limits, so measured and predicted
compare by eye; the dock's status gives their Pearson R over the section's spots
(:func:`~napari_deeppt.evaluation.measured_vs_predicted`). Switching the gene recolours and
renames the same layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import FileEdit, PushButton

from ._jobs import Job, report_error
from .layers import LayerData, robust_limits

__all__ = [
    "DEFAULT_SPOT_UM",
    "MeasuredSpots",
    "show_spots",
    "spot_colours",
    "spots_layer_data",
    "spots_layer_of",
    "summary",
]

#: The size of a spot whose diameter the files do not record: a Visium spot's 55 µm.
DEFAULT_SPOT_UM = 55.0

#: What the layer's metadata is keyed by (one measured-spots layer per slide).
KIND = "deeppt_measured_spots"


def spots_layer_data(
    comparison: Any,
    slide_name: str,
    mpp_xy: tuple[float, float],
    diameter_um: float,
    limits: tuple[float, float],
    source: str,
) -> LayerData:
    """Measured spots as a Points layer ``<slide> measured <gene>`` in µm over the slide.

    A spot centred at level-0 ``(x, y)`` (pixel ``i`` covers ``[i, i + 1)``) sits at world
    ``((y - 0.5) · mpp_y, (x - 0.5) · mpp_x)`` µm, as napari centres the slide's pixel ``i`` at
    ``i``. Faces are viridis over ``limits`` (the map's contrast limits) of the measured
    log2(count + 1); hovering a spot shows its id, counts, measured and predicted values.
    """
    mx, my = mpp_xy
    points = np.column_stack([(comparison.y - 0.5) * my, (comparison.x - 0.5) * mx])
    low, high = limits
    gene = comparison.gene
    features = {
        "spot": comparison.spot_ids,
        "gene": [gene] * len(comparison),
        "counts": comparison.counts,
        "measured log2(count+1)": comparison.measured,
        "predicted": comparison.predicted,
    }
    metadata = {
        KIND: "measured",
        "slide_name": slide_name,
        "gene": gene,
        "source": source,
        "n_spots": len(comparison),
        "n_on_tiles": comparison.n,
        "pearson_r": comparison.r,
        "unit": "log2(count+1)",
        "contrast_limits": (float(low), float(high)),
        "what": f"measured {gene} counts at the spots of {source}, coloured by "
        "log2(count+1) with the predicted map's colour map and limits",
    }
    kwargs = {
        "name": f"{slide_name} measured {gene}",
        "size": float(diameter_um),
        "face_color": spot_colours(comparison.measured, limits),
        "border_width": 0.08,  # a thin white ring: spots stand out over the map
        "border_color": "white",
        "features": features,
        "metadata": metadata,
        "axis_labels": ("y", "x"),
        "units": ("micrometer", "micrometer"),
    }
    return (points, kwargs, "points")


def spot_colours(measured: np.ndarray, limits: tuple[float, float]) -> np.ndarray:
    """``(n, 4)`` RGBA: viridis over ``limits``, as napari colours an image with them."""
    from napari.utils.colormaps import ensure_colormap

    low, high = limits
    scaled = np.clip((np.asarray(measured, float) - low) / ((high - low) or 1.0), 0.0, 1.0)
    return ensure_colormap("viridis").map(scaled)


def spots_layer_of(viewer: Any, slide_name: str) -> Any:
    """The slide's measured-spots layer, or None."""
    return next(
        (
            layer
            for layer in viewer.layers
            if layer.metadata.get(KIND) and layer.metadata.get("slide_name") == slide_name
        ),
        None,
    )


def show_spots(viewer: Any, layer_data: LayerData) -> Any:
    """Add the slide's measured-spots layer, or refill, recolour and rename the one it has."""
    data, kwargs, _ = layer_data
    layer = spots_layer_of(viewer, kwargs["metadata"]["slide_name"])
    if layer is None:
        return viewer.add_points(data, **kwargs)
    if len(layer.data) != len(data) or not np.array_equal(layer.data, data):
        layer.data = data
    layer.features = kwargs["features"]
    layer.face_color = kwargs["face_color"]
    layer.size = kwargs["size"]
    layer.metadata.clear()
    layer.metadata.update(kwargs["metadata"])
    layer.name = kwargs["name"]
    return layer


class MeasuredSpots:
    """The dock's "Measured spots" fields and what they do (see the module's docstring)."""

    def __init__(self, dock: Any) -> None:
        self.dock = dock
        self.measured: Any = None  # SpatialData of the slide below
        self.slide_path = ""
        self.mpp_xy: tuple[float, float] = (1.0, 1.0)  # µm per level-0 pixel of that slide
        self._followed: set[int] = set()  # map layers whose contrast limits the spots follow
        self.spots_file = FileEdit(
            label="spots",
            mode="r",
            filter="*.csv *.tsv *.txt *.h5ad *.h5 *.parquet *.json",
            tooltip="measured spots of this slide: a Visium (Space Ranger) outs folder (type "
            "it, or pick its filtered_feature_bc_matrix.h5), a HEST-1k .h5ad, or a spot table "
            "CSV (slide, x, y, spot_id; x, y in level-0 pixels)",
        )
        self.counts_file = FileEdit(
            label="spot counts",
            mode="r",
            filter="*.csv *.tsv *.txt *.h5ad",
            tooltip="only for a spot table CSV: its counts, spots × genes (or genes × "
            "spots); Visium and HEST files hold their own",
        )
        self.show_button = PushButton(text="Show measured spots")
        self.show_button.changed.connect(lambda: self.show())

    def widgets(self) -> list[Any]:
        return [self.spots_file, self.counts_file, self.show_button]

    def show(self) -> Job | None:
        """Read the spots of the dock's slide in a worker, then show them for the dock's gene."""
        from ..spatial.compare import read_measured

        dock = self.dock
        try:
            slide_path, mpp_xy = self._slide()
            source = str(self.spots_file.value or "")
            if source in ("", "."):
                raise ValueError("choose the measured spots (a Visium folder, .h5ad or CSV)")
            counts = str(self.counts_file.value or "") or None
        except Exception as exc:
            report_error(dock.status, exc)
            return None

        def job(progress: Any = None, cancel: Any = None) -> Any:
            return read_measured(source, slide_path, counts)

        def on_result(measured: Any) -> None:
            self.measured, self.slide_path, self.mpp_xy = measured, slide_path, mpp_xy
            self.refresh()

        job.__name__ = "read_measured"
        return dock._start(job, {}, on_result, status=f"reading {Path(source).name}…")

    def _slide(self) -> tuple[str, tuple[float, float]]:
        """The dock's slide (its file and µm per pixel), which must be the one whose map is
        shown."""
        dock = self.dock
        if dock.prediction is None:
            raise ValueError("predict first: the spots are shown beside the predicted map")
        layer = dock.slide_layer.value
        if layer is None or "path" not in layer.metadata:
            raise ValueError("choose the slide layer the spots were measured on")
        path = str(layer.metadata["path"])
        predicted = dock.prediction.grid.slide_path
        if Path(path).resolve() != Path(predicted).resolve():
            raise ValueError(
                f"the map shown is of {Path(predicted).name}, not {layer.name!r}: predict on "
                f"{layer.name!r} first"
            )
        slide = layer.metadata.get("deeppt_slide")
        mpp_xy = getattr(slide, "mpp_xy", None) or (dock.prediction.grid.slide_mpp,) * 2
        return path, (float(mpp_xy[0]), float(mpp_xy[1]))

    def refresh(self) -> Any:
        """Show (or recolour and rename) the spots for the dock's gene; the status gives R."""
        from ..evaluation import measured_vs_predicted

        dock = self.dock
        prediction, gene = dock.prediction, dock.gene.value
        if self.measured is None or prediction is None or not gene:
            return None
        if Path(prediction.grid.slide_path).resolve() != Path(self.slide_path).resolve():
            return None  # the map is of another slide now: its spots are left as they are
        try:
            comparison = measured_vs_predicted(prediction, self.measured, gene)
        except Exception as exc:
            report_error(dock.status, exc)
            return None
        diameter = self.measured.spot_diameter_px
        size = DEFAULT_SPOT_UM if diameter is None else diameter * float(np.mean(self.mpp_xy))
        limits = self._limits(comparison)
        source = self.measured.source
        data = spots_layer_data(comparison, dock._slide_name, self.mpp_xy, size, limits, source)
        layer = show_spots(dock._viewer, data)
        dock.status.value = summary(comparison)
        return layer

    def _limits(self, comparison: Any) -> tuple[float, float]:
        """The contrast limits of the slide's expression map as shown, so colours compare
        (and follow when the user changes them there); robust limits without a map."""
        layer = self._map_layer()
        if layer is None:
            return robust_limits(comparison.predicted)
        inner = getattr(layer, "__wrapped__", layer)  # docks get proxies of layers
        if id(inner) not in self._followed:
            self._followed.add(id(inner))
            inner.events.contrast_limits.connect(lambda _event: self.recolour())
        low, high = layer.contrast_limits
        return float(low), float(high)

    def _map_layer(self) -> Any:
        dock = self.dock
        for layer in dock._viewer.layers:
            meta = layer.metadata
            if (
                meta.get("deeppt_map") == "expression"
                and meta.get("slide_name") == dock._slide_name
            ):
                return layer
        return None

    def recolour(self) -> None:
        """Recolour the shown spots with the map's current contrast limits (when the map
        shows the spots' gene)."""
        spots = spots_layer_of(self.dock._viewer, self.dock._slide_name)
        layer = self._map_layer()
        if spots is None or layer is None or spots.metadata["gene"] != layer.metadata["gene"]:
            return
        limits = tuple(float(v) for v in layer.contrast_limits)
        measured = spots.features["measured log2(count+1)"].to_numpy(float)
        spots.face_color = spot_colours(measured, limits)  # type: ignore[arg-type]
        spots.metadata["contrast_limits"] = limits


def summary(comparison: Any) -> str:
    """``<GENE>: measured vs predicted R = 0.63 over 480 spots of this section`` (+ why not)."""
    gene, n, total = comparison.gene, comparison.n, len(comparison)
    off = f"; {total - n} of its {total} spots lie off the map's tiles" if n < total else ""
    if np.isfinite(comparison.r):
        r = f"R = {comparison.r:.2f} over {n} spots of this section"
        return f"{gene}: measured vs predicted {r}{off}"
    why = (
        f"only {n} spot(s) of this section lie on the map's tiles"
        if n < 2
        else "the measured or the predicted values are the same at every spot"
    )
    return f"{gene}: no measured vs predicted R: {why}{off}"
