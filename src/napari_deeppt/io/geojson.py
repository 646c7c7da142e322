"""GeoJSON for QuPath (and any GIS-style viewer): tissue outlines and tiles with measurements.

Coordinates are level-0 pixels with the origin at the top-left corner of the first pixel,
which is how QuPath reads and writes GeoJSON, so the objects land on the tissue they came
from when imported into the same slide (File → Import objects, or drag and drop). Each
object carries QuPath's ``objectType`` (``"annotation"`` for tissue, ``"tile"`` for tiles)
and a ``measurements`` mapping (tissue fraction, predicted expression per gene) that QuPath
shows in its measurement tables and maps.

Features are written one at a time, so tens of thousands of tiles × thousands of genes never
sit in memory as Python objects.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DeepPTError
from ..geometry import Region

__all__ = ["as_regions", "mask_features", "read_regions", "tile_features", "write_geojson"]

TISSUE_COLOUR = [80, 160, 80]


def tile_features(
    grid: Any,
    measurements: Mapping[str, np.ndarray] | None = None,
    object_type: str = "tile",
    digits: int = 4,
) -> Iterator[dict[str, Any]]:
    """One square polygon per tile of a :class:`~napari_deeppt.tiles.TileGrid`.

    Parameters
    ----------
    grid
        The tiles; tile ``i`` covers level-0 ``[x, x + size) × [y, y + size)``.
    measurements
        Name → ``(n_tiles,)`` values added to each tile's ``measurements`` (besides its
        tissue fraction); NaN values are left out.
    object_type
        QuPath object type: ``"tile"`` (default) or ``"detection"``.
    digits
        Significant digits kept for measurement values.
    """
    measurements = dict(measurements or {})
    for name, values in measurements.items():
        if len(values) != len(grid):
            raise ValueError(f"measurement {name!r} has {len(values)} values for {len(grid)} tiles")
    columns = list(measurements)
    table = (
        np.column_stack([np.asarray(measurements[c], np.float64) for c in columns])
        if columns
        else np.zeros((len(grid), 0))
    )
    size = float(grid.size_level0)
    for i, ((x, y), (row, col)) in enumerate(zip(grid.xy, grid.rowcol, strict=True)):
        x0, y0 = float(x), float(y)
        x1, y1 = x0 + size, y0 + size
        values = {"tissue fraction": _round(float(grid.tissue_fraction[i]), digits)}
        for name, value in zip(columns, table[i], strict=True):
            if math.isfinite(value):
                values[name] = _round(float(value), digits)
        yield {
            "type": "Feature",
            "geometry": {
                "type": "Polygon",
                "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]],
            },
            "properties": {
                "objectType": object_type,
                "name": f"tile r{int(row)} c{int(col)}",
                "measurements": values,
            },
        }


def mask_features(mask: Any, name: str = "Tissue", tolerance: float = 0.2) -> list[dict[str, Any]]:
    """Outlines of a :class:`~napari_deeppt.tissue.TissueMask`, one annotation per piece.

    Each connected piece of tissue becomes a polygon (with its holes) traced along the mask
    pixels' edges, simplified by at most ``tolerance`` mask pixels, in level-0 pixels.
    Measurements: the piece's area in µm² (when the slide's pixel size is known) and px².

    Parameters
    ----------
    mask
        The :class:`~napari_deeppt.tissue.TissueMask`.
    name
        The annotations' class, and their names (``"Tissue 1"``, ``"Tissue 2"`` ...).
    tolerance
        Largest simplification, in mask pixels; 0 keeps every vertex.

    Returns
    -------
    list of dict
        GeoJSON Features in QuPath's layout, for :func:`write_geojson`.
    """
    from scipy import ndimage
    from skimage import measure

    dx, dy = mask.downsample_xy
    labels, _ = ndimage.label(np.asarray(mask.mask, bool))
    pieces = ndimage.find_objects(labels)
    out = []
    for index, window in enumerate(pieces, start=1):
        if window is None:
            continue
        piece = labels[window] == index
        filled = ndimage.binary_fill_holes(piece)
        exterior = _rings(filled, window, dx, dy, tolerance, measure)
        if not exterior:
            continue
        holes_labels, n_holes = ndimage.label(filled & ~piece)
        holes = []
        for hole in range(1, n_holes + 1):
            holes += _rings(holes_labels == hole, window, dx, dy, tolerance, measure)
        area_px = float(piece.sum()) * dx * dy
        values = {"Area px^2": round(area_px, 1)}
        if mask.slide_mpp:
            values["Area µm^2"] = round(area_px * mask.slide_mpp**2, 1)
        out.append(
            {
                "type": "Feature",
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [max(exterior, key=_ring_area), *holes],
                },
                "properties": {
                    "objectType": "annotation",
                    "name": f"{name} {len(out) + 1}",
                    "classification": {"name": name, "color": TISSUE_COLOUR},
                    "measurements": values,
                },
            }
        )
    return out


def _rings(
    region: np.ndarray, window: tuple[slice, slice], dx: float, dy: float, tol: float, measure: Any
) -> list[list[list[float]]]:
    """Closed outlines of a boolean region (cut out at ``window``), as level-0 rings."""
    padded = np.pad(region, 1).astype(np.float32)
    rings = []
    for contour in measure.find_contours(padded, 0.5):
        if len(contour) < 4:
            continue
        if tol > 0:
            contour = measure.approximate_polygon(contour, tolerance=tol)
        # padded index → mask pixel edges: index − 1 (pad) + 0.5 (centre → edge) + window start
        rows = (contour[:, 0] - 0.5 + window[0].start) * dy
        cols = (contour[:, 1] - 0.5 + window[1].start) * dx
        ring = [[round(float(c), 2), round(float(r), 2)] for r, c in zip(rows, cols, strict=True)]
        if ring[0] != ring[-1]:
            ring.append(ring[0])
        if len(ring) >= 4:
            rings.append(ring)
    return rings


def _ring_area(ring: list[list[float]]) -> float:
    x = np.array([p[0] for p in ring])
    y = np.array([p[1] for p in ring])
    return float(abs(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])) / 2)


def _round(value: float, digits: int) -> float:
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def write_geojson(
    features: Iterable[dict[str, Any]], path: str | Path, overwrite: bool = False
) -> Path:
    """Write a FeatureCollection, one feature at a time, atomically.

    Parameters
    ----------
    features
        GeoJSON Feature dicts, consumed as they are written (a generator is fine); NaN or
        infinite numbers are refused (``ValueError``) and nothing is written.
    path
        The ``.geojson`` file.
    overwrite
        Replace an existing file; else :class:`FileExistsError`.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    from .files import atomic_path

    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write('{"type": "FeatureCollection", "features": [\n')
        for k, feature in enumerate(features):
            if k:
                fh.write(",\n")
            fh.write(json.dumps(feature, ensure_ascii=False, allow_nan=False))
        fh.write("\n]}\n")
    return path


