"""Legacy ST (Ståhl et al. 2016): counts by grid position ``XxY`` and a spot selection."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..errors import ExpressionTableError
from ..io.tables import few
from .data import SpatialData, existing_image, make_section, unique_names

__all__ = ["read_legacy_st"]

_GRID_ID = re.compile(r"^\d+(\.\d+)?x\d+(\.\d+)?$")  # legacy ST spot ids: "12x7"


def read_legacy_st(
    counts: str | os.PathLike[str],
    spots: str | os.PathLike[str],
    image: str | os.PathLike[str],
    sample: str | None = None,
) -> SpatialData:
    """A legacy ST section (Ståhl et al. 2016): counts by grid position and spot selection.

    Parameters
    ----------
    counts
        Tab-separated counts whose spot ids are grid positions ``XxY`` (``12x7``), spots ×
        genes or genes × spots (the axis of ``XxY`` names is the spots).
    spots
        The spot-selection table (tab-separated, header ``x y new_x new_y pixel_x pixel_y
        selected``): ``x, y`` the grid position, ``pixel_x, pixel_y`` the spot centre in
        level-0 pixels of ``image``.
    image
        The H&E image the pixel coordinates refer to.
    sample
        Prefix of the spot ids (``<sample>_<XxY>``), to keep them unique across sections.

    Returns
    -------
    SpatialData
        The selected spots (``selected == 1`` when the column exists) that have counts,
        joined on ``f"{x}x{y}"``, in the order of the selection table.

    Raises
    ------
    ExpressionTableError
        A file missing or unreadable, columns missing, non-numeric counts, no selected spot
        with counts, spots off the image.
    """
    import pandas as pd

    counts_path, spots_path = Path(counts).expanduser(), Path(spots).expanduser()
    existing_image(image, counts_path)
    table = _read_tsv(counts_path, "counts", index_col=0)
    table.index, table.columns = table.index.astype(str), table.columns.astype(str)
    by_rows = sum(bool(_GRID_ID.match(i)) for i in table.index)
    if sum(bool(_GRID_ID.match(c)) for c in table.columns) > by_rows:
        table = table.T  # genes × spots → spots × genes
    text = [c for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])]
    if text:
        raise ExpressionTableError(f"{counts_path}: non-numeric counts for gene(s) {few(text)}")
    selection = _read_tsv(spots_path, "spot selection")
    missing = [c for c in ("x", "y", "pixel_x", "pixel_y") if c not in selection.columns]
    if missing:
        raise ExpressionTableError(
            f"{spots_path}: lacks column(s) {missing}; a spot selection table has x y new_x "
            "new_y pixel_x pixel_y selected (tab-separated)"
        )
    if "selected" in selection.columns:
        selection = selection[pd.to_numeric(selection["selected"], errors="coerce") == 1]
    keys = pd.Series([f"{_grid(x)}x{_grid(y)}" for x, y in zip(selection["x"], selection["y"])])
    kept = (keys.isin(set(table.index)) & ~keys.duplicated(keep=False)).to_numpy()
    if not kept.any():
        raise ExpressionTableError(
            f"{spots_path}: none of its {len(keys)} selected spots {few(keys, 3)} names a row "
            f"of {counts_path} (its spots are {few(table.index, 3)}); the counts' spot ids "
            "must be the grid positions x, y of the selection table as XxY"
        )
    ids = list(keys[kept])
    xy = {"x": selection["pixel_x"][kept], "y": selection["pixel_y"][kept]}
    values = table.loc[ids].to_numpy()
    source = f"{counts_path} + {spots_path}"
    return make_section(ids, xy, (values, unique_names(list(table.columns))), image, sample, source)


def _read_tsv(path: Path, what: str, **options: Any) -> Any:
    """A tab-separated table, or a one-line refusal naming it."""
    import pandas as pd

    if not path.is_file():
        raise ExpressionTableError(f"{path}: no such {what} file")
    try:
        return pd.read_csv(path, sep="\t", **options)
    except Exception as exc:
        raise ExpressionTableError(f"{path}: not a readable {what} table ({exc})") from exc


def _grid(value: Any) -> str:
    """A grid coordinate as written in ``XxY`` ids: ``12`` for 12 and 12.0."""
    number = float(value)
    return str(int(number)) if number.is_integer() else str(number)
