"""Measured spots of one slide against a tile map: the tile under each spot, and Pearson R.

:func:`read_measured` reads the spots and counts of one slide from whichever layout the user
has (a Visium ``outs`` folder, a HEST-1k ``.h5ad``, or a spot table CSV with a counts table);
:func:`compare_at_spots` gives each spot the value of the kept tile whose square contains its
centre and correlates the measured log2(count + 1) with it. Plain arrays only: this package
sits below tiles and prediction, and
:func:`napari_deeppt.evaluation.measured_vs_predicted` applies it to a ``Prediction``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExpressionTableError
from ..io.tables import few, read_delimited
from .data import SpatialData, _require_on_image

__all__ = [
    "SpotComparison",
    "compare_at_spots",
    "log2_counts",
    "pearson",
    "read_measured",
    "tiles_under",
]

#: Suffixes of a spot table (with its counts given apart).
_TABLE_SUFFIXES = (".csv", ".tsv", ".txt")


@dataclass(frozen=True, eq=False)
class SpotComparison:
    """One gene at the spots of one section: measured, predicted and their correlation.

    Attributes
    ----------
    gene
        The gene compared.
    spot_ids
        The spots, in the order of the spot table.
    x, y
        Spot centres in level-0 pixels (continuous: pixel ``i`` covers ``[i, i + 1)``).
    counts
        The measured counts as read.
    measured
        ``log2(counts + 1)``.
    tile
        Index of the kept tile under each spot (row of the prediction), -1 where none is.
    predicted
        The tile's predicted value at each spot; NaN where no kept tile covers it.
    r
        Pearson R between ``measured`` and ``predicted`` over the covered spots; NaN when
        fewer than two spots are covered or either side is constant.
    n
        How many spots R is computed over (those a kept tile covers).
    """

    gene: str
    spot_ids: list[str]
    x: np.ndarray
    y: np.ndarray
    counts: np.ndarray
    measured: np.ndarray
    tile: np.ndarray
    predicted: np.ndarray
    r: float
    n: int

    def __len__(self) -> int:
        return len(self.spot_ids)


def tiles_under(tile_xy: Any, tile_size: float, x: Any, y: Any) -> np.ndarray:
    """The kept tile whose square contains each point.

    Parameters
    ----------
    tile_xy
        ``(n, 2)`` level-0 top-left corners ``(x, y)`` of the kept tiles.
    tile_size
        Tile side in level-0 pixels; tile ``i`` covers ``[x_i, x_i + size) × [y_i, y_i + size)``.
    x, y
        The points in level-0 pixels (continuous coordinates).

    Returns
    -------
    numpy.ndarray
        ``(len(x),)`` int64: the tile's index, -1 where no kept tile contains the point. Where
        tiles overlap (a stride below the tile size) the tile whose centre is nearest.
    """
    from scipy.spatial import cKDTree

    corners = np.asarray(tile_xy, np.float64).reshape(-1, 2)
    points = np.column_stack([np.asarray(x, np.float64), np.asarray(y, np.float64)])
    out = np.full(len(points), -1, np.int64)
    if len(corners) == 0 or len(points) == 0:
        return out
    half = float(tile_size) / 2
    k = min(len(corners), 9)  # ties on shared edges and corners, and overlapping tiles
    bound = half * (1 + 1e-9) + 1e-9
    _, index = cKDTree(corners + half).query(points, k=k, p=np.inf, distance_upper_bound=bound)
    index = np.asarray(index).reshape(len(points), k)
    for j in range(k):  # nearest centre first; the first one whose square holds the point
        candidate = index[:, j]
        valid = (candidate < len(corners)) & (out < 0)
        corner = corners[np.where(valid, candidate, 0)]
        inside = (
            valid
            & (corner[:, 0] <= points[:, 0])
            & (points[:, 0] < corner[:, 0] + tile_size)
            & (corner[:, 1] <= points[:, 1])
            & (points[:, 1] < corner[:, 1] + tile_size)
        )
        out[inside] = candidate[inside]
    return out


def log2_counts(counts: Any, source: Any = "the counts") -> np.ndarray:
    """``log2(counts + 1)``, refusing missing, infinite and negative counts (named).

    Parameters
    ----------
    counts
        Measured counts, any shape.
    source
        What they come from, for the message.

    Returns
    -------
    numpy.ndarray
        float64, of ``counts``' shape.

    Raises
    ------
    ExpressionTableError
        A count is NaN, infinite or negative.
    """
    values = np.asarray(counts, np.float64)
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        raise ExpressionTableError(
            f"{source}: {int(bad.sum())} count(s) are missing, infinite or negative (e.g. "
            f"{values[bad][0]!r}); measured counts must be finite and ≥ 0"
        )
    return np.log2(values + 1)


def pearson(a: Any, b: Any) -> tuple[float, int]:
    """Pearson R over the pairs where both are finite, and how many pairs that is.

    Parameters
    ----------
    a, b
        Values of the same length (anything ``numpy.asarray`` makes floats of).

    Returns
    -------
    r, n
        R is NaN when ``n < 2`` or either side is constant over those pairs.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    n = int(ok.sum())
    if n < 2 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan"), n
    return float(np.corrcoef(a[ok], b[ok])[0, 1]), n


