"""The tables training and cohort runs read: manifests, expression matrices, spot tables.

Every reader checks what it can without a pixel of any slide and refuses a table that could
give a wrong answer in one line naming the file, the problem and the fix
(:class:`~napari_deeppt.errors.ExpressionTableError`). Relative paths in a table are read
from the table's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExpressionTableError
from .files import as_path

#: Cell text pandas reads as missing by default (labels are read as written).
_MISSING_TEXT = [
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
]  # fmt: skip

__all__ = [
    "check_spot_table",
    "describe_source",
    "expression_frame",
    "few",
    "numeric_values",
    "read_delimited",
    "read_expression",
    "read_manifest",
    "read_spots",
]


def read_delimited(path: Any, **options: Any) -> Any:
    """A delimited table (delimiter sniffed) whose columns are where its header puts them.

    Rows one field longer than the header are either a trailing delimiter (the extra last
    field empty in every row: dropped) or R's ``write.table`` row names (the first field:
    dropped); pandas alone would shift the columns in the first case.

    Parameters
    ----------
    path
        The file.
    **options
        More :func:`pandas.read_csv` options (``dtype``, ``encoding`` ...).

    Returns
    -------
    pandas.DataFrame
        With a default index.
    """
    import pandas as pd

    table = pd.read_csv(path, sep=None, engine="python", **options)
    if isinstance(table.index, pd.RangeIndex):
        return table
    last = table[table.columns[-1]]
    if (last.isna() | (last.astype(str).str.strip() == "")).all():  # "a,b,c," rows
        return pd.read_csv(path, sep=None, engine="python", index_col=False, **options)
    return table.reset_index(drop=True)


def read_manifest(path: str | Path, require_patient: bool = True) -> Any:
    """A cohort manifest CSV: ``slide``, ``sample_id``, ``patient_id`` (+ optional columns).

    Parameters
    ----------
    path
        The CSV (any delimiter). Relative slide paths are resolved against its folder.
    require_patient
        False for prediction runs: a missing ``patient_id`` column is the sample id.

    Returns
    -------
    pandas.DataFrame
        One row per sample, slide paths resolved. An optional ``roi`` column names a
        GeoJSON of regions of interest per slide (QuPath annotations; empty = the whole
        tissue), resolved the same way, as is an optional ``features`` column naming each
        slide's feature store (zarr) made before.

    Raises
    ------
    ExpressionTableError
        Unreadable, a required column missing, duplicated sample ids, a row without a
        slide, or a named roi file absent.
    """

    path = as_path(path, "the manifest must be a CSV file path or a DataFrame")
    try:
        table = read_delimited(  # ids as written ("NA" is an id), Excel's BOM ignored
            path, dtype=str, keep_default_na=False, encoding="utf-8-sig"
        )
    except Exception as exc:
        raise ExpressionTableError(f"{path}: not a readable manifest CSV ({exc})") from exc
    if not require_patient and "patient_id" not in table.columns and "sample_id" in table:
        table["patient_id"] = table["sample_id"]
    needed = ["slide", "sample_id"] + (["patient_id"] if require_patient else [])
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ExpressionTableError(
            f"{path}: the manifest lacks column(s) {missing}; it needs {', '.join(needed)}"
        )
    for column in ("sample_id", "patient_id"):
        table[column] = table[column].str.strip()
        empty = [i + 2 for i, value in enumerate(table[column]) if not value]  # + header
        if empty:
            raise ExpressionTableError(f"{path}: line(s) {empty[:5]} have no {column}")
    duplicated = table["sample_id"][table["sample_id"].duplicated()].tolist()
    if duplicated:
        raise ExpressionTableError(f"{path}: duplicated sample_id(s) {duplicated[:5]}")
    table["slide"] = _relative_to(path, table["slide"])
    _require_slides(path, table)
    if "features" in table.columns:  # feature stores made before; checked by training
        table["features"] = _relative_to(path, table["features"])
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


def read_expression(source: Any, sample_ids: list[str], ids_name: str = "manifest sample") -> Any:
    """Expression as samples × genes, from a file or from a table in memory.

    Parameters
    ----------
    source
        A CSV/TSV or ``.h5ad`` path, a pandas DataFrame, or an AnnData (observations ×
        variables, e.g. a scanpy user's ``adata``; sparse ``X`` is densified): samples ×
        genes or genes × samples.
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
    exactly once, genes unique and values numeric. Messages name the file, or say what was
    given (``the expression DataFrame``, ``the AnnData (40 × 8)``).
    """
    table, path = expression_frame(source)
    table.index = table.index.astype(str)
    table.columns = table.columns.astype(str)
    wanted = set(sample_ids)
    in_rows, in_columns = len(wanted & set(table.index)), len(wanted & set(table.columns))
    if in_rows == in_columns == 0:
        raise ExpressionTableError(
            f"{path}: none of the {len(sample_ids)} {ids_name}s {few(sample_ids)} names a row "
            f"or a column of the table; its rows are {few(table.index)} and its columns "
            f"{few(table.columns)}; give the table one row or column per {ids_name} id"
        )
    if in_columns > in_rows:
        table = table.T  # genes × samples → samples × genes
    present = set(table.index)
    absent = [s for s in sample_ids if s not in present]
    if absent:
        raise ExpressionTableError(
            f"{path}: {len(absent)} {ids_name}(s) have no expression: {few(absent, 8)}"
            f" (the table's {len(table.index)} samples are {few(table.index)}; its genes "
            f"{few(table.columns, 3)})"
        )
    repeated = table.index[table.index.duplicated() & table.index.isin(wanted)].unique()
    if len(repeated):
        raise ExpressionTableError(
            f"{path}: {ids_name}(s) {few(repeated, 8)} appear more than once in the table; "
            "keep one row (or column) of expression per sample"
        )
    duplicated = table.columns[table.columns.duplicated()].unique().tolist()
    if duplicated:
        raise ExpressionTableError(f"{path}: duplicated gene(s) {duplicated[:8]}")
    return numeric_values(path, table.loc[list(sample_ids)])


def numeric_values(path: Any, table: Any) -> Any:
    """The table as float64, refusing text, missing and infinite values (named).

    Parameters
    ----------
    path
        The table's name in messages (a path, or what :func:`describe_source` says).
    table
        Samples × genes.
    """
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


def _is_anndata(value: Any) -> bool:
    """Whether ``value`` looks like an AnnData (duck-typed: anndata is imported lazily)."""
    return all(hasattr(value, name) for name in ("X", "obs_names", "var_names"))


def _anndata_frame(adata: Any) -> Any:
    """An AnnData's ``X`` as a DataFrame, observations × variables (sparse densified)."""
    import pandas as pd

    values = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    return pd.DataFrame(values, index=list(adata.obs_names), columns=list(adata.var_names))


def describe_source(source: Any) -> str:
    """How an expression source is named in messages and records: the file's path, or what
    was given in memory (``the expression DataFrame (8 × 40)``, ``the AnnData (40 × 8)``).

    Parameters
    ----------
    source
        A path, a pandas DataFrame or an AnnData (anything else: its ``str``).

    Returns
    -------
    str
    """
    import pandas as pd

    if isinstance(source, pd.DataFrame):
        return f"the expression DataFrame ({source.shape[0]} × {source.shape[1]})"
    if _is_anndata(source):
        return f"the AnnData ({source.n_obs} × {source.n_vars})"
    return str(source)


def expression_frame(source: Any) -> tuple[Any, Any]:
    """The table behind ``source`` (a copy, never the caller's object) and its name.

    Parameters
    ----------
    source
        A CSV/TSV or ``.h5ad`` path (labels read as written), a DataFrame or an AnnData.

    Returns
    -------
    tuple
        The table (either orientation, values not yet checked) and the name messages use.
    """
    import pandas as pd

    name = describe_source(source)
    if isinstance(source, pd.DataFrame):
        return source.copy(), name
    if _is_anndata(source):
        return _anndata_frame(source), name
    if not isinstance(source, (str, Path)):
        raise ExpressionTableError(
            f"the expression must be a file path, a pandas DataFrame or an AnnData, "
            f"not {type(source).__name__}"
        )
    return _read_table_file(Path(source)), Path(source)


def _read_table_file(path: Path) -> Any:
    """An expression file as a DataFrame with its labels, any orientation."""
    import pandas as pd

    if not path.exists():
        raise ExpressionTableError(f"{path}: no such expression file")
    try:
        if path.suffix == ".h5ad":
            import anndata

            return _anndata_frame(anndata.read_h5ad(path))
        text = {"sep": None, "engine": "python", "dtype": str, "keep_default_na": False}
        text["encoding"] = "utf-8-sig"  # labels as written: "001" stays "001", "NA" a name
        header = pd.read_csv(path, header=None, nrows=1, **text).iloc[0].tolist()
        rows = pd.read_csv(path, header=None, skiprows=1, **text)
    except Exception as exc:
        with open(path, "rb") as fh:
            lines = sum(1 for line in fh if line.strip())
        why = "a header and no values" if lines == 1 else str(exc)
        raise ExpressionTableError(f"{path}: not a readable expression table ({why})") from exc
    if len(header) == rows.shape[1] - 1:  # R's write.table: no header cell for row names
        header = ["", *header]
    last = rows.iloc[:, -1].str.strip() == ""
    if len(header) == rows.shape[1] > 2 and not str(header[-1]).strip() and last.all():
        header, rows = header[:-1], rows.iloc[:, :-1]  # "a,b,c," lines: a trailing delimiter
    if len(header) != rows.shape[1] or rows.shape[0] < 1 or rows.shape[1] < 2:
        raise ExpressionTableError(
            f"{path}: no expression values, or a header of {len(header)} fields over rows of "
            f"{rows.shape[1]}"
        )
    columns = [str(name).strip() for name in header[1:]]
    unnamed = [i + 2 for i, name in enumerate(columns) if not name]
    if unnamed:
        raise ExpressionTableError(f"{path}: column(s) {unnamed[:5]} have no name in the header")
    values = rows.iloc[:, 1:].replace(_MISSING_TEXT, np.nan)  # empty cells, "NA": missing
    names = [str(name).strip() for name in rows.iloc[:, 0]]
    return pd.DataFrame(values.to_numpy(), index=names, columns=columns)


def few(names: Any, k: int = 5) -> str:
    """The first ``k`` names as a list, with … when there are more: for messages.

    Parameters
    ----------
    names
        Any iterable of names.
    k
        How many to show.

    Returns
    -------
    str
        E.g. ``"['a', 'b', …]"``.
    """
    names = list(names)
    return str(names[:k])[:-1] + (", …]" if len(names) > k else "]")


def read_spots(path: str | Path) -> Any:
    """A spot table CSV: ``slide``, ``x``, ``y`` (level-0 px), optional ``spot_id``.

    Parameters
    ----------
    path
        The CSV. ``x, y`` are the spot's centre in level-0 pixels of its slide; relative
        slide paths are resolved against the table's folder.

    Returns
    -------
    pandas.DataFrame
        One row per spot, with ``spot_id`` (made from the slide's stem and the row when
        absent) and numeric ``x, y``.

    Raises
    ------
    ExpressionTableError
        Rows without a slide, duplicated spot ids and coordinates that are missing or not
        numbers, naming the spots.

    Notes
    -----
    Whether a centre lies on its slide is checked when
    :func:`~napari_deeppt.model.training.train` opens the slides (before any feature
    work): a spot centred off its slide is refused. A spot near the edge keeps its tile
    centred on it, never shifted; the part of the tile beyond the slide reads as white
    (255) glass, as :meth:`~napari_deeppt.slide.Slide.read_region` pads.
    """

    path = as_path(path, "the spot table must be a file path or a DataFrame")
    try:
        table = read_delimited(path, encoding="utf-8-sig")
    except Exception as exc:
        raise ExpressionTableError(f"{path}: not a readable spot table ({exc})") from exc
    table = check_spot_table(table, path)
    table["slide"] = _relative_to(path, table["slide"])
    _require_slides(path, table)
    return table.reset_index(drop=True)


def check_spot_table(table: Any, source: Any) -> Any:
    """Check a spot table's columns, spot ids and coordinates.

    Parameters
    ----------
    table
        A DataFrame with ``slide, x, y`` and optionally ``spot_id``.
    source
        What the table is (its path, or "the spot table"), named first in messages.

    Returns
    -------
    pandas.DataFrame
        A copy with string ``spot_id`` (made when absent) and numeric ``x, y``.
    """
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
            f"{source}: {len(bad)} spot(s) have no numeric x, y (level-0 pixels): {few(bad)}"
        )
    return table
