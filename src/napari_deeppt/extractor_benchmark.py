"""Which feature extractor predicts expression best on a lab's own spatial data.

:func:`benchmark_extractors` runs HEST-Benchmark's protocol (Jaume et al., NeurIPS 2024) on
the user's spots: one tile centred on each spot (224 px at 0.5 µm/px by default), each
extractor's features, the most variable genes (log1p of the counts), and a PCA-256 + ridge
probe (:mod:`napari_deeppt.model.baseline`) trained on some sections (or patients) and
scored by per-gene Pearson R on the held-out ones, averaged over the folds. A lab can so
choose its encoder before training DeepPT on it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DeepPTError, ExpressionTableError, OutputError
from .progress import CancelLike, ProgressLike, check_cancelled, make_progress

__all__ = ["ExtractorBenchmark", "benchmark_extractors"]

OUTPUT_NAMES = (
    "extractor_benchmark.csv",
    "extractor_benchmark_genes.csv",
    "extractor_benchmark.png",
)


@dataclass(frozen=True, eq=False)
class ExtractorBenchmark:
    """What :func:`benchmark_extractors` measured.

    Attributes
    ----------
    per_gene
        pandas.DataFrame, genes × extractors: held-out Pearson R (mean over folds).
    summary
        pandas.DataFrame, one row per extractor (best first): ``mean_r`` (HEST's headline),
        ``median_r``, ``sd_r``, ``genes``, ``feature_dim``, ``seconds`` (features) and
        ``weights`` (where they came from).
    folds
        How the spots were split, in words.
    """

    per_gene: Any
    summary: Any
    folds: str

    def save(self, out: str | os.PathLike[str], overwrite: bool = False) -> list[Path]:
        """Write the summary and per-gene tables (CSV) and the figure (PNG) into ``out``.

        Raises
        ------
        FileExistsError
            A file exists and ``overwrite`` is False (nothing is written).
        """
        from .io import atomic_outputs

        folder = Path(out)
        targets = [folder / name for name in OUTPUT_NAMES]
        existing = [str(t) for t in targets if t.exists()]
        if existing and not overwrite:
            raise FileExistsError(f"{', '.join(existing)} already exist; pass overwrite=True")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{folder}: cannot make the output folder ({exc})") from exc
        with atomic_outputs(targets, overwrite=True) as tmps:
            self.summary.to_csv(tmps[0])
            self.per_gene.to_csv(tmps[1])
            _figure(self, tmps[2])
        return targets


def _is_count(value: Any) -> bool:
    """Whether ``value`` is a whole number (numpy's too), not a bool."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def _check_numbers(genes: Any, folds: int, components: int, tile_px: int, mpp: float) -> None:
    """The probe's settings, refused in one line before anything is read."""
    limits = [("folds", folds, 2), ("components", components, 1), ("tile_px", tile_px, 16)]
    if _is_count(genes) or isinstance(genes, (bool, float)):  # else names (any iterable)
        limits.append(("genes", genes, 1))
    for name, value, least in limits:
        if isinstance(value, bool) or not (isinstance(value, Integral) and value >= least):
            raise DeepPTError(f"{name} must be a whole number ≥ {least}, got {value!r}")
    if not 0 < mpp < float("inf"):
        raise DeepPTError(f"tile_mpp must be a positive number (µm per pixel), got {mpp!r}")


def benchmark_extractors(
    spots: Any,
    expression: Any = None,
    extractors: Any = ("resnet50",),
    *,
    weights: dict[str, Any] | None = None,
    genes: int | list[str] = 50,
    group_by: str = "section",
    folds: int = 5,
    components: int = 256,
    tile_px: int = 224,
    tile_mpp: float = 0.5,
    stain: Any = "macenko",
    device: Any = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    seed: int = 0,
    progress: ProgressLike = True,
    cancel: CancelLike = None,
) -> ExtractorBenchmark:
    """Score each extractor by HEST's PCA + ridge probe on held-out sections of ``spots``.

    Parameters
    ----------
    spots
        A spot table (path or DataFrame: ``slide``, ``x``, ``y`` in level-0 pixels,
        ``spot_id``) or a :class:`~napari_deeppt.spatial.SpatialData` (its counts are the
        expression when ``expression`` is None).
    expression
        Counts, spots × genes: a path, DataFrame or AnnData.
    extractors
        Names of :func:`~napari_deeppt.features.extractors.list_extractors` (or a
        comma-separated string).
    weights
        Each extractor's weights (file or snapshot folder; ``"random"`` for tests); absent
        ones come from the local caches.
    genes
        The number of most variable genes (HEST: 50), or the genes themselves.
    group_by
        ``"section"`` (each slide is one) or a spot-table column (e.g. ``patient_id``):
        folds hold out whole groups.
    folds
        Folds at most (fewer with fewer groups; at least two groups are needed).
    components
        PCA components (HEST: 256; fewer with fewer training spots).
    tile_px, tile_mpp
        The tile centred on each spot (HEST: 224 px at 0.5 µm/px).
    stain, device, cache_dir
        As for :func:`~napari_deeppt.features.extract_features` (features are cached).
    out
        A folder to write the tables and the figure into (:meth:`ExtractorBenchmark.save`).
    overwrite
        Replace existing outputs in ``out``.
    seed
        Seeds the folds and the PCA.
    progress, cancel
        See :mod:`napari_deeppt.progress`.

    Returns
    -------
    ExtractorBenchmark

    Raises
    ------
    DeepPTError
        Before any feature work: an unreadable table, unknown extractor, missing weights,
        fewer than two groups, or outputs that exist.
    """
    from .features.extractors import check_weights, get_spec
    from .model.folds import group_folds

    _check_numbers(genes, folds, components, tile_px, tile_mpp)
    names = _names(extractors)
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise DeepPTError(f"weights given for {unknown}, which are not benchmarked ({names})")
    spot_data, targets, gene_names, groups = _inputs(spots, expression, genes, group_by)
    n_groups = len(set(groups))
    if n_groups < 2:
        raise ExpressionTableError(
            f"the spots form {n_groups} {group_by} group: held-out scoring needs at least "
            "two (several sections, or a group_by column with several values)"
        )
    held = group_folds(groups, min(folds, n_groups), np.random.default_rng(seed))
    if out is not None and not overwrite:
        existing = [str(Path(out) / n) for n in OUTPUT_NAMES if (Path(out) / n).exists()]
        if existing:
            raise FileExistsError(f"{', '.join(existing)} already exist; pass overwrite=True")
    for name in names:  # every extractor and its weights checked before any feature work
        get_spec(name)
        check_weights(name, weights.get(name))
    options = {"stain": stain, "device": device, "cache_dir": cache_dir, "cancel": cancel}
    per_gene, rows = {}, []
    with make_progress(progress, len(names), "extractors", unit="extractor") as bar:
        for name in names:
            started = time.perf_counter()
            features, source = _spot_features(
                spot_data, name, weights.get(name), tile_px, tile_mpp, options
            )
            seconds = time.perf_counter() - started
            per_gene[name] = _probe_r(features, targets, held, components, seed)
            rows.append(_summary_row(name, per_gene[name], features, seconds, source))
            bar.update()
    result = _result(per_gene, rows, gene_names, held, groups, group_by)
    if out is not None:
        result.save(out, overwrite=overwrite)
    return result


def _names(extractors: Any) -> list[str]:
    names = extractors.split(",") if isinstance(extractors, str) else list(extractors)
    names = [str(n).strip() for n in names if str(n).strip()]
    if not names:
        raise DeepPTError("no extractor to benchmark: name at least one (e.g. resnet50)")
    if len(set(names)) != len(names):
        raise DeepPTError(f"an extractor is named twice: {names}")
    return names


def _inputs(
    spots: Any, expression: Any, genes: int | list[str], group_by: str
) -> tuple[Any, np.ndarray, list[str], np.ndarray]:
    """The spot table with each spot's section and the opened slides, log1p expression of
    the chosen genes, their names, each spot's group."""
    import pandas as pd

    from .io.tables import check_spot_table, few, read_expression, read_spots
    from .model.inputs import open_spot_slides
    from .spatial import SpatialData

    if isinstance(spots, SpatialData):
        expression = spots.counts if expression is None else expression
        spots = spots.spots
    if expression is None:
        raise ExpressionTableError("no expression: pass the counts (a path, DataFrame or AnnData)")
    source = "the spot table" if isinstance(spots, pd.DataFrame) else spots
    table = (
        check_spot_table(spots, source) if isinstance(spots, pd.DataFrame) else read_spots(spots)
    )
    sections, slides = open_spot_slides(table, source)
    if group_by == "section":
        groups = np.asarray(sections, dtype=str)
    elif group_by in table.columns:
        groups = table[group_by].astype(str).to_numpy()
    else:
        raise ExpressionTableError(
            f"{source}: no column {group_by!r} to group spots by; use 'section' or one of "
            f"{few(list(table.columns))}"
        )
    counts = read_expression(expression, list(table["spot_id"].astype(str)), "spot")
    values = np.log1p(np.clip(counts.to_numpy(np.float64), 0, None))
    if _is_count(genes):
        variance = np.nan_to_num(values.var(axis=0), nan=-1.0)
        order = np.argsort(-variance, kind="stable")[:genes]
        chosen = [str(counts.columns[i]) for i in order if variance[i] > 0]
    else:
        genes = [genes] if isinstance(genes, str) else [str(g) for g in genes]
        missing = [g for g in genes if g not in counts.columns]
        if missing:
            raise ExpressionTableError(f"gene(s) not in the counts: {few(missing)}")
        chosen = list(genes)
    index = [counts.columns.get_loc(g) for g in chosen]
    spot_data = (table, sections, slides)
    return spot_data, values[:, index].astype(np.float32), chosen, groups


def _spot_features(
    spot_data: tuple[Any, np.ndarray, dict[str, Any]],
    name: str,
    weights: Any,
    tile_px: int,
    tile_mpp: float,
    options: dict[str, Any],
) -> tuple[np.ndarray, str]:
    """Every spot's feature (one tile centred on it), section by section, and the weights'
    source."""
    from .features import extract_features
    from .model.sample_features import spot_grid

    table, sections, slides = spot_data  # the slides opened and checked once, by _inputs
    x, y = table["x"].to_numpy(float), table["y"].to_numpy(float)
    features: np.ndarray | None = None
    source = ""
    for label, slide in slides.items():
        check_cancelled(options["cancel"], "the extractor benchmark")
        rows = np.flatnonzero(sections == label)
        grid = spot_grid(slide, x[rows], y[rows], tile_px, tile_mpp)
        fs = extract_features(
            slide, grid, extractor=name, weights=weights, progress=False, **options
        )
        if features is None:
            features = np.zeros((len(table), fs.features.shape[1]), np.float32)
        features[rows] = fs.features
        source = str(fs.provenance.get("weights_source", ""))
    assert features is not None
    return features, source


def _probe_r(
    features: np.ndarray, targets: np.ndarray, held: list[np.ndarray], components: int, seed: int
) -> np.ndarray:
    """Per-gene Pearson R of the probe on each held-out fold, averaged over the folds."""
    from .model.baseline import pca_ridge_heldout
    from .model.metrics import pearson_columns

    predicted = pca_ridge_heldout(features, targets, held, components, seed)
    per_fold = [pearson_columns(predicted[test], targets[test]) for test in held]
    with np.errstate(invalid="ignore"):
        return np.nanmean(np.vstack(per_fold).astype(np.float64), axis=0)


def _summary_row(
    name: str, r: np.ndarray, features: np.ndarray, seconds: float, source: str
) -> dict[str, Any]:
    finite = r[np.isfinite(r)]
    return {
        "extractor": name,
        "mean_r": float(finite.mean()) if len(finite) else float("nan"),
        "median_r": float(np.median(finite)) if len(finite) else float("nan"),
        "sd_r": float(finite.std()) if len(finite) else float("nan"),
        "genes": len(finite),
        "feature_dim": features.shape[1],
        "seconds": round(seconds, 1),
        "weights": source,
    }


def _result(
    per_gene: dict[str, np.ndarray],
    rows: list[dict[str, Any]],
    genes: list[str],
    held: list[np.ndarray],
    groups: np.ndarray,
    group_by: str,
) -> ExtractorBenchmark:
    import pandas as pd

    summary = pd.DataFrame(rows).set_index("extractor").sort_values("mean_r", ascending=False)
    table = pd.DataFrame(per_gene, index=pd.Index(genes, name="gene"))[list(summary.index)]
    held_groups = sorted({len(set(groups[test])) for test in held})
    per_fold = "–".join(map(str, held_groups[:: max(1, len(held_groups) - 1)]))
    folds = (
        f"{len(held)} folds of whole {group_by}s ({len(set(groups))} in all; "
        f"{per_fold} held out per fold)"
    )
    summary.attrs["folds"] = folds
    return ExtractorBenchmark(table, summary, folds)


def _figure(result: ExtractorBenchmark, path: Path) -> None:
    """Per-extractor distribution of per-gene R (box plot) and the extractor × gene heatmap."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    table = result.per_gene
    n_genes, n_ext = table.shape
    fig = Figure(figsize=(6 + 0.18 * n_genes, 1.6 + 0.5 * n_ext + 2.5), layout="constrained")
    box, heat = fig.subplots(1, 2, width_ratios=[1, max(1.5, 0.12 * n_genes)])
    data = [table[c].dropna().to_numpy() for c in table.columns]
    box.boxplot(data)
    box.set_xticks(range(1, n_ext + 1), list(table.columns), rotation=30, ha="right")
    box.axhline(0.0, color="grey", lw=0.5)
    box.set_ylabel("held-out Pearson R per gene")
    box.set_title("PCA + ridge (HEST protocol)")
    limit = max(0.1, float(np.nanmax(np.abs(table.to_numpy()))))
    image = heat.imshow(table.T.to_numpy(), aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit)
    heat.set_yticks(range(n_ext), list(table.columns))
    heat.set_xticks(range(n_genes), list(table.index), rotation=90, fontsize=6)
    heat.set_title(result.folds, fontsize=8)
    fig.colorbar(image, ax=heat, label="Pearson R")
    fig.savefig(path, dpi=120)