def read_regions(path: str | Path, classification: str | None = None) -> list[Region]:
    """Polygons of a GeoJSON file (a QuPath export, say) as :class:`~napari_deeppt.geometry.Region`.

    Parameters
    ----------
    path
        A FeatureCollection, a Feature, a list of Features (older QuPath), or a bare
        Polygon/MultiPolygon/GeometryCollection, in level-0 pixels.
    classification
        Keep only objects of this class (QuPath's ``classification.name``, e.g. ``"Tumor"``);
        case-insensitive.

    Raises
    ------
    DeepPTError
        The file cannot be read, or holds no polygon (of that class), with what it does hold.
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DeepPTError(f"{path}: not a readable GeoJSON file ({exc})") from exc
    regions: list[Region] = []
    seen: dict[str, int] = {}
    for geometry, properties in _geometries(document):
        kind = str(geometry.get("type"))
        label = _class_name(properties)
        described = f"{kind} ({label})" if label else kind
        seen[described] = seen.get(described, 0) + 1
        if classification is not None and (label or "").lower() != classification.lower():
            continue
        polygons = (
            [geometry.get("coordinates")]
            if kind == "Polygon"
            else geometry.get("coordinates")
            if kind == "MultiPolygon"
            else []
        )
        for rings in polygons or []:
            try:
                arrays = [np.asarray(ring, np.float64)[:, :2] for ring in rings]
            except (TypeError, ValueError, IndexError) as exc:
                raise DeepPTError(f"{path}: malformed polygon coordinates ({exc})") from exc
            if not all(np.isfinite(ring).all() for ring in arrays):
                raise DeepPTError(f"{path}: a polygon has a vertex that is not a number (NaN)")
            if arrays and len(arrays[0]) >= 3:
                name = str(properties.get("name") or "")
                regions.append(Region(arrays[0], tuple(arrays[1:]), name, label))
    if not regions:
        found = ", ".join(f"{n} × {k}" for k, n in seen.items()) or "no geometry"
        wanted = f" of class {classification!r}" if classification else ""
        raise DeepPTError(f"{path}: no polygon{wanted} in the file (found {found})")
    return regions


def as_regions(obj: Any, classification: str | None = None) -> list[Region]:
    """Regions from a GeoJSON path, a :class:`~napari_deeppt.geometry.Region`, an ``(n, 2)``
    ``(x, y)`` array of level-0 vertices, or a list of these.

    Parameters
    ----------
    obj
        What to convert; a path is read with :func:`read_regions`.
    classification
        For files: keep only objects of this QuPath class (case-insensitive).

    Raises
    ------
    TypeError
        ``obj`` is none of these.
    ValueError
        An array is not ``(n ≥ 3, 2)``.
    """
    if isinstance(obj, (str, os.PathLike)):
        return read_regions(obj, classification=classification)
    if isinstance(obj, Region):
        return [obj]
    if isinstance(obj, np.ndarray) and obj.ndim == 2:
        return [_checked_region(obj)]
    if isinstance(obj, (list, tuple)):
        out: list[Region] = []
        for item in obj:
            out += as_regions(item, classification)
        return out
    raise TypeError(
        f"expected a GeoJSON path, a Region or (n, 2) level-0 vertices, got {type(obj).__name__}"
    )


def _checked_region(vertices: np.ndarray) -> Region:
    vertices = np.asarray(vertices, np.float64)
    if vertices.ndim != 2 or vertices.shape[1] != 2 or len(vertices) < 3:
        raise ValueError(f"a region needs (n ≥ 3, 2) vertices (x, y), got {vertices.shape}")
    if not np.isfinite(vertices).all():
        raise ValueError("a region's vertices must be numbers (one is NaN or infinite)")
    return Region(vertices)


def _geometries(document: Any) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(geometry, properties) of every geometry in a GeoJSON document."""
    if isinstance(document, list):
        for item in document:
            yield from _geometries(item)
        return
    if not isinstance(document, dict):
        return
    kind = document.get("type")
    if kind == "FeatureCollection":
        yield from _geometries(document.get("features") or [])
    elif kind == "Feature":
        geometry = document.get("geometry") or {}
        properties = document.get("properties") or {}
        if geometry.get("type") == "GeometryCollection":
            for part in geometry.get("geometries") or []:
                yield part, properties
        else:
            yield geometry, properties
    elif kind == "GeometryCollection":
        for part in document.get("geometries") or []:
            yield part, {}
    elif kind is not None:
        yield document, {}


def _class_name(properties: dict[str, Any]) -> str | None:
    value = properties.get("classification")
    if isinstance(value, dict):
        value = value.get("name")
    return None if value is None else str(value)
