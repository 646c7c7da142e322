"""Training inputs, checked before any pixel is read: tables, slides, folds, expression.

:func:`read_inputs` makes :class:`TrainingInputs` for either kind of sample — a bulk slide
(a manifest row: ``slide, sample_id, patient_id``) or a spot (a spot-table row: ``slide, x,
y``) — so that :func:`~.training.train` runs one pipeline for both. Everything that can be
refused without pixels is refused here, cheapest first.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExpressionTableError, SlideNotFoundError
from ..io.tables import (
    check_spot_table,
    describe_source,
    few,
    read_expression,
    read_manifest,
    read_spots,
)
from .folds import fit_folds
from .settings import TrainingSettings

__all__ = [
    "TRANSFORMS",
    "TrainingInputs",
    "apply_transform",
    "is_spot_table",
    "open_spot_slides",
    "read_inputs",
    "select_genes",
]

TRANSFORMS = ("log2p1", "none")


@dataclass
class TrainingInputs:
    """Checked training inputs: nothing here has needed a pixel of any slide.

    Attributes
    ----------
    spots
        True for a spot table (one tile per spot), False for bulk slides.
    table
        The manifest or spot table.
    ids
        Sample or spot ids, in table order.
    genes
        The selected genes.
    targets
        torch float32 tensor, ids × genes, transformed.
    groups
        Patient id of each sample, or section label of each spot: folds hold out whole groups.
    slides
        Spots only: section label → the opened :class:`~napari_deeppt.slide.Slide`.
    settings, folds_note
        The training settings with folds that fit the groups (:func:`~.folds.fit_folds`),
        and what was changed to make them fit (None when nothing was).
    """

    spots: bool
    table: Any
    ids: list[str]
    genes: list[str]
    targets: Any
    groups: np.ndarray
    slides: dict[str, Any] = field(default_factory=dict)
    settings: TrainingSettings | None = None
    folds_note: str | None = None

    def precomputed(self) -> int:
        """How many samples come with features made before (a manifest ``features`` column)."""
        if self.spots or "features" not in self.table.columns:
            return 0
        return int(sum(store is not None for store in self.table["features"]))

    def describe(self, roi_class: str | None = None) -> dict[str, Any]:
        """What the bundle's training metadata records about these samples."""
        if self.spots:
            return {"mode": "spots", "n_slides": len(self.slides)}
        with_roi = sum(r is not None for r in self.table["roi"]) if "roi" in self.table else 0
        return {
            "n_patients": len(set(self.groups)),
            "regions_of_interest": {"slides_with_roi": with_roi, "roi_class": roi_class},
        }


def is_spot_table(table: Any) -> bool:
    """Whether a table (a path or a DataFrame) is a spot table: ``x, y``, no ``patient_id``.

    Parameters
    ----------
    table
        A DataFrame, or a delimited file whose header is read (a file that cannot be read
        is no spot table).

    Returns
    -------
    bool
    """
    import pandas as pd

    if isinstance(table, pd.DataFrame):
        columns = set(table.columns)
    else:
        try:
            columns = set(pd.read_csv(table, sep=None, engine="python", nrows=1).columns)
        except Exception:
            return False
    return {"x", "y"} <= columns and "patient_id" not in columns