def compare_at_spots(
    tile_xy: Any,
    tile_size: float,
    tile_values: Any,
    x: Any,
    y: Any,
    counts: Any,
    gene: str = "",
    spot_ids: Any = None,
) -> SpotComparison:
    """A tile map's value at each spot and its Pearson R with the spots' log2(count + 1).

    Parameters
    ----------
    tile_xy, tile_size
        The kept tiles (see :func:`tiles_under`).
    tile_values
        ``(n_tiles,)`` the map's value per tile (e.g. one gene's predictions).
    x, y
        Spot centres in level-0 pixels of the same slide.
    counts
        The gene's measured counts at each spot (finite, ≥ 0).
    gene, spot_ids
        Recorded in the result (ids default to ``0, 1, …``).

    Returns
    -------
    SpotComparison
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    values = np.asarray(tile_values, np.float64).reshape(-1)
    if len(values) != len(np.asarray(tile_xy).reshape(-1, 2)):
        raise ValueError(f"{len(values)} tile values for {len(tile_xy)} tiles")
    tile = tiles_under(tile_xy, tile_size, x, y)
    predicted = np.full(len(x), np.nan)
    predicted[tile >= 0] = values[tile[tile >= 0]]
    counts = np.asarray(counts, np.float64)
    measured = log2_counts(counts, f"the counts of {gene}" if gene else "the counts")
    r, n = pearson(measured, predicted)
    ids = [str(i) for i in (range(len(x)) if spot_ids is None else spot_ids)]
    return SpotComparison(gene, ids, x, y, counts, measured, tile, predicted, r, n)


def read_measured(
    source: str | os.PathLike[str],
    image: str | os.PathLike[str],
    counts: str | os.PathLike[str] | None = None,
) -> SpatialData:
    """The measured spots of one slide and their counts, from any layout a user has.

    Parameters
    ----------
    source
        A Visium (Space Ranger) ``outs`` folder, or a file in it that names the run
        (``filtered_feature_bc_matrix.h5``, ``spatial/tissue_positions*``,
        ``spatial/scalefactors_json.json``); a HEST-1k ``.h5ad``; or a spot table
        (``.csv``/``.tsv``: ``slide, x, y``, optional ``spot_id``; x, y in level-0 px).
    image
        The slide the spots are on (its full-resolution image).
    counts
        Only for a spot table: the counts (spots × genes or genes × spots, CSV/TSV or
        ``.h5ad``) of its spots.

    Returns
    -------
    SpatialData
        The spots of ``image`` only (a spot table's rows of other slides are left out), each
        centred on the image.

    Raises
    ------
    ExpressionTableError
        An unknown kind of file, a spot table without counts (or counts given for a layout
        that holds its own), no spot of ``image`` in the table, spots off the image, and every
        refusal of the readers.
    """
    from .hest import read_hest
    from .visium import read_visium

    path = Path(source).expanduser()
    visium = _visium_folder(path)
    if counts not in (None, "", ".") and (visium is not None or path.suffix == ".h5ad"):
        raise ExpressionTableError(
            f"{path}: holds its own counts; the counts file ({counts}) is only for a spot "
            "table: clear it"
        )
    if visium is not None:
        return read_visium(visium, image)
    if path.suffix == ".h5ad":
        return read_hest(path, image)
    if path.suffix.lower() in _TABLE_SUFFIXES:
        return _read_spot_table(path, image, counts)
    what = "no such file or folder" if not path.exists() else "not a kind of spots file known"
    raise ExpressionTableError(
        f"{path}: {what}; give a Visium outs folder (or its filtered_feature_bc_matrix.h5), "
        "a HEST-1k .h5ad, or a spot table CSV (slide, x, y, spot_id) with its counts"
    )


def _visium_folder(path: Path) -> Path | None:
    """The Space Ranger output folder ``path`` is, or names by one of its files."""
    if path.is_dir():
        return path
    if path.name.endswith("filtered_feature_bc_matrix.h5"):
        return path.parent
    spatial_file = path.name.startswith("tissue_positions") or path.name == (
        "scalefactors_json.json"
    )
    if spatial_file and path.parent.name == "spatial":
        return path.parent.parent
    return None


def _read_spot_table(path: Path, image: Any, counts: Any) -> SpatialData:
    """A spot table's rows on ``image`` (slides compared as resolved paths) and their counts."""

    from ..io.tables import check_spot_table, read_expression

    if counts in (None, "", "."):
        raise ExpressionTableError(
            f"{path}: a spot table holds no counts; give its counts file (spots × genes)"
        )
    if not path.is_file():
        raise ExpressionTableError(f"{path}: no such spot table")
    try:
        table = read_delimited(path, encoding="utf-8-sig")
    except Exception as exc:
        raise ExpressionTableError(f"{path}: not a readable spot table ({exc})") from exc
    table = check_spot_table(table, path)
    slides = [_resolved(path, s) for s in table["slide"]]
    target = Path(image).expanduser().resolve()
    mine = np.array([s == target for s in slides], bool)
    if not mine.any():
        named = sorted({str(s) for s in slides if s is not None})
        raise ExpressionTableError(
            f"{path}: no spot is on {target} (its {len(table)} spots are on {few(named, 3)}); "
            "give the spot table of this slide, or open its slide"
        )
    table = table[mine].reset_index(drop=True)
    table["slide"] = str(target)
    _require_on_image(table, target, str(path))
    ids = list(table["spot_id"])
    values = read_expression(Path(counts).expanduser(), ids, "spot")
    values.index.name = "spot_id"
    return SpatialData(table[["slide", "x", "y", "spot_id"]], values, str(path))


def _resolved(table_path: Path, slide: Any) -> Path | None:
    """A slide cell as an absolute path (relative ones against the table's folder)."""
    if not isinstance(slide, str) or not slide.strip():
        return None
    p = Path(slide).expanduser()
    return (p if p.is_absolute() else table_path.parent / p).resolve()
