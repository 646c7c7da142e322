"""Held-out metrics: per-gene Pearson R, its p-value and the Holm–Šidák correction.

Bulk slides pool R over all held-out samples (DeepPT); spots compute R within each section
and average it (:func:`section_metrics`), because pooling sections mixes in each section's
offset.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "gene_metrics",
    "holm_sidak",
    "pearson_columns",
    "section_metrics",
    "summarise",
    "validation_r",
]


def pearson_columns(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Pearson R of each column (gene) across rows (samples).

    Parameters
    ----------
    pred, truth
        ``(n_samples, n_genes)`` arrays.

    Returns
    -------
    numpy.ndarray
        ``(n_genes,)`` R; NaN where either column is constant.
    """
    p = pred - pred.mean(axis=0)
    t = truth - truth.mean(axis=0)
    denom = np.sqrt((p**2).sum(axis=0) * (t**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (p * t).sum(axis=0) / denom, np.nan)


def holm_sidak(pvalues: np.ndarray) -> np.ndarray:
    """Holm–Šidák step-down adjusted p-values.

    Parameters
    ----------
    pvalues
        Raw p-values; NaN (untestable genes) are left out of the family and stay NaN.

    Returns
    -------
    numpy.ndarray
        Adjusted p-values, same shape: the running maximum over the ascending p of
        ``1 − (1 − p_(i))^(m − i)``, capped at 1.
    """
    p = np.asarray(pvalues, float)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    order = np.argsort(p[ok])
    ranked = p[ok][order]
    step = 1.0 - (1.0 - ranked) ** (len(ranked) - np.arange(len(ranked)))
    adjusted = np.empty_like(ranked)
    adjusted[order] = np.minimum(np.maximum.accumulate(step), 1.0)
    out[ok] = adjusted
    return out


def gene_metrics(pred: np.ndarray, truth: np.ndarray, genes: list[str], alpha: float = 0.05) -> Any:
    """Per-gene Pearson R pooled over all samples, two-sided p, Holm–Šidák p, significance.

    DeepPT's metric for bulk slides; spot models use :func:`section_metrics` instead.

    Parameters
    ----------
    pred, truth
        ``(n_samples, n_genes)`` held-out predictions and measured (transformed) expression.
    genes
        Gene names (columns).
    alpha
        Significance level after Holm–Šidák correction.

    Returns
    -------
    pandas.DataFrame
        One row per gene: ``pearson_r``, ``p_value`` (t-test of R = 0), ``p_holm_sidak`` and
        ``significant`` (adjusted p < alpha and R > 0).
    """
    from scipy import stats

    r = pearson_columns(pred, truth)
    n = pred.shape[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        t = r * np.sqrt((n - 2) / np.clip(1 - r**2, 1e-12, None))
    p = 2 * stats.t.sf(np.abs(t), df=max(n - 2, 1))
    return _table(genes, r, np.where(np.isnan(r), np.nan, p), alpha)


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
    metrics = _table(
        genes, mean_r, p, alpha, n_sections=ok.sum(axis=1), r_scope="within-section mean"
    )
    per_section = pd.DataFrame(r, index=pd.Index(genes, name="gene"), columns=names)
    return metrics, per_section


def _table(genes: list[str], r: np.ndarray, p: np.ndarray, alpha: float, **more: Any) -> Any:
    """Per-gene R and p with the Holm–Šidák p and significance (adjusted p < alpha, R > 0)."""
    import pandas as pd

    adjusted = holm_sidak(p)
    columns = {"pearson_r": r, "p_value": p, "p_holm_sidak": adjusted}
    significant = (adjusted < alpha) & (r > 0)
    table = pd.DataFrame({"gene": genes, **columns, "significant": significant, **more})
    return table.set_index("gene")


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


def validation_r(pred: Any, truth: Any, sections: Any = None) -> float:
    """Early-stopping score: the mean Pearson R over genes.

    Parameters
    ----------
    pred, truth
        ``(n_samples, n_genes)`` validation predictions and targets.
    sections
        None for bulk slides (R pooled over samples, as DeepPT), or each spot's section
        (R within each section).

    Returns
    -------
    float
        The mean of the finite R, or NaN when there is none.
    """
    if sections is None:
        r = pearson_columns(np.asarray(pred, np.float64), np.asarray(truth, np.float64))
    else:
        r = _section_r(pred, truth, sections)[1]
    return float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")


def summarise(metrics: Any, r_scope: str = "pooled") -> dict[str, Any]:
    """Headline numbers of per-gene metrics.

    Parameters
    ----------
    metrics
        :func:`gene_metrics` or :func:`section_metrics` table.
    r_scope
        How R was computed (``"pooled"`` or ``"within-section mean"``), recorded as is.

    Returns
    -------
    dict
        ``genes``, ``significant``, ``r_above_0.4``, ``median_r_top_1000``, ``median_r`` and
        ``r_scope``.
    """
    r = metrics["pearson_r"].dropna().sort_values(ascending=False)
    return {
        "genes": len(metrics),
        "significant": int(metrics["significant"].sum()),
        "r_above_0.4": int((r > 0.4).sum()),
        "median_r_top_1000": float(r.iloc[:1000].median()) if len(r) else float("nan"),
        "median_r": float(r.median()) if len(r) else float("nan"),
        "r_scope": r_scope,
    }
