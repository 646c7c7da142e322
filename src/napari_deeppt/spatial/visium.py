"""Space Ranger (Visium) output: tissue positions, scale factors, the 10x HDF5 matrix."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExpressionTableError
from ..io.tables import few
from .data import SpatialData, as_text, existing_image, make_section, optional_import, unique_names

__all__ = ["POSITION_COLUMNS", "read_visium"]

#: The columns of Space Ranger's tissue positions, in the order of the header-less old file.
POSITION_COLUMNS = (
    "barcode",
    "in_tissue",
    "array_row",
    "array_col",
    "pxl_row_in_fullres",
    "pxl_col_in_fullres",
)
_POSITION_FILES = ("tissue_positions.csv", "tissue_positions_list.csv", "tissue_positions.parquet")
_POSITION_FILES = ("tissue_positions.csv", "tissue_positions_list.csv", "tissue_positions.parquet")


def read_visium(
    folder: str | os.PathLike[str], image: str | os.PathLike[str], sample: str | None = None
) -> SpatialData:
    """A Visium section from Space Ranger's output folder and its full-resolution image.

    Parameters
    ----------
    folder
        Space Ranger's ``outs`` folder (or the folder holding it): ``spatial/`` with
        ``tissue_positions.csv`` (Space Ranger ≥ 2, with a header),
        ``tissue_positions_list.csv`` (older, no header) or ``tissue_positions.parquet``,
        optionally ``spatial/scalefactors_json.json``, and ``filtered_feature_bc_matrix.h5``
        (also found as ``<name>_filtered_feature_bc_matrix.h5``, as 10x names downloads).
    image
        The full-resolution image Space Ranger was run with (not ``tissue_hires_image.png``):
        ``pxl_col_in_fullres, pxl_row_in_fullres`` are level-0 pixels of it.
    sample
        Prefix of the spot ids (``<sample>_<barcode>``), to keep them unique across sections.

    Returns
    -------
    SpatialData
        The barcodes under tissue (``in_tissue == 1``) that the matrix holds, in the order
        of the positions file; ``x = pxl_col_in_fullres``, ``y = pxl_row_in_fullres``; the
        genes are the matrix's ``Gene Expression`` features by name, a repeated name
        suffixed ``-1``, ``-2`` … in matrix order (as ``var_names_make_unique`` in anndata),
        never summed. ``spot_diameter_px`` is ``spot_diameter_fullres`` from the scale
        factors, when that file is there.

    Raises
    ------
    ExpressionTableError
        A file missing, unreadable or without the expected columns or datasets; no barcode
        under tissue in the matrix; spots outside the image.
    SlideNotFoundError
        The image does not exist.
    """
    folder = Path(folder).expanduser()
    existing_image(image, folder)
    if not (folder / "spatial").is_dir() and (folder / "outs" / "spatial").is_dir():
        folder = folder / "outs"
    positions, positions_path = _read_positions(folder)
    barcodes, genes, matrix = _read_10x_h5(_matrix_path(folder))
    in_tissue = positions[positions["in_tissue"] == 1]
    row_of = {b: i for i, b in enumerate(barcodes)}
    kept = in_tissue[in_tissue["barcode"].isin(row_of)]
    if kept.empty:
        raise ExpressionTableError(
            f"{positions_path}: none of its {len(in_tissue)} barcodes under tissue is in the "
            f"matrix (positions {few(in_tissue['barcode'], 3)}, matrix {few(barcodes, 3)}); "
            "give the positions and the matrix of the same Space Ranger run"
        )
    rows = matrix[[row_of[b] for b in kept["barcode"]]].toarray()
    ids = list(kept["barcode"])
    spots = {"x": kept["pxl_col_in_fullres"], "y": kept["pxl_row_in_fullres"]}
    diameter = _visium_spot_diameter(folder / "spatial" / "scalefactors_json.json")
    return make_section(ids, spots, (rows, genes), image, sample, str(folder), diameter)


def _read_positions(folder: Path) -> tuple[Any, Path]:
    """Space Ranger's tissue positions, in any of its three layouts, checked."""
    import pandas as pd

    found = [folder / "spatial" / name for name in _POSITION_FILES]
    path = next((p for p in found if p.is_file()), None)
    if path is None:
        raise ExpressionTableError(
            f"{folder}: no spatial/{', spatial/'.join(_POSITION_FILES[:2])} or "
            f"spatial/{_POSITION_FILES[2]}; give Space Ranger's output folder (the one "
            "holding spatial/ and filtered_feature_bc_matrix.h5)"
        )
    try:
        if path.suffix == ".parquet":
            table = pd.read_parquet(path)
        elif path.name == "tissue_positions_list.csv":
            table = pd.read_csv(path, header=None, names=list(POSITION_COLUMNS), dtype=str)
            table = table[table["barcode"] != "barcode"]  # tolerate a header all the same
        else:
            table = pd.read_csv(path, dtype=str)
    except ImportError as exc:
        raise ExpressionTableError(
            f"{path}: reading it needs pyarrow: pip install pyarrow"
        ) from exc
    except Exception as exc:
        raise ExpressionTableError(f"{path}: not a readable tissue positions file ({exc})") from exc
    missing = [c for c in POSITION_COLUMNS if c not in table.columns]
    if missing:
        raise ExpressionTableError(
            f"{path}: lacks column(s) {missing}; Space Ranger's tissue positions have "
            f"{', '.join(POSITION_COLUMNS)}"
        )
    table = table.assign(barcode=table["barcode"].astype(str))
    numeric = ["in_tissue", "pxl_row_in_fullres", "pxl_col_in_fullres"]
    table[numeric] = table[numeric].apply(pd.to_numeric, errors="coerce")
    bad = table["barcode"][table[numeric].isna().any(axis=1)].tolist()
    if bad:
        raise ExpressionTableError(
            f"{path}: {len(bad)} row(s) have no numeric {numeric}: {few(bad)}"
        )
    return table, path


