"""A trained model on new data: predictions at given spots, and held-out accuracy.

:func:`predict_spots` predicts each spot of a spot table from one tile centred on it (as
spot training does); :func:`evaluate` compares a model's predictions with measured
expression on data it was not trained on — per section for spots (within-section R,
averaged), pooled over slides for bulk — with DeepPT's per-gene Pearson R, p values and
Holm–Šidák significance; :func:`measured_vs_predicted` reads a slide's predicted tile map
at its measured spots (what napari's "Measured spots" shows).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import BundleMismatchError, ExpressionTableError
from .progress import CancelLike, ProgressLike, check_cancelled, make_progress

__all__ = ["evaluate", "measured_vs_predicted", "predict_spots"]


def _spot_table(spots: Any) -> tuple[Any, Any]:
    """The checked spot table and its name for messages."""
    import pandas as pd

    from .io.tables import check_spot_table, read_spots

    if isinstance(spots, pd.DataFrame):
        return check_spot_table(spots, "the spot table"), "the spot table"
    return read_spots(spots), spots


def predict_spots(
    spots: Any,
    bundle: Any,
    *,
    weights: Any = None,
    device: Any = "auto",
    cache_dir: str | Path | None = None,
    progress: ProgressLike = True,
    cancel: CancelLike = None,
) -> Any:
    """Predict the expression at each spot from one tile centred on it.

    Parameters
    ----------
    spots
        A spot table (path or DataFrame): ``slide``, ``x``, ``y`` (spot centre in level-0
        pixels of that slide), ``spot_id`` (made from the slide's stem when absent).
    bundle
        A ``.deeppt`` file or a :class:`~napari_deeppt.model.bundle.ModelBundle`; each spot's
        tile has the bundle's tile size and resolution, features its extractor and stain.
    weights, device, cache_dir, progress, cancel
        As for :func:`~napari_deeppt.prediction.predict`.

    Returns
    -------
    pandas.DataFrame
        Index ``spot_id`` (table order), one column per gene, on the bundle's scale
        (``attrs["transform"]``, e.g. ``"log2p1"``).

    Raises
    ------
    DeepPTError
        Before any feature work: an unreadable table, a slide without a pixel size, a spot
        centred off its slide, a weights file that is not the bundle's.
    """
    import pandas as pd

    from .model.inputs import open_spot_slides
    from .model.sample_features import spot_grid
    from .prediction import _load_bundle, predict

    table, source = _spot_table(spots)
    model, _ = _load_bundle(bundle)
    sections, slides = open_spot_slides(table, source)
    values = np.full((len(table), model.n_genes), np.nan, np.float32)
    x, y = table["x"].to_numpy(float), table["y"].to_numpy(float)
    tile_px, tile_mpp = int(model.feature["tile_px"]), float(model.feature["tile_mpp"])
    options = {"weights": weights, "device": device, "cache_dir": cache_dir, "cancel": cancel}
    with make_progress(progress, len(slides), "spot predictions per slide", unit="slide") as bar:
        for label, slide in slides.items():
            check_cancelled(cancel, "spot prediction")
            rows = np.flatnonzero(sections == label)
            grid = spot_grid(slide, x[rows], y[rows], tile_px, tile_mpp)
            values[rows] = predict(
                slide, model, grid=grid, progress=False, **options
            ).tile_expression
            bar.update()
    frame = pd.DataFrame(
        values, index=pd.Index(table["spot_id"].astype(str), name="spot_id"), columns=model.genes
    )
    frame.attrs.update(transform=model.transform, sections=dict(zip(frame.index, sections)))
    return frame


def evaluate(
    samples: Any,
    expression: Any,
    bundle: Any,
    *,
    alpha: float = 0.05,
    progress: ProgressLike = True,
    cancel: CancelLike = None,
    **feature_options: Any,
) -> Any:
    """Per-gene accuracy of a model on held-out data: Pearson R, p and Holm–Šidák.

    Parameters
    ----------
    samples
        A spot table (``slide, x, y, spot_id``: spots of held-out sections) or a manifest
        (``slide, sample_id``: held-out slides), as a path or a DataFrame.
    expression
        Their measured expression (counts for spots): a path, a DataFrame or an AnnData, in
        either orientation; it is put on the bundle's scale (e.g. log2(x+1)) before R.
    bundle
        A ``.deeppt`` file or a :class:`~napari_deeppt.model.bundle.ModelBundle`.
    alpha
        Significance level after Holm–Šidák correction.
    progress, cancel, **feature_options
        As for :func:`~napari_deeppt.prediction.predict` (``weights``, ``device``,
        ``cache_dir``; for a manifest with a ``roi`` column, ``roi_class``: each slide is
        predicted inside its regions, as training used them).

    Returns
    -------
    pandas.DataFrame
        One row per gene of the model: ``pearson_r``, ``p_value``, ``p_holm_sidak``,
        ``significant``; for spots R is computed within each section and averaged
        (``r_scope`` ``"within-section mean"``, ``n_sections``; ``attrs["per_section"]``
        genes × sections), for slides pooled over them (``r_scope`` ``"pooled"``).

    Raises
    ------
    DeepPTError
        Before any feature work, for tables that cannot give a right answer (samples
        without expression, genes of the model absent from the expression, …).
    """
    from .io.tables import describe_source
    from .model.inputs import apply_transform, is_spot_table
    from .model.metrics import gene_metrics, section_metrics
    from .prediction import _load_bundle

    model, _ = _load_bundle(bundle)
    spots = is_spot_table(samples)
    ids, _ = _evaluation_ids(samples, spots)
    truth = _measured(expression, ids, model.genes, "spot" if spots else "manifest sample")
    measured = apply_transform(truth.to_numpy(), model.transform, describe_source(expression))
    options = {"progress": progress, "cancel": cancel, **feature_options}
    if spots:
        predicted = predict_spots(samples, model, **options)
        sections = np.array([predicted.attrs["sections"][i] for i in predicted.index])
        metrics, per_section = section_metrics(
            predicted.to_numpy(np.float64), measured, model.genes, sections, alpha
        )
        metrics.attrs["per_section"] = per_section
        return metrics
    predicted = _predict_slides(samples, model, options)
    metrics = gene_metrics(predicted, measured, model.genes, alpha)
    metrics["r_scope"] = "pooled"
    return metrics


def _evaluation_ids(samples: Any, spots: bool) -> tuple[list[str], str]:
    """The ids whose expression is needed, and what the samples are called in messages."""
    import pandas as pd

    from .io.tables import read_manifest

    if spots:
        table, source = _spot_table(samples)
        return list(table["spot_id"].astype(str)), str(source)
    table = samples if isinstance(samples, pd.DataFrame) else read_manifest(samples, False)
    return list(table["sample_id"].astype(str)), "the manifest"


def _measured(expression: Any, ids: list[str], genes: list[str], ids_name: str) -> Any:
    """The measured expression of ``ids`` for the model's genes, refusing absent genes."""
    from .io.tables import describe_source, few, read_expression

    table = read_expression(expression, ids, ids_name)
    absent = [gene for gene in genes if gene not in table.columns]
    if absent:
        raise BundleMismatchError(
            f"{describe_source(expression)}: {len(absent)} gene(s) the model predicts are not "
            f"measured: {few(absent, 8)}; evaluate on data that measured them"
        )
    return table[genes]


def _predict_slides(samples: Any, model: Any, options: dict[str, Any]) -> np.ndarray:
    """Slide-level predictions of each manifest row, in order."""
    import pandas as pd

    from .io.tables import read_manifest
    from .prediction import predict

    table = samples if isinstance(samples, pd.DataFrame) else read_manifest(samples, False)
    options = dict(options)
    progress, roi_class = options.pop("progress"), options.pop("roi_class", None)
    rois = table["roi"] if "roi" in table.columns else [None] * len(table)
    rows = []
    with make_progress(progress, len(table), "predictions per slide", unit="slide") as bar:
        for slide, roi in zip(table["slide"], rois, strict=True):
            roi = roi if isinstance(roi, str) and roi.strip() else None  # empty: whole tissue
            regions = {"roi": roi, "roi_class": roi_class if roi else None}
            rows.append(
                predict(slide, model, progress=False, **regions, **options).slide_expression
            )
            bar.update()
    return np.stack([row.to_numpy(np.float64) for row in rows])


def measured_vs_predicted(prediction: Any, measured: Any, gene: str) -> Any:
    """A gene's measured counts at the spots of a slide against its predicted tile map.

    Parameters
    ----------
    prediction
        A :class:`~napari_deeppt.prediction.Prediction` of the slide.
    measured
        :class:`~napari_deeppt.spatial.SpatialData` (e.g. from
        :func:`~napari_deeppt.spatial.compare.read_measured`); only its spots on the
        prediction's slide are compared.
    gene
        A gene both predicted and measured.

    Returns
    -------
    SpotComparison
        Per spot the value of the kept tile whose square contains its centre (NaN where no
        kept tile does), the measured log2(count + 1), and Pearson R over the covered spots
        (see :func:`~napari_deeppt.spatial.compare.compare_at_spots`).

    Raises
    ------
    BundleMismatchError
        The gene is not predicted.
    ExpressionTableError
        No spot of ``measured`` is on the prediction's slide, or the gene is not measured
        (the message names the predicted genes that are).
    """
    from .spatial.compare import compare_at_spots

    column = prediction.gene_index(gene)
    grid = prediction.grid
    if not grid.slide_path:
        raise ExpressionTableError("the prediction does not record its slide; predict again")
    slide = Path(grid.slide_path).resolve()
    spots = measured.spots
    rows = np.flatnonzero([Path(str(s)).resolve() == slide for s in spots["slide"]])
    if len(rows) == 0:
        raise ExpressionTableError(
            f"{measured.source}: no spot is on {slide.name}, the predicted slide (its spots "
            f"are on {sorted({Path(str(s)).name for s in spots['slide']})[:3]}); compare a "
            "slide's own spots with its prediction"
        )
    if gene not in measured.counts.columns:
        both = [g for g in prediction.genes if g in measured.counts.columns]
        hint = f"of the predicted genes it measures {both[:8]}" if both else "none is predicted"
        raise ExpressionTableError(
            f"{measured.source}: gene {gene!r} is not measured ({measured.counts.shape[1]} "
            f"genes; {hint}); pick a gene both measured and predicted"
        )
    return compare_at_spots(
        grid.xy,
        grid.size_level0,
        prediction.tile_expression[:, column],
        spots["x"].to_numpy(float)[rows],
        spots["y"].to_numpy(float)[rows],
        measured.counts[gene].to_numpy()[rows],
        gene,
        list(spots["spot_id"].astype(str).iloc[rows]),
    )
