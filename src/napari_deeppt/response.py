"""Treatment response from predicted expression: a SELECT-style matching score.

ENLIGHT (Dinstag et al., Med 2023) scores a drug by how a tumour's expression matches the
drug's genetic-interaction partners; its partner lists and exact formula are not public, so
the user supplies the partners, and this module follows its published predecessor SELECT
(Lee et al., Cell 2021):

- a partner gene is *inactive* in a sample when its expression is below the cohort's 33rd
  percentile (``quantile``);
- SL score = fraction of the drug's synthetic-lethal partners that are inactive (more
  predict response); SR score = fraction of its synthetic-rescue partners that are inactive
  (more predict resistance);
- matching score = mean of the available parts among (SL score, 1 − SR score), in [0, 1];
  a sample is a predicted responder when the score ≥ ``threshold`` (0.54, the ENLIGHT–DeepPT
  cut-off).

This approximates ENLIGHT; it is not ENLIGHT.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ExpressionTableError

__all__ = [
    "ResponseParams",
    "ResponseResult",
    "read_partners",
    "response_scores",
    "tile_response",
]


@dataclass(frozen=True)
class ResponseParams:
    """How matching scores are cut (the defaults of :func:`response_scores`).

    Attributes
    ----------
    quantile
        A partner gene is inactive in a sample when its predicted expression is below this
        quantile of the cohort (SELECT: the 33rd percentile).
    threshold
        A sample whose matching score is at least this is a predicted responder (0.54, the
        ENLIGHT–DeepPT cut-off of Hoang et al. 2024).
    """

    quantile: float = 0.33
    threshold: float = 0.54


_TYPES = {
    "sl": "SL",
    "synthetic lethal": "SL",
    "synthetic_lethal": "SL",
    "sr": "SR",
    "synthetic rescue": "SR",
    "synthetic_rescue": "SR",
}


def read_partners(partners: Any) -> Any:
    """Read and check a drug partner table.

    Parameters
    ----------
    partners
        A CSV/TSV path or a DataFrame with columns ``drug``, ``partner`` (a gene; also
        ``gene``, ``partner_gene``) and ``type`` (SL or SR; also ``interaction``), any case.

    Returns
    -------
    pandas.DataFrame
        ``drug``, ``partner``, ``type`` (``"SL"``/``"SR"``), duplicates dropped; an
        ``ExpressionTableError`` naming the file for a table that is not one.
    """
    import pandas as pd

    from .io.tables import read_delimited

    where = "the partner table"
    if not isinstance(partners, pd.DataFrame):
        where = str(partners)
        try:
            partners = read_delimited(partners, dtype=str, encoding="utf-8-sig")
        except Exception as exc:
            raise ExpressionTableError(f"{where}: not a readable partner table ({exc})") from exc
    table = partners.rename(columns={c: c.strip().lower() for c in partners.columns})
    table = table.rename(
        columns={
            "gene": "partner",
            "partner_gene": "partner",
            "interaction": "type",
            "interaction_type": "type",
        }
    )
    missing = [c for c in ("drug", "partner", "type") if c not in table.columns]
    if missing:
        raise ExpressionTableError(
            f"{where}: lacks column(s) {missing}; it needs drug, partner (gene) and type (SL or SR)"
        )
    blank = table[["drug", "partner", "type"]].isna() | (
        table[["drug", "partner", "type"]].astype(str).apply(lambda c: c.str.strip()) == ""
    )
    if blank.any().any():
        rows = [i + 2 for i in range(len(table)) if blank.iloc[i].any()]  # + header line
        raise ExpressionTableError(f"{where}: line(s) {rows[:5]} lack a drug, partner or type")
    if table.empty:
        raise ExpressionTableError(f"{where}: no drugs listed")
    kinds = table["type"].astype(str).str.strip().str.lower().map(_TYPES)
    if kinds.isna().any():
        bad = table.loc[kinds.isna(), "type"].unique().tolist()
        raise ExpressionTableError(
            f"{where}: unknown interaction type(s) {bad}; use SL "
            "(synthetic lethal) or SR (synthetic rescue)"
        )
    table = table.assign(
        type=kinds,
        drug=table["drug"].astype(str).str.strip(),
        partner=table["partner"].astype(str).str.strip(),
    )
    return table[["drug", "partner", "type"]].drop_duplicates().reset_index(drop=True)


@dataclass(repr=False)
class ResponseResult:
    """Scores of every sample for every drug.

    Attributes
    ----------
    scores
        samples × drugs matching scores in [0, 1] (NaN for a drug with no usable partner).
    sl_score, sr_score
        samples × drugs fractions of inactive SL / SR partners (NaN when a drug has none).
    responders
        samples × drugs, ``scores ≥ threshold`` (False where the score is NaN).
    missing_partners
        drug → partner genes absent from the expression (reported, not silently dropped).
    messages
        One line per drug that could not be scored, and why.
    """

    scores: Any
    sl_score: Any
    sr_score: Any
    responders: Any
    threshold: float
    quantile: float
    missing_partners: dict[str, list[str]] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        n, drugs = self.scores.shape
        responders = int(self.responders.to_numpy().sum())
        return (
            f"ResponseResult({n} samples × {drugs} drugs, {responders} predicted responses "
            f"at score ≥ {self.threshold}, inactive below quantile {self.quantile})"
        )

    def to_csv(self, path: str | Path, overwrite: bool = False) -> Path:
        """samples × drugs matching scores."""
        from .io import atomic_path

        with atomic_path(path, overwrite=overwrite) as tmp:
            self.scores.to_csv(tmp, float_format="%.4f")
        return Path(path)

    def long_table(self) -> Any:
        """One row per sample and drug: score, SL/SR parts, responder."""
        import pandas as pd

        parts = {
            "score": self.scores,
            "sl_score": self.sl_score,
            "sr_score": self.sr_score,
            "responder": self.responders,
        }
        frames = [frame.stack(future_stack=True).rename(name) for name, frame in parts.items()]
        table = pd.concat(frames, axis=1)
        table.index.names = ["sample", "drug"]
        return table.reset_index()


def response_scores(
    expression: Any,
    partners: Any,
    quantile: float = ResponseParams.quantile,
    threshold: float = ResponseParams.threshold,
    reference: Any = None,
) -> ResponseResult:
    """Matching scores of a cohort's samples for every drug in the partner table.

    Parameters
    ----------
    expression
        samples × genes predicted expression (DataFrame, or a CSV with samples as rows or
        columns); the cohort defines what "low" means, so pass all samples together.
    partners
        Partner table (see :func:`read_partners`).
    quantile
        Inactivity cut-off as a cohort quantile (SELECT: 0.33).
    threshold
        Responder cut-off on the matching score (ENLIGHT–DeepPT: 0.54).
    reference
        Another samples × genes table whose quantiles define "inactive" instead of
        ``expression``'s own (e.g. a cohort, to score the tiles of one slide: see
        :func:`tile_response`).
    """
    import pandas as pd

    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    table = read_partners(partners)
    expr = _read_expression(expression, set(table["partner"]))
    cohort = expr if reference is None else _read_expression(reference, set(table["partner"]))
    if len(cohort) < 3:
        raise ExpressionTableError(
            f"the cohort has {len(cohort)} sample(s); cohort percentiles need at least 3"
        )
    missing_in_cohort = sorted(set(expr.columns) - set(cohort.columns))
    if missing_in_cohort:
        raise ExpressionTableError(
            f"gene(s) {missing_in_cohort[:5]} are predicted here but not in the cohort: "
            "the cohort must come from the same model"
        )
    cutoff = cohort[list(expr.columns)].quantile(quantile, axis=0)
    inactive = expr.lt(cutoff, axis=1)
    drugs = list(dict.fromkeys(table["drug"]))
    sl = pd.DataFrame(np.nan, index=expr.index, columns=drugs)
    sr = pd.DataFrame(np.nan, index=expr.index, columns=drugs)
    missing: dict[str, list[str]] = {}
    messages: list[str] = []
    for drug in drugs:
        rows = table[table["drug"] == drug]
        absent = sorted(set(rows["partner"]) - set(expr.columns))
        if absent:
            missing[drug] = absent
        usable = rows[rows["partner"].isin(expr.columns)]
        for kind, frame in (("SL", sl), ("SR", sr)):
            genes = usable.loc[usable["type"] == kind, "partner"].tolist()
            if genes:
                frame[drug] = inactive[genes].mean(axis=1)
        if usable.empty:
            messages.append(
                f"{drug}: no score — none of its {len(rows)} partner(s) "
                f"({', '.join(sorted(rows['partner'])[:6])}) is among the "
                "predicted genes"
            )
    parts = np.stack([sl.to_numpy(float), 1.0 - sr.to_numpy(float)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a drug with no part: NaN
        matching = pd.DataFrame(np.nanmean(parts, axis=0), index=expr.index, columns=drugs)
    responders = matching.ge(threshold) & matching.notna()
    return ResponseResult(matching, sl, sr, responders, threshold, quantile, missing, messages)


def _read_expression(expression: Any, partner_genes: set[str]) -> Any:
    """Samples × genes as float64; the partner genes' values must be numbers, samples and
    genes named once (a table's other genes are not used and not checked)."""
    import pandas as pd

    from .io.tables import expression_frame, few, numeric_values

    if isinstance(expression, pd.Series):
        raise ExpressionTableError(
            "response scores need a cohort (samples × genes), not one "
            "sample: cohort percentiles define 'inactive'"
        )
    table, name = expression_frame(expression)
    table.index = table.index.astype(str)
    table.columns = table.columns.astype(str)
    if len(partner_genes & set(table.index)) > len(partner_genes & set(table.columns)):
        table = table.T
    used = [g for g in table.columns if g in partner_genes]
    for axis, what in ((table.index, "sample"), (table.columns[table.columns.isin(used)], "gene")):
        repeated = axis[axis.duplicated()].unique()
        if len(repeated):
            raise ExpressionTableError(f"{name}: {what}(s) {few(repeated)} appear more than once")
    used = list(dict.fromkeys(used))
    if not used:
        raise ExpressionTableError(
            f"{name}: no partner gene of the drugs is a gene of the table (its genes "
            f"{few(table.columns)}; the partners {few(sorted(partner_genes))})"
        )
    return numeric_values(name, table[used])


def tile_response(
    prediction: Any,
    cohort: Any,
    partners: Any,
    quantile: float = ResponseParams.quantile,
    threshold: float = ResponseParams.threshold,
) -> ResponseResult:
    """Matching scores of each tile of one slide, against its cohort's cut-offs.

    A spatial view of :func:`response_scores`: each tile's predicted expression is compared
    with the cohort's slide-level quantiles, so the map shows which regions push the slide's
    score up or down. Tile predictions spread more than slide averages, so tile scores are
    exploratory; the slide's own score is the one to report.

    Parameters
    ----------
    prediction
        A :class:`~napari_deeppt.prediction.Prediction` (its ``tile_expression``).
    cohort
        samples × genes slide-level predictions of the cohort (DataFrame or CSV), same model.
    partners, quantile, threshold
        As for :func:`response_scores`.

    Returns
    -------
    ResponseResult
        Rows are tiles, in the order of ``prediction.grid``.
    """
    import pandas as pd

    from .errors import InputTypeError

    if not hasattr(prediction, "tile_expression"):
        raise InputTypeError(
            f"tile_response needs a Prediction (dp.predict's result), not "
            f"{type(prediction).__name__}"
        )
    table = read_partners(partners)
    wanted = set(table["partner"])
    columns = [i for i, gene in enumerate(prediction.genes) if gene in wanted]
    if not columns:  # nothing to score: response_scores says so
        columns = list(range(min(1, len(prediction.genes))))
    # only the partner genes: tiles × all genes can be gigabytes
    tiles = pd.DataFrame(
        np.asarray(prediction.tile_expression)[:, columns],
        index=[f"tile{i}" for i in range(len(prediction.grid))],
        columns=[prediction.genes[i] for i in columns],
    )
    return response_scores(tiles, table, quantile, threshold, reference=cohort)