def read_inputs(
    manifest: Any,
    expression: Any,
    options: TrainingSettings,
    spots: bool,
    selection: dict[str, Any],
    transform: str,
    asked: Any = (),
) -> TrainingInputs:
    """Every check that needs no pixels, cheapest first: table, slides, folds, expression.

    Parameters
    ----------
    manifest
        Manifest or spot table: a path, or a DataFrame of it.
    expression
        Expression: a path, DataFrame or AnnData (see
        :func:`~napari_deeppt.io.tables.read_expression`).
    options
        The fold counts the groups must fill (:func:`~.folds.fit_folds`).
    spots
        Whether ``manifest`` is a spot table (:func:`is_spot_table`).
    selection
        :func:`select_genes` keywords.
    transform
        One of :data:`TRANSFORMS`.
    asked
        The names of the settings the user gave: fold counts given are kept (or refused),
        default ones shrink to fit few groups.

    Returns
    -------
    TrainingInputs
    """
    import pandas as pd
    import torch

    given = isinstance(manifest, pd.DataFrame)
    if spots:
        source = "the spot table" if given else manifest
        table = check_spot_table(manifest, source) if given else read_spots(manifest)
        groups, slides = open_spot_slides(table, source)
        ids, ids_name = list(table["spot_id"]), "spot"
    else:
        source = "the manifest" if given else manifest
        table = manifest if given else read_manifest(manifest)
        _require_slide_files(table, source)
        groups, slides = table["patient_id"].to_numpy(), {}
        ids, ids_name = list(table["sample_id"]), "manifest sample"
    noun = "sections" if spots else "patients"
    explicit = bool({"outer_folds", "inner_folds"} & set(asked))
    settings, note = fit_folds(len(set(groups)), options, explicit, noun, source)
    if note:
        warnings.warn(note, stacklevel=3)
    expr = read_expression(expression, ids, ids_name)
    chosen = select_genes(expr, **selection)
    values = apply_transform(expr[chosen].to_numpy(), transform, describe_source(expression))
    targets = torch.tensor(values, dtype=torch.float32)
    return TrainingInputs(spots, table, ids, chosen, targets, groups, slides, settings, note)


def select_genes(
    expression: Any,
    genes: list[str] | None = None,
    min_mean: float | None = None,
    top_n: int | None = None,
    rank_by: str = "variance",
) -> list[str]:
    """Genes to model: an explicit list, or filtered by mean and ranked by variance/mean.

    Parameters
    ----------
    expression
        samples × genes DataFrame.
    genes
        An explicit list (each must be in the table; repeats are dropped).
    min_mean
        Keep genes whose mean is at least this.
    top_n, rank_by
        Then keep the ``top_n`` genes by ``"variance"`` or ``"mean"``.

    Returns
    -------
    list of str

    Raises
    ------
    ExpressionTableError
        An unknown gene, or no gene left.
    """
    if genes is not None:
        genes = [genes] if isinstance(genes, str) else [str(g) for g in genes]  # "G0": one
        if not genes:
            raise ExpressionTableError("genes=[] names no gene; give at least one (or None)")
        unknown = [g for g in genes if g not in expression.columns]
        if unknown:
            raise ExpressionTableError(f"gene(s) not in the expression table: {unknown[:8]}")
        return list(dict.fromkeys(genes))
    table = expression
    if min_mean is not None:
        table = table.loc[:, table.mean() >= min_mean]
    if top_n is not None:
        if isinstance(top_n, bool) or not isinstance(top_n, Integral) or top_n < 1:
            raise ExpressionTableError(f"top_n must be a whole number ≥ 1, got {top_n!r}")
        if rank_by not in ("variance", "mean"):
            raise ValueError("rank_by must be 'variance' or 'mean'")
        score = table.var() if rank_by == "variance" else table.mean()
        table = table[score.sort_values(ascending=False).index[:top_n]]
    if table.shape[1] == 0:
        raise ExpressionTableError("no gene passes the selection (min_mean/top_n)")
    return list(table.columns)


def apply_transform(values: np.ndarray, transform: str, where: str = "the expression") -> Any:
    """Expression on the scale the model learns: ``"log2p1"`` (log2(x + 1)) or ``"none"``.

    Parameters
    ----------
    values
        Expression values.
    transform
        One of :data:`TRANSFORMS`.
    where
        What the values are, for messages.

    Returns
    -------
    numpy.ndarray

    Raises
    ------
    ExpressionTableError
        Negative values under ``"log2p1"``.
    """
    if transform == "log2p1":
        if (values < 0).any():
            raise ExpressionTableError(
                f"{where} has negative values; log2(x + 1) needs counts "
                "or TPM ≥ 0 (pass transform='none' for values already "
                "on a log scale)"
            )
        return np.log2(values + 1.0)
    if transform == "none":
        return values
    raise ValueError(f"unknown transform {transform!r}; use one of {TRANSFORMS}")


