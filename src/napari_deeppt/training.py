"""Training DeepPT models: inputs, patient-level cross-validation, metrics, the bundle.

DeepPT (Hoang et al. 2024): features → autoencoder (2048→512) → MLP applied per tile and
averaged over the slide, trained with MSE against bulk RNA-seq, Adam 1e-4, patient-level
5-fold cross-validation whose inner folds' models are ensembled. Two deliberate departures:
early stopping restores the best validation epoch (DeepPT kept the last), and the
autoencoder is fitted on the training folds only (DeepPT fitted it on every slide).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .errors import DeepPTError, ExpressionTableError
from .progress import CancelLike, ProgressLike, check_cancelled, make_progress

__all__ = [
    "TrainingResult",
    "TrainingSettings",
    "check_folds",
    "gene_metrics",
    "holm_sidak",
    "read_expression",
    "read_manifest",
    "read_spots",
    "section_metrics",
    "spot_grid",
    "train",
]

TRANSFORMS = ("log2p1", "none")


@dataclass(frozen=True)
class TrainingSettings:
    """Cross-validation and optimisation settings (DeepPT's defaults)."""

    outer_folds: int = 5
    inner_folds: int = 5
    max_epochs: int = 200
    patience: int = 20
    lr: float = 1e-4
    batch_slides: int = 16
    ae_epochs: int = 30
    ae_batch: int = 256
    latent_dim: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        least = dict.fromkeys(
            ("max_epochs", "patience", "batch_slides", "ae_batch", "latent_dim"), 1
        )
        least.update(outer_folds=2, inner_folds=2, ae_epochs=0)  # ae_epochs=0: untrained
        for name, minimum in least.items():
            if getattr(self, name) < minimum:
                raise ValueError(f"{name} must be ≥ {minimum}, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")


@dataclass(repr=False)
class TrainingResult:
    """What :func:`train` made."""

    bundle_path: Path
    gene_metrics: Any  # pandas.DataFrame, one row per gene
    summary: dict[str, Any]
    heldout: Any  # pandas.DataFrame, samples × genes, outer-fold predictions
    sections: Any = None  # spots: pandas.DataFrame, genes × sections, within-section R

    def __repr__(self) -> str:
        significant = self.summary.get("significant")
        return (
            f"TrainingResult({self.summary.get('genes')} genes, {significant} significant "
            f"held out; bundle {str(self.bundle_path)!r})"
        )


# -- inputs ---------------------------------------------------------------------------------
def read_manifest(path: str | Path, require_patient: bool = True) -> Any:
    """A cohort manifest CSV: ``slide``, ``sample_id``, ``patient_id`` (+ optional columns).

    Relative slide paths are resolved against the manifest's folder. With
    ``require_patient=False`` (prediction runs) a missing ``patient_id`` is the sample id.
    An optional ``roi`` column names a GeoJSON of regions of interest per slide (QuPath
    annotations; empty = the whole tissue), resolved the same way.
    """
    import pandas as pd

    path = Path(path)
    try:
        table = pd.read_csv(path, sep=None, engine="python", dtype=str)
    except Exception as exc:
        raise ExpressionTableError(f"{path}: not a readable manifest CSV ({exc})") from exc
    if not require_patient and "patient_id" not in table.columns and "sample_id" in table:
        table["patient_id"] = table["sample_id"]
    missing = [c for c in ("slide", "sample_id", "patient_id") if c not in table.columns]
    if missing:
        raise ExpressionTableError(
            f"{path}: the manifest lacks column(s) {missing}; it needs slide, sample_id, patient_id"
        )
    duplicated = table["sample_id"][table["sample_id"].duplicated()].tolist()
    if duplicated:
        raise ExpressionTableError(f"{path}: duplicated sample_id(s) {duplicated[:5]}")
    table["slide"] = _relative_to(path, table["slide"])
    _require_slides(path, table)
    if "roi" in table.columns:
        table["roi"] = _relative_to(path, table["roi"])
        absent = [p for p in table["roi"] if p is not None and not Path(p).is_file()]
        if absent:
            raise ExpressionTableError(f"{path}: roi file(s) not found: {absent[:5]}")
    return table.reset_index(drop=True)


def _require_slides(path: Path, table: Any) -> None:
    empty = [i + 2 for i, slide in enumerate(table["slide"]) if slide is None]  # + header
    if empty:
        raise ExpressionTableError(f"{path}: line(s) {empty[:5]} name no slide")


def _relative_to(table_path: Path, paths: Any) -> list[str | None]:
    """Paths in a table, relative ones resolved against its folder; empty cells → None."""
    return [
        None
        if not isinstance(p, str) or not p.strip()
        else str(p if Path(p).is_absolute() else (table_path.parent / p))
        for p in paths
    ]


def read_expression(
    path: str | Path, sample_ids: list[str], ids_name: str = "manifest sample"
) -> Any:
    """Expression matrix (CSV/TSV in either orientation, or ``.h5ad``) as samples × genes.

    Parameters
    ----------
    path
        The table: samples × genes or genes × samples.
    sample_ids
        The ids every one of which needs a row of expression.
    ids_name
        What the ids are, for messages (``"manifest sample"``, ``"spot"``).

    Returns
    -------
    pandas.DataFrame
        ``sample_ids`` × genes, float64.

    Notes
    -----
    The samples are the axis whose names overlap ``sample_ids`` more. When neither axis
    names any of them the table is refused, showing a few names of both axes and of the
    ids (a table's gene names are never reported as its samples). Every id must be present
    exactly once, genes unique and values numeric.
    """

    path = Path(path)
    table = _read_table_file(path)
    table.index = table.index.astype(str)
    table.columns = table.columns.astype(str)
    wanted = set(sample_ids)
    in_rows, in_columns = len(wanted & set(table.index)), len(wanted & set(table.columns))
    if in_rows == in_columns == 0:
        raise ExpressionTableError(
            f"{path}: none of the {len(sample_ids)} {ids_name}s {_few(sample_ids)} names a row "
            f"or a column of the table; its rows are {_few(table.index)} and its columns "
            f"{_few(table.columns)}; give the table one row or column per {ids_name} id"
        )
    if in_columns > in_rows:
        table = table.T  # genes × samples → samples × genes
    present = set(table.index)
    absent = [s for s in sample_ids if s not in present]
    if absent:
        raise ExpressionTableError(
            f"{path}: {len(absent)} {ids_name}(s) have no expression: {_few(absent, 8)}"
            f" (the table's {len(table.index)} samples are {_few(table.index)}; its genes "
            f"{_few(table.columns, 3)})"
        )
    repeated = table.index[table.index.duplicated() & table.index.isin(wanted)].unique()
    if len(repeated):
        raise ExpressionTableError(
            f"{path}: {ids_name}(s) {_few(repeated, 8)} appear more than once in the table; "
            "keep one row (or column) of expression per sample"
        )
    duplicated = table.columns[table.columns.duplicated()].unique().tolist()
    if duplicated:
        raise ExpressionTableError(f"{path}: duplicated gene(s) {duplicated[:8]}")
    return _numeric(path, table.loc[list(sample_ids)])


def _numeric(path: Path, table: Any) -> Any:
    """The table as float64, refusing text, missing and infinite values (named)."""
    import pandas as pd

    numeric = table.apply(pd.to_numeric, errors="coerce")
    bad = numeric.isna() & ~table.isna()
    if bad.any().any():
        gene = bad.any()[bad.any()].index[0]
        sample = bad[gene][bad[gene]].index[0]
        raise ExpressionTableError(
            f"{path}: non-numeric value {table.at[sample, gene]!r} "
            f"for gene {gene!r}, sample {sample!r}"
        )
    if numeric.isna().any().any():
        gene = numeric.columns[numeric.isna().any()][0]
        raise ExpressionTableError(f"{path}: missing values, e.g. gene {gene!r}")
    infinite = ~np.isfinite(numeric.to_numpy(np.float64))
    if infinite.any():
        row, column = np.argwhere(infinite)[0]
        raise ExpressionTableError(
            f"{path}: infinite value for gene {numeric.columns[column]!r}, sample "
            f"{numeric.index[row]!r} ({int(infinite.sum())} in all); expression must be finite"
        )
    return numeric.astype(np.float64)


def _read_table_file(path: Path) -> Any:
    """An expression file as a DataFrame with its labels, any orientation."""
    import pandas as pd

    if not path.exists():
        raise ExpressionTableError(f"{path}: no such expression file")
    try:
        if path.suffix == ".h5ad":
            import anndata

            adata = anndata.read_h5ad(path)
            return pd.DataFrame(
                np.asarray(adata.X.todense() if hasattr(adata.X, "todense") else adata.X),
                index=adata.obs_names,
                columns=adata.var_names,
            )
        return pd.read_csv(path, sep=None, engine="python", index_col=0)
    except Exception as exc:
        raise ExpressionTableError(f"{path}: not a readable expression table ({exc})") from exc


def _few(names: Any, k: int = 5) -> str:
    """The first ``k`` names as a list, with … when there are more."""
    names = list(names)
    return str(names[:k])[:-1] + (", …]" if len(names) > k else "]")


def select_genes(
    expression: Any,
    genes: list[str] | None = None,
    min_mean: float | None = None,
    top_n: int | None = None,
    rank_by: str = "variance",
) -> list[str]:
    """Genes to model: an explicit list, or filtered by mean and ranked by variance/mean."""
    if genes is not None:
        unknown = [g for g in genes if g not in expression.columns]
        if unknown:
            raise ExpressionTableError(f"gene(s) not in the expression table: {unknown[:8]}")
        return list(dict.fromkeys(genes))
    table = expression
    if min_mean is not None:
        table = table.loc[:, table.mean() >= min_mean]
    if top_n is not None:
        if rank_by not in ("variance", "mean"):
            raise ValueError("rank_by must be 'variance' or 'mean'")
        score = table.var() if rank_by == "variance" else table.mean()
        table = table[score.sort_values(ascending=False).index[:top_n]]
    if table.shape[1] == 0:
        raise ExpressionTableError("no gene passes the selection (min_mean/top_n)")
    return list(table.columns)


def apply_transform(values: np.ndarray, transform: str, where: str = "the expression") -> Any:
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


# -- metrics --------------------------------------------------------------------------------
def pearson_columns(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Pearson R of each column (gene) across rows (samples); NaN for constant columns."""
    p = pred - pred.mean(axis=0)
    t = truth - truth.mean(axis=0)
    denom = np.sqrt((p**2).sum(axis=0) * (t**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (p * t).sum(axis=0) / denom, np.nan)


def holm_sidak(pvalues: np.ndarray) -> np.ndarray:
    """Holm–Šidák step-down adjusted p-values (NaN stay NaN)."""
    p = np.asarray(pvalues, float)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    values = p[ok]
    m = len(values)
    order = np.argsort(values)
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, 1.0 - (1.0 - values[index]) ** (m - rank))
        adjusted[index] = min(running, 1.0)
    out[ok] = adjusted
    return out


def gene_metrics(pred: np.ndarray, truth: np.ndarray, genes: list[str], alpha: float = 0.05) -> Any:
    """Per-gene Pearson R pooled over all samples, two-sided p, Holm–Šidák p, significance.

    DeepPT's metric for bulk slides; spot models use :func:`section_metrics` instead.
    """
    import pandas as pd
    from scipy import stats

    r = pearson_columns(pred, truth)
    n = pred.shape[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        t = r * np.sqrt((n - 2) / np.clip(1 - r**2, 1e-12, None))
    p = 2 * stats.t.sf(np.abs(t), df=max(n - 2, 1))
    p = np.where(np.isnan(r), np.nan, p)
    adjusted = holm_sidak(p)
    return pd.DataFrame(
        {
            "gene": genes,
            "pearson_r": r,
            "p_value": p,
            "p_holm_sidak": adjusted,
            "significant": (adjusted < alpha) & (r > 0),
        }
    ).set_index("gene")


def section_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    genes: list[str],
    sections: Any,
    alpha: float = 0.05,
) -> tuple[Any, Any]:
    """Per-gene Pearson R within each section, averaged over sections (spot models).

    Pooling held-out spots of several sections before Pearson R mixes in how each
    section's mean prediction sits against its mean expression: per-section offsets of a
    weak model can make the pooled R strongly negative while every section correlates
    positively. So R is computed within each section, then averaged.

    Parameters
    ----------
    pred, truth
        ``(n_spots, n_genes)`` held-out predictions and measured (transformed) expression.
    genes
        Gene names (columns).
    sections
        ``(n_spots,)`` section label of each spot.
    alpha
        Significance level after Holm–Šidák correction.

    Returns
    -------
    metrics : pandas.DataFrame
        One row per gene: ``pearson_r`` (mean of the within-section R), ``p_value``
        (Fisher's z of each section weighted by n − 3, combined: a fixed-effect test of
        R = 0), ``p_holm_sidak``, ``significant`` (adjusted p < alpha and R > 0),
        ``n_sections`` (sections with an R) and ``r_scope`` (``"within-section mean"``).
    per_section : pandas.DataFrame
        genes × sections: the within-section R. A section with fewer than 4 spots, or in
        which the gene (or its prediction) is constant, has none (NaN) and no weight.
    """
    import pandas as pd
    from scipy import stats

    names, r, n = _section_r(pred, truth, sections)
    ok = ~np.isnan(r)
    weights = np.where(ok, n[None, :] - 3.0, 0.0)
    z = np.arctanh(np.clip(np.where(ok, r, 0.0), -1 + 1e-12, 1 - 1e-12))
    total = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        combined = (weights * z).sum(axis=1) / np.sqrt(total)
        mean_r = np.where(ok.any(axis=1), np.where(ok, r, 0.0).sum(1) / ok.sum(1), np.nan)
    p = np.where(total > 0, 2 * stats.norm.sf(np.abs(combined)), np.nan)
    adjusted = holm_sidak(p)
    metrics = pd.DataFrame(
        {
            "gene": genes,
            "pearson_r": mean_r,
            "p_value": p,
            "p_holm_sidak": adjusted,
            "significant": (adjusted < alpha) & (mean_r > 0),
            "n_sections": ok.sum(axis=1),
            "r_scope": "within-section mean",
        }
    ).set_index("gene")
    per_section = pd.DataFrame(r, index=pd.Index(genes, name="gene"), columns=names)
    return metrics, per_section


def _section_r(pred: Any, truth: Any, sections: Any) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Section names (first-seen order), genes × sections R, spots per section."""
    sections = np.asarray(sections)
    pred, truth = np.asarray(pred, np.float64), np.asarray(truth, np.float64)
    names = list(dict.fromkeys(sections.tolist()))
    r = np.full((pred.shape[1], len(names)), np.nan)
    n = np.zeros(len(names))
    for j, name in enumerate(names):
        rows = sections == name
        n[j] = rows.sum()
        if n[j] >= 4:
            r[:, j] = pearson_columns(pred[rows], truth[rows])
    return [str(name) for name in names], r, n


def _validation_r(pred: Any, truth: Any, sections: Any = None) -> float:
    """Early-stopping score: mean Pearson R, pooled (bulk) or within sections (spots)."""
    if sections is None:
        r = pearson_columns(np.asarray(pred, np.float64), np.asarray(truth, np.float64))
    else:
        r = _section_r(pred, truth, sections)[1]
    return float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")


def summarise(metrics: Any, r_scope: str = "pooled") -> dict[str, Any]:
    """Headline numbers of per-gene metrics; ``r_scope`` says how R was computed."""
    r = metrics["pearson_r"].dropna().sort_values(ascending=False)
    return {
        "genes": len(metrics),
        "significant": int(metrics["significant"].sum()),
        "r_above_0.4": int((r > 0.4).sum()),
        "median_r_top_1000": float(r.iloc[:1000].median()) if len(r) else float("nan"),
        "median_r": float(r.median()) if len(r) else float("nan"),
        "r_scope": r_scope,
    }


# -- training -------------------------------------------------------------------------------
def _group_folds(groups: np.ndarray, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Indices of each fold, whole groups (patients, or sections for spots) per fold."""
    unique = np.array(sorted(set(groups)))
    if len(unique) < k:  # check_folds refuses this before any feature work
        raise DeepPTError(
            f"{k}-fold cross-validation needs at least {k} groups (patients or sections), "
            f"got {len(unique)}"
        )
    rng.shuffle(unique)
    folds = np.array_split(unique, k)
    return [np.flatnonzero(np.isin(groups, fold)) for fold in folds]


_GROUP_NAMES = {"patients": "patients", "sections": "sections (slides)"}


def _max_inner(n_groups: int, outer: int) -> int:
    """Training groups left when the largest of ``outer`` folds is held out."""
    return n_groups - math.ceil(n_groups / outer)


def check_folds(
    n_groups: int, options: TrainingSettings, groups: str = "patients", source: Any = None
) -> None:
    """Refuse fold settings that ``n_groups`` groups cannot fill, naming settings that work.

    Outer folds hold out whole groups, at least one each, so ``outer_folds ≤ n_groups``;
    the largest outer fold holds ⌈n / outer_folds⌉ groups and leaves n − ⌈n / outer_folds⌉
    training groups, which the inner folds split again: ``inner_folds`` can be at most
    that. :func:`train` checks this before any feature work.

    Parameters
    ----------
    n_groups
        Distinct groups: patients (bulk) or sections, i.e. slides (spots).
    options
        The outer and inner fold counts asked for.
    groups
        ``"patients"`` or ``"sections"``, for the message.
    source
        The manifest or spot table, named first in the message.

    Raises
    ------
    ExpressionTableError
        One line: how many groups there are, why they cannot fill the folds, what works.
    """
    outer, inner, n = options.outer_folds, options.inner_folds, int(n_groups)
    if outer <= n and inner <= _max_inner(n, outer):
        return
    noun = _GROUP_NAMES.get(groups, groups)
    where = f"{source}: " if source is not None else ""
    usable = [o for o in range(min(outer, n), n + 1) if o >= 2 and _max_inner(n, o) >= 2]
    if not usable:
        raise ExpressionTableError(
            f"{where}{n} {noun} are too few for cross-validation, which needs at least 3 "
            f"{noun} (3 outer × 2 inner folds); add {noun}"
        )
    if outer > n:
        problem = f"cannot fill {outer} outer folds (each holds out at least one)"
    else:
        problem = (
            f"cannot fill {outer} outer × {inner} inner folds: holding out an outer fold leaves "
            f"{_max_inner(n, outer)} training {noun}, too few for {inner} inner folds"
        )
    best_outer = usable[0]
    best_inner = min(inner, _max_inner(n, best_outer))
    fewer = " or fewer" if best_inner > 2 else ""
    works = [f"outer_folds={best_outer}, inner_folds={best_inner}{fewer}"]
    more_outer = [o for o in usable if _max_inner(n, o) >= inner]
    if best_inner < inner and more_outer:
        works.append(f"outer_folds={more_outer[0]}, inner_folds={inner}")
    raise ExpressionTableError(f"{where}{n} {noun} {problem}; use {' or '.join(works)}")


def _fit_autoencoder(tiles: Any, settings: TrainingSettings, seed: int, cancel: CancelLike) -> Any:
    import torch

    from .models import AutoEncoder

    gen = torch.Generator().manual_seed(seed)
    torch.default_generator.manual_seed(seed)
    model = AutoEncoder(tiles.shape[1], settings.latent_dim)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr)
    for _ in range(settings.ae_epochs):
        check_cancelled(cancel, "training")
        order = torch.randperm(tiles.shape[0], generator=gen)
        for start in range(0, tiles.shape[0], settings.ae_batch):
            x = tiles[order[start : start + settings.ae_batch]]
            loss = torch.nn.functional.mse_loss(model(x), x)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval()


def _slide_predictions(model: Any, latents: list[Any], indices: np.ndarray) -> Any:
    import torch

    with torch.no_grad():
        return torch.stack([model(latents[i]).mean(dim=0) for i in indices])


def _fit_regressor(
    latents: list[Any],
    targets: Any,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    settings: TrainingSettings,
    seed: int,
    cancel: CancelLike,
    val_sections: np.ndarray | None = None,
) -> tuple[dict[str, Any], float, int]:
    """One regressor, early-stopped on the mean validation R (within ``val_sections``)."""
    import torch

    from .models import MLPRegression

    torch.default_generator.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = MLPRegression(
        targets.shape[1], in_dim=settings.latent_dim, output_bias=targets[train_idx].mean(dim=0)
    )
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr)
    truth_val = targets[val_idx].numpy()
    best_r, best_state, best_epoch, waited = -np.inf, None, 0, 0
    for epoch in range(settings.max_epochs):
        check_cancelled(cancel, "training")
        model.train()
        order = rng.permutation(train_idx)
        for start in range(0, len(order), settings.batch_slides):
            batch = order[start : start + settings.batch_slides]
            counts = torch.tensor([latents[i].shape[0] for i in batch])
            x = torch.cat([latents[i] for i in batch])
            segment = torch.repeat_interleave(torch.arange(len(batch)), counts)
            tile_pred = model(x)
            slide_pred = (
                torch.zeros(len(batch), tile_pred.shape[1]).index_add_(0, segment, tile_pred)
                / counts[:, None]
            )
            loss = torch.nn.functional.mse_loss(slide_pred, targets[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        model.eval()
        r = (
            _validation_r(
                _slide_predictions(model, latents, val_idx).numpy(), truth_val, val_sections
            )
            if len(val_idx) > 2
            else -float(loss)
        )
        r = -np.inf if np.isnan(r) else float(r)
        if r > best_r or best_state is None:
            best_r, best_epoch, waited = r, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            waited += 1
            if waited >= settings.patience:
                break
    return best_state, best_r, best_epoch


def _ensemble(
    latents: list[Any],
    targets: Any,
    pool: np.ndarray,
    groups: np.ndarray,
    settings: TrainingSettings,
    seed: int,
    cancel: CancelLike,
    within: bool = False,
) -> list[dict]:
    """Inner-fold models over ``pool``, each early-stopped on its own held-out groups
    (patients; for spots, sections, scored within each section)."""
    rng = np.random.default_rng(seed)
    folds = _group_folds(groups[pool], settings.inner_folds, rng)
    states = []
    for k, fold in enumerate(folds):
        val_idx = pool[fold]
        train_idx = np.setdiff1d(pool, val_idx)
        state, _, _ = _fit_regressor(
            latents,
            targets,
            train_idx,
            val_idx,
            settings,
            seed * 100 + k,
            cancel,
            groups[val_idx] if within else None,
        )
        states.append(state)
    return states


def _encode(autoencoder: Any, features: list[Any]) -> list[Any]:
    import torch

    with torch.no_grad():
        return [autoencoder.encode(f) for f in features]


def _ensemble_predict(
    states: list[dict], latents: list[Any], indices: np.ndarray, n_genes: int, latent_dim: int
) -> np.ndarray:
    from .models import MLPRegression

    preds = []
    for state in states:
        model = MLPRegression(n_genes, in_dim=latent_dim)
        model.load_state_dict(state)
        preds.append(_slide_predictions(model.eval(), latents, indices).numpy())
    return np.mean(preds, axis=0)


class _CrossValidation(NamedTuple):
    heldout: np.ndarray
    metrics: Any
    summary: dict[str, Any]
    per_section: Any  # genes × sections R for spots, None for bulk
    autoencoder: Any
    states: list[dict]


def _cross_validate(
    features: list[Any],
    targets: Any,
    groups: np.ndarray,
    genes: list[str],
    options: TrainingSettings,
    progress: ProgressLike,
    cancel: CancelLike,
    within: bool = False,
) -> _CrossValidation:
    """Outer folds by group (held-out predictions, metrics), then the final model on all.

    ``features[i]`` is the ``(n_tiles, D)`` tensor of sample ``i`` (one tile for a spot).
    With ``within`` (spots; ``groups`` are sections) R is computed within each section
    (:func:`section_metrics`), for early stopping too; otherwise pooled (DeepPT).
    """
    import torch

    n = len(features)
    rng = np.random.default_rng(options.seed)
    outer = _group_folds(groups, options.outer_folds, rng)
    heldout = np.zeros(tuple(targets.shape), np.float32)
    with make_progress(progress, options.outer_folds + 1, "cross-validation", unit="fold") as bar:
        for k, test_idx in enumerate(outer):
            train_idx = np.setdiff1d(np.arange(n), test_idx)
            autoencoder = _fit_autoencoder(
                torch.cat([features[i] for i in train_idx]), options, options.seed + k, cancel
            )
            latents = _encode(autoencoder, features)
            seed = options.seed + 17 * (k + 1)
            states = _ensemble(latents, targets, train_idx, groups, options, seed, cancel, within)
            heldout[test_idx] = _ensemble_predict(
                states, latents, test_idx, len(genes), options.latent_dim
            )
            _require_finite(heldout[test_idx], options, f"outer fold {k + 1}")
            bar.update()
        if within:
            metrics, per_section = section_metrics(heldout, targets.numpy(), genes, groups)
            summary = summarise(metrics, "within-section mean")
        else:
            metrics, per_section = gene_metrics(heldout, targets.numpy(), genes), None
            summary = summarise(metrics, "pooled")
        autoencoder = _fit_autoencoder(torch.cat(features), options, options.seed, cancel)
        latents = _encode(autoencoder, features)
        states = _ensemble(
            latents, targets, np.arange(n), groups, options, options.seed, cancel, within
        )
        for state in [autoencoder.state_dict(), *states]:
            _require_finite(
                np.concatenate([v.numpy().ravel() for v in state.values()]),
                options,
                "the final model",
            )
        bar.update()
    return _CrossValidation(heldout, metrics, summary, per_section, autoencoder, states)


def _require_finite(values: np.ndarray, options: TrainingSettings, where: str) -> None:
    """Refuse a diverged run: NaN/inf predictions or weights are never kept or scored."""
    if not np.isfinite(values).all():
        raise DeepPTError(
            f"training diverged: {where} has non-finite predictions or weights with "
            f"lr={options.lr:g}; lower lr (DeepPT: 1e-4) and train again"
        )


def _write_outputs(
    out: Path, bundle: Any, cv: _CrossValidation, heldout: Any, overwrite: bool
) -> None:
    """The bundle and its tables, written together: all new, or (on a failure) all as before."""
    from .io import atomic_outputs

    tables = [(".genes.csv", cv.metrics), (".heldout.csv", heldout)]
    if cv.per_section is not None:
        tables.append((".sections.csv", cv.per_section))
    targets = [out, *(out.with_suffix(suffix) for suffix, _ in tables)]
    with atomic_outputs(targets, overwrite=overwrite) as (bundle_tmp, *table_tmps):
        bundle.save(bundle_tmp, overwrite=True)
        for (_, table), tmp in zip(tables, table_tmps, strict=True):
            table.to_csv(tmp)


def _refuse_existing(out: Path, overwrite: bool, spots: bool = False) -> None:
    suffixes = [".genes.csv", ".heldout.csv"] + ([".sections.csv"] if spots else [])
    for target in (out, *(out.with_suffix(s) for s in suffixes)):
        if target.exists() and not overwrite:
            raise FileExistsError(
                f"{target}: already exists; pass overwrite=True (--overwrite) to replace it"
            )


def read_spots(path: str | Path) -> Any:
    """A spot table CSV: ``slide``, ``x``, ``y`` (level-0 px), optional ``spot_id``.

    ``x, y`` are the spot's centre in level-0 pixels of its slide; relative slide paths
    are resolved against the table's folder. Rows without a slide, duplicated spot ids and
    coordinates that are missing or not numbers are refused, naming the spots. Whether a
    centre lies on its slide is checked when :func:`train` opens the slides (before any
    feature work): a spot centred off its slide is refused. A spot near the edge keeps its
    tile centred on it, never shifted; the part of the tile beyond the slide reads as white
    (255) glass, as :meth:`~napari_deeppt.slide.Slide.read_region` pads.
    """
    import pandas as pd

    path = Path(path)
    try:
        table = pd.read_csv(path, sep=None, engine="python")
    except Exception as exc:
        raise ExpressionTableError(f"{path}: not a readable spot table ({exc})") from exc
    table = _check_spot_table(table, path)
    table["slide"] = _relative_to(path, table["slide"])
    _require_slides(path, table)
    return table.reset_index(drop=True)


def _check_spot_table(table: Any, source: Any) -> Any:
    """Columns, spot ids and numeric coordinates of a spot table (a copy)."""
    import pandas as pd

    missing = [c for c in ("slide", "x", "y") if c not in table.columns]
    if missing:
        raise ExpressionTableError(
            f"{source}: the spot table lacks column(s) {missing}; it "
            "needs slide, x, y (level-0 pixels) and optionally spot_id"
        )
    table = table.copy()
    if "spot_id" not in table.columns:
        table["spot_id"] = [f"{Path(str(s)).stem}_{i}" for i, s in enumerate(table["slide"])]
    table["spot_id"] = table["spot_id"].astype(str)
    duplicated = table["spot_id"][table["spot_id"].duplicated()].tolist()
    if duplicated:
        raise ExpressionTableError(f"{source}: duplicated spot_id(s) {duplicated[:5]}")
    for axis in ("x", "y"):
        table[axis] = pd.to_numeric(table[axis], errors="coerce")
    bad = table["spot_id"][table["x"].isna() | table["y"].isna()].tolist()
    if bad:
        raise ExpressionTableError(
            f"{source}: {len(bad)} spot(s) have no numeric x, y (level-0 pixels): {_few(bad)}"
        )
    return table


def _open_spot_slides(table: Any, source: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """Open each slide of a spot table once and refuse spots whose centre is off their
    slide, and slides without a pixel size, before any feature work.

    Returns each row's slide key (its real path: one slide named two ways is one
    section) and the opened slides by key.
    """
    from .slide import open_slide

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
        where = "; ".join(f"{_few(ids)} on {path} ({w}×{h} px)" for path, (w, h), ids in off)
        raise ExpressionTableError(
            f"{source}: {count} spot(s) have their centre outside their slide: {where}; x, y "
            "must be level-0 pixels of the slide named on the row (check the coordinates' "
            "scale and which slide they belong to)"
        )
    return keys, slides


def spot_grid(slide: Any, x: np.ndarray, y: np.ndarray, tile_px: int, tile_mpp: float) -> Any:
    """A tile grid with one tile of ``tile_px`` at ``tile_mpp`` centred on each spot.

    Tiles are never shifted: one reaching past the slide's edge reads the outside as
    white (255), like :meth:`~napari_deeppt.slide.Slide.read_region`.
    """
    from .tiles import TileGrid, TileGridParams

    mpp0 = slide.require_mpp("spot tiles")
    size0 = tile_px * tile_mpp / mpp0
    n = len(x)
    xy = np.round(np.stack([np.asarray(x, float), np.asarray(y, float)], 1) - size0 / 2)
    return TileGrid(
        xy=xy.astype(np.int64),
        rowcol=np.stack([np.zeros(n, np.int64), np.arange(n)], 1),
        tissue_fraction=np.ones(n, np.float32),
        edge_fraction=np.full(n, np.nan, np.float32),
        grid_shape=(1, max(n, 1)),
        size_level0=float(size0),
        stride_level0=float(size0),
        params=TileGridParams(tile_px=tile_px, mpp=tile_mpp, min_tissue=0.0),
        slide_dimensions=slide.dimensions,
        slide_mpp=float(mpp0),
        slide_path=str(slide.path),
    )


def train(
    manifest: str | Path | Any,
    expression: str | Path,
    out: str | Path,
    *,
    extractor: str = "resnet50",
    weights: Any = None,
    tile_px: int | None = None,
    tile_mpp: float = 0.5,
    min_tissue: float = 0.5,
    stain: Any = "macenko",
    roi_class: str | None = None,
    device: Any = "auto",
    cache_dir: str | Path | None = None,
    transform: str = "log2p1",
    genes: list[str] | None = None,
    min_mean: float | None = None,
    top_n: int | None = None,
    rank_by: str = "variance",
    demo: bool = False,
    overwrite: bool = False,
    progress: ProgressLike = True,
    cancel: CancelLike = None,
    **settings: Any,
) -> TrainingResult:
    """Train a DeepPT bundle on slides with matched bulk expression.

    Parameters
    ----------
    manifest
        Cohort manifest CSV (``slide, sample_id, patient_id``) or a DataFrame of it — or a
        spot table (``slide, x, y`` in level-0 px, ``spot_id``) for spatial
        transcriptomics: each spot is a sample whose one tile is centred on it (never
        shifted: past the slide's edge the tile reads white, as the reader pads; a spot
        centred off its slide is refused), cross-validation groups spots by section
        (slide), and each gene's R is the mean of its R within each held-out section
        (:func:`section_metrics`; pooled over sections for bulk slides, as DeepPT).
    expression
        Expression matrix (CSV/TSV, samples × genes or genes × samples, or ``.h5ad``); for
        spots, the counts (spots × genes or genes × spots).
    out
        Bundle file to write (``.deeppt``); ``<out>.genes.csv`` and ``<out>.heldout.csv``
        (and for spots ``<out>.sections.csv``, genes × sections R) are written beside it.
        Never overwritten unless ``overwrite``.
    extractor, weights, tile_px, tile_mpp, min_tissue, stain, device, cache_dir
        Feature settings (see :func:`~napari_deeppt.features.extract_features`); ``tile_px``
        defaults to 512 (DeepPT) for slides and 224 for spots (112 µm at 0.5 µm/px).
    roi_class
        With a ``roi`` column in the manifest: only its regions of this class (``"Tumor"``).
    transform
        ``"log2p1"`` (log2(x + 1), default) or ``"none"``; stored in the bundle.
    genes, min_mean, top_n, rank_by
        Gene selection: an explicit list, or a minimum mean then the top N by variance/mean.
    demo
        Mark the bundle as a demo model (synthetic data).
    progress, cancel
        See :mod:`napari_deeppt.progress`.
    **settings
        :class:`TrainingSettings` fields (``outer_folds``, ``inner_folds``, ``max_epochs``,
        ``patience``, ``lr``, ``batch_slides``, ``ae_epochs``, ``latent_dim``, ``seed``).

    Returns
    -------
    TrainingResult
        ``summary["r_scope"]`` says how R was computed: ``"pooled"`` or
        ``"within-section mean"``.

    Raises
    ------
    DeepPTError
        Before any feature work, for inputs that cannot give a right answer: unreadable or
        unmatched tables, missing slides, spots off their slide, fold settings the
        patients or sections cannot fill (:func:`check_folds`).
    """
    import pandas as pd

    out = Path(out)
    options = TrainingSettings(**settings)
    spots = _is_spot_table(manifest)
    _refuse_existing(out, overwrite, spots)
    selection = {"genes": genes, "min_mean": min_mean, "top_n": top_n, "rank_by": rank_by}
    inputs = _read_inputs(manifest, expression, options, spots, selection, transform)
    tile_px = tile_px or (224 if spots else 512)
    feature_options = _feature_options(
        extractor, weights, device, stain, cache_dir, cancel, options.seed
    )
    if spots:
        features, first = _spot_features(inputs, tile_px, tile_mpp, feature_options, progress)
        extra = {"mode": "spots", "n_slides": len(inputs.slides)}
    else:
        features, first = _bulk_features(
            inputs, tile_px, tile_mpp, min_tissue, roi_class, feature_options, progress
        )
        extra = {
            "n_patients": len(set(inputs.groups)),
            "regions_of_interest": {
                "slides_with_roi": _slides_with_roi(inputs.table),
                "roi_class": roi_class,
            },
        }
    cv = _cross_validate(
        features, inputs.targets, inputs.groups, inputs.genes, options, progress, cancel, spots
    )
    feature = {
        "extractor": extractor,
        "weights_hash": first.provenance["weights_hash"],
        "feature_dim": first.feature_dim,
        "tile_px": tile_px,
        "tile_mpp": tile_mpp,
        "min_tissue": min_tissue,
        "stain": first.provenance["stain"],
        **({"mode": "spots"} if spots else {}),
    }
    training = {
        **asdict(options),
        **extra,
        "n_samples": len(inputs.ids),
        "expression": str(expression),
        "gene_selection": {**selection, "genes": genes is not None},
    }
    bundle = _bundle(inputs.genes, transform, feature, cv, options, training, demo)
    heldout = pd.DataFrame(cv.heldout, index=inputs.ids, columns=inputs.genes)
    _write_outputs(out, bundle, cv, heldout, overwrite)
    return TrainingResult(out, cv.metrics, cv.summary, heldout, cv.per_section)


def _bundle(
    genes: list[str],
    transform: str,
    feature: dict[str, Any],
    cv: _CrossValidation,
    options: TrainingSettings,
    training: dict[str, Any],
    demo: bool,
) -> Any:
    from .models import ModelBundle

    return ModelBundle(
        genes=genes,
        transform=transform,
        feature=feature,
        autoencoder={k: v.detach().clone() for k, v in cv.autoencoder.state_dict().items()},
        ensemble=cv.states,
        latent_dim=options.latent_dim,
        training=training,
        metrics=cv.summary,
        demo=demo,
    )


@dataclass
class _Inputs:
    """Checked training inputs: nothing here has needed a pixel of any slide."""

    table: Any  # the manifest or spot table
    ids: list[str]  # sample or spot ids, in table order
    genes: list[str]
    targets: Any  # torch float32 tensor, ids × genes, transformed
    groups: np.ndarray  # patient id, or section label (spots)
    slides: dict[str, Any]  # spots: section label → opened Slide


def _read_inputs(
    manifest: Any,
    expression: Any,
    options: TrainingSettings,
    spots: bool,
    selection: dict[str, Any],
    transform: str,
) -> _Inputs:
    """Every check that needs no pixels, cheapest first: table, slides, folds, expression."""
    import pandas as pd
    import torch

    given = isinstance(manifest, pd.DataFrame)
    slides: dict[str, Any] = {}
    if spots:
        source = "the spot table" if given else manifest
        table = _check_spot_table(manifest, source) if given else read_spots(manifest)
        keys, opened = _open_spot_slides(table, source)
        labels = _section_labels(list(opened))
        groups = np.array([labels[k] for k in keys], dtype=object)
        slides = {labels[k]: slide for k, slide in opened.items()}
        ids, ids_name = list(table["spot_id"]), "spot"
    else:
        source = "the manifest" if given else manifest
        table = manifest if given else read_manifest(manifest)
        _require_slide_files(table, source)
        groups = table["patient_id"].to_numpy()
        ids, ids_name = list(table["sample_id"]), "manifest sample"
    check_folds(len(set(groups)), options, "sections" if spots else "patients", source)
    expr = read_expression(expression, ids, ids_name)
    chosen = select_genes(expr, **selection)
    values = apply_transform(expr[chosen].to_numpy(), transform, f"{expression}")
    targets = torch.tensor(values, dtype=torch.float32)
    return _Inputs(table, ids, chosen, targets, groups, slides)


def _slides_with_roi(table: Any) -> int:
    return sum(r is not None for r in table["roi"]) if "roi" in table.columns else 0


def _require_slide_files(table: Any, source: Any) -> None:
    from .errors import SlideNotFoundError

    missing = [p for p in table["slide"] if not Path(p).exists()]
    if missing:
        raise SlideNotFoundError(
            f"{source}: {len(missing)} slide(s) not found: {_few(missing)}; fix the paths "
            "(relative ones are read from the manifest's folder)"
        )
    owners: dict[Path, str] = {}
    for slide, sample in zip(table["slide"], table["sample_id"], strict=True):
        first = owners.setdefault(Path(slide).resolve(), sample)
        if first != sample:
            raise ExpressionTableError(
                f"{source}: slide {slide} is listed for samples {first} and {sample}; one "
                "image would be trained on twice and could sit in a training and a test fold "
                "at once. List each slide once."
            )


def _section_labels(keys: list[str]) -> dict[str, str]:
    """A readable label per slide (its file stem, or its path where stems repeat)."""
    stems = [Path(k).stem for k in keys]
    unique = len(set(stems)) == len(stems)
    return {k: (stem if unique else k) for k, stem in zip(keys, stems, strict=True)}


def _bulk_features(
    inputs: _Inputs,
    tile_px: int,
    tile_mpp: float,
    min_tissue: float,
    roi_class: str | None,
    feature_options: dict[str, Any],
    progress: ProgressLike,
) -> tuple[list[Any], Any]:
    """Tissue, tiles and features of every slide of a manifest: one tensor per slide."""
    import torch

    from .features import extract_features
    from .tiles import detect_and_tile

    table, cancel = inputs.table, feature_options["cancel"]
    feature_sets = []
    with make_progress(progress, len(table), "features per slide", unit="slide") as bar:
        rois = table["roi"] if "roi" in table.columns else [None] * len(table)
        for path, roi in zip(table["slide"], rois, strict=True):
            check_cancelled(cancel, "training")
            _, grid = detect_and_tile(
                path,
                tile_px=tile_px,
                mpp=tile_mpp,
                min_tissue=min_tissue,
                roi=roi,
                roi_class=roi_class if roi else None,
            )
            if len(grid) == 0:
                where = f" inside {roi}" if roi else ""
                raise DeepPTError(
                    f"{path}: no tissue tiles{where}; remove it from the manifest or adjust "
                    "min_tissue"
                )
            feature_sets.append(extract_features(path, grid, **feature_options))
            bar.update()
    features = [torch.tensor(fs.features, dtype=torch.float32) for fs in feature_sets]
    return features, feature_sets[0]


def _spot_features(
    inputs: _Inputs,
    tile_px: int,
    tile_mpp: float,
    feature_options: dict[str, Any],
    progress: ProgressLike,
) -> tuple[list[Any], Any]:
    """One tile centred on each spot, slide by slide: a ``(1, D)`` tensor per spot."""
    import torch

    from .features import extract_features

    table, cancel = inputs.table, feature_options["cancel"]
    features: list[Any] = [None] * len(table)
    first = None
    n = len(inputs.slides)
    with make_progress(progress, n, "spot features per slide", unit="slide") as bar:
        for label, slide in inputs.slides.items():
            check_cancelled(cancel, "training")
            rows = np.flatnonzero(inputs.groups == label)
            x, y = table["x"].to_numpy(float)[rows], table["y"].to_numpy(float)[rows]
            fs = extract_features(
                slide, spot_grid(slide, x, y, tile_px, tile_mpp), **feature_options
            )
            first = fs if first is None else first
            for j, row in enumerate(rows):
                features[row] = torch.tensor(fs.features[j : j + 1], dtype=torch.float32)
            bar.update()
    return features, first


def _feature_options(
    extractor: str, weights: Any, device: Any, stain: Any, cache_dir: Any, cancel: Any, seed: int
) -> dict[str, Any]:
    """The extract_features settings shared by every slide of a training run."""
    return {
        "extractor": extractor,
        "weights": weights,
        "device": device,
        "stain": stain,
        "cache_dir": cache_dir,
        "progress": False,
        "cancel": cancel,
        "seed": seed,
    }


def _is_spot_table(table: Any) -> bool:
    import pandas as pd

    if isinstance(table, pd.DataFrame):
        columns = set(table.columns)
    else:
        try:
            columns = set(pd.read_csv(table, sep=None, engine="python", nrows=1).columns)
        except Exception:
            return False
    return {"x", "y"} <= columns and "patient_id" not in columns