def _matrix_path(folder: Path) -> Path:
    """``filtered_feature_bc_matrix.h5``, or the one ``*_filtered_feature_bc_matrix.h5``."""
    path = folder / "filtered_feature_bc_matrix.h5"
    if path.is_file():
        return path
    named = sorted(folder.glob("*_filtered_feature_bc_matrix.h5"))
    if len(named) == 1:
        return named[0]
    also = f" (and {len(named)} *_filtered_feature_bc_matrix.h5: which one?)" if named else ""
    raise ExpressionTableError(
        f"{folder}: no filtered_feature_bc_matrix.h5{also}; give Space Ranger's output "
        "folder, with the matrix in HDF5 (the .h5 file 10x Genomics provides)"
    )


def _read_10x_h5(path: Path) -> tuple[list[str], list[str], Any]:
    """Barcodes, unique gene names and the barcodes × genes counts (scipy CSR) of a 10x
    feature-barcode matrix in HDF5 (Cell/Space Ranger ≥ 3 layout), ``Gene Expression`` only."""
    import scipy.sparse

    h5py = optional_import(path, "h5py")
    names = ("barcodes", "data", "indices", "indptr", "shape", "features/name")
    try:
        with h5py.File(path, "r") as f:
            absent = [f"matrix/{n}" for n in names if f"matrix/{n}" not in f]
            if absent:
                raise ExpressionTableError(
                    f"{path}: lacks {', '.join(absent)}; it is not a 10x feature-barcode "
                    "matrix in the Cell/Space Ranger ≥ 3 HDF5 layout"
                )
            m = f["matrix"]
            barcodes = [as_text(b) for b in m["barcodes"][:]]
            genes = [as_text(g) for g in m["features/name"][:]]
            kinds = m["features/feature_type"][:] if "feature_type" in m["features"] else None
            n_features, n_barcodes = (int(n) for n in m["shape"][:])
            matrix = scipy.sparse.csc_matrix(
                (m["data"][:], m["indices"][:], m["indptr"][:]), shape=(n_features, n_barcodes)
            )
    except ExpressionTableError:
        raise
    except Exception as exc:
        raise ExpressionTableError(f"{path}: not a readable 10x HDF5 matrix ({exc})") from exc
    keep = (
        np.ones(len(genes), bool)
        if kinds is None
        else np.array([as_text(k) == "Gene Expression" for k in kinds])
    )
    if len(genes) != n_features or len(barcodes) != n_barcodes or not keep.any():
        raise ExpressionTableError(
            f"{path}: {len(genes)} feature names and {len(barcodes)} barcodes for a matrix "
            f"of shape {n_features} × {n_barcodes}, {int(keep.sum())} of them genes; the file "
            "is damaged or not a gene-expression matrix"
        )
    matrix = matrix[np.flatnonzero(keep)].T.tocsr()
    return barcodes, unique_names([g for g, k in zip(genes, keep) if k]), matrix


def _visium_spot_diameter(path: Path) -> float | None:
    """``spot_diameter_fullres`` of Space Ranger's scale factors; None without the file."""
    if not path.is_file():
        return None
    try:
        factors = json.loads(path.read_text(encoding="utf-8"))
        diameter = factors.get("spot_diameter_fullres")
    except Exception as exc:
        raise ExpressionTableError(f"{path}: not a readable scale factors JSON ({exc})") from exc
    return None if diameter is None else float(diameter)