def _require_slide_files(table: Any, source: Any) -> None:
    """Every manifest slide exists (or its ``features`` store does), and no slide or store
    is listed for two samples."""
    if "features" in table.columns:
        _require_feature_stores(table, source)
        stores = list(table["features"])
    else:
        stores = [None] * len(table)
    missing = [
        p for p, f in zip(table["slide"], stores, strict=True) if f is None and not Path(p).exists()
    ]
    if missing:
        raise SlideNotFoundError(
            f"{source}: {len(missing)} slide(s) not found: {few(missing)}; fix the paths "
            "(relative ones are read from the manifest's folder)"
        )
    owners: dict[Path, str] = {}
    for slide, store, sample in zip(table["slide"], stores, table["sample_id"], strict=True):
        first = owners.setdefault(Path(store or slide).resolve(), sample)
        if first != sample:
            raise ExpressionTableError(
                f"{source}: slide {slide} is listed for samples {first} and {sample}; one "
                "image would be trained on twice and could sit in a training and a test fold "
                "at once. List each slide once."
            )


def _require_feature_stores(table: Any, source: Any) -> None:
    """``features`` cells: empty (extract from the slide) or an existing store; with a roi,
    refused (a store holds the whole tissue)."""
    table["features"] = [
        None if not isinstance(p, str) or not p.strip() else p for p in table["features"]
    ]
    missing = [p for p in table["features"] if p is not None and not Path(p).is_dir()]
    if missing:
        raise SlideNotFoundError(
            f"{source}: {len(missing)} feature store(s) not found: {few(missing)}; the "
            "features column names zarr folders written by `deeppt features --formats zarr`"
        )
    if "roi" in table.columns:
        both = [
            s
            for s, f, r in zip(table["sample_id"], table["features"], table["roi"], strict=True)
            if f and r
        ]
        if both:
            raise ExpressionTableError(
                f"{source}: sample(s) {few(both)} name both a features store and a roi; a "
                "store holds the whole tissue's tiles — leave features empty to extract "
                "inside the roi"
            )


def _section_labels(keys: list[str]) -> dict[str, str]:
    """A readable label per slide (its file stem, or its path where stems repeat)."""
    stems = [Path(k).stem for k in keys]
    unique = len(set(stems)) == len(stems)
    return {k: (stem if unique else k) for k, stem in zip(keys, stems, strict=True)}


def open_spot_slides(table: Any, source: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """Open each slide of a spot table once; refuse slides without a pixel size and spots
    whose centre is off their slide, before any feature work.

    Returns each row's section label and the opened slides by label. A section is a slide
    file (its real path: one slide named two ways is one section), labelled by its stem.

    Parameters
    ----------
    table
        The spot table: ``spot_id``, ``slide`` (a path) and ``x, y`` (level-0 pixels).
    source
        What the table came from, for messages.

    Returns
    -------
    tuple of numpy.ndarray and dict
        Each row's section label (its slide's stem; every slide's real path instead when
        two slides share a stem) and the opened :class:`~napari_deeppt.slide.Slide` of each
        label.

    Raises
    ------
    MissingMppError
        A slide has no pixel size.
    ExpressionTableError
        Spots' centres lie outside their slide (naming a few of each slide).
    SlideNotFoundError, SlideFormatError
        A slide cannot be opened.
    """
    from ..slide import open_slide

    slides: dict[str, Any] = {}
    off: list[tuple[str, Any, list[str]]] = []
    keys = table["slide"].map(os.path.realpath).to_numpy()
    for key in dict.fromkeys(keys):
        rows = table[keys == key]
        slide = slides[key] = open_slide(rows["slide"].iloc[0])
        slide.require_mpp("spot tiles")
        w, h = slide.dimensions
        x, y = rows["x"].to_numpy(float), rows["y"].to_numpy(float)
        outside = ~((x >= 0) & (x < w) & (y >= 0) & (y < h))
        if outside.any():
            off.append((rows["slide"].iloc[0], (w, h), list(rows["spot_id"][outside])))
    if off:
        count = sum(len(ids) for _, _, ids in off)
        where = "; ".join(f"{few(ids)} on {path} ({w}×{h} px)" for path, (w, h), ids in off)
        raise ExpressionTableError(
            f"{source}: {count} spot(s) have their centre outside their slide: {where}; x, y "
            "must be level-0 pixels of the slide named on the row (check the coordinates' "
            "scale and which slide they belong to)"
        )
    labels = _section_labels(list(slides))
    sections = np.array([labels[k] for k in keys], dtype=object)
    return sections, {labels[k]: slide for k, slide in slides.items()}
