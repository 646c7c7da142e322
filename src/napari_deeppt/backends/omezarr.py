"""OME-Zarr (OME-NGFF 0.4 and 0.5) multiscale images, including bioformats2raw layouts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import SlideFormatError
from .base import Backend, LevelSource, SlideParts
from .ome import UNIT_TO_UM, parse_ome_xml, positive_float
from .stored import ZarrChunks

__all__ = ["BACKEND", "open_ome_zarr"]


def _ngff(attrs: dict[str, Any]) -> dict[str, Any]:
    return attrs.get("ome", attrs)  # NGFF 0.5 nests everything under "ome"


def _axis_names(axes: list[Any]) -> tuple[str, dict[str, str]]:
    names, units = [], {}
    for axis in axes:
        if isinstance(axis, dict):
            name = str(axis.get("name", "")).lower()
            if axis.get("unit"):
                units[name] = str(axis["unit"])
        else:
            name = str(axis).lower()
        names.append(name)
    letters = "".join({"c": "C", "y": "Y", "x": "X", "z": "Z", "t": "T"}.get(n, "Q") for n in names)
    return letters, units


def _scale(transforms: list[dict[str, Any]] | None, ndim: int) -> list[float]:
    out = [1.0] * ndim
    for t in transforms or []:
        if t.get("type") == "scale" and "scale" in t:
            out = [a * float(b) for a, b in zip(out, t["scale"])]
    return out


def open_ome_zarr(path: Path) -> SlideParts:
    """Open an OME-Zarr image group (or a bioformats2raw container of them).

    Parameters
    ----------
    path
        The Zarr directory.

    Returns
    -------
    SlideParts
        Its levels and associated images; the pixel size from ``coordinateTransformations``
        (spatial units known to ``UNIT_TO_UM``), else from the container's OME-XML.

    Raises
    ------
    SlideFormatError
        Not a readable Zarr group, not an OME-Zarr image, malformed ``multiscales``
        metadata, or a listed level missing.
    """
    group, associated_groups, ome_xml = _image_group(path)
    multiscale, letters, units, paths = _multiscale(group, path)
    sources = [_level_source(group, key, i, letters, path) for i, key in enumerate(paths)]
    parts = SlideParts(
        levels=sources,
        associated=_associated(associated_groups, path),
        format="ome-zarr",
        vendor="ome",
        compression=_compression_name(sources[0].array),
    )
    scale = _scale(multiscale["datasets"][0].get("coordinateTransformations"), len(letters))
    scale = [
        a * b
        for a, b in zip(scale, _scale(multiscale.get("coordinateTransformations"), len(letters)))
    ]
    if "X" in letters and "x" in units:
        factor = UNIT_TO_UM.get(units["x"])
        if factor:
            mpp_x = scale[letters.index("X")] * factor
            mpp_y = scale[letters.index("Y")] * UNIT_TO_UM.get(units.get("y", units["x"]), factor)
            if positive_float(mpp_x) and positive_float(mpp_y):  # else: no pixel size
                parts.mpp_xy = (mpp_x, mpp_y)
                parts.mpp_source = "OME-Zarr coordinateTransformations"
    if ome_xml:
        before = parts.mpp_xy
        parse_ome_xml(ome_xml, sources[0].shape[:2], parts)
        if before is not None:
            parts.mpp_xy = before
    parts.properties = {"ome-zarr.multiscales": multiscale}
    return parts


def _image_group(path: Path) -> tuple[Any, dict[str, Any], str | None]:
    """The group holding the image, other images (bioformats2raw) and OME-XML if present."""
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r")
        attrs = dict(group.attrs)
    except Exception as exc:
        raise SlideFormatError(
            f"{path}: not a readable Zarr group ({type(exc).__name__}: {exc})"
        ) from exc
    if "multiscales" in _ngff(attrs):
        return group, {}, None
    # bioformats2raw: images in "0", "1" ...; OME-XML in OME/
    keys = sorted((k for k in group.group_keys() if k.isdigit()), key=int)
    if not keys or "multiscales" not in _ngff(dict(group[keys[0]].attrs)):
        raise SlideFormatError(
            f"{path}: a Zarr store, but not an OME-Zarr image (no 'multiscales' metadata)"
        )
    others = {f"image{k}": group[k] for k in keys[1:]}
    try:
        ome_xml = bytes(group["OME/METADATA.ome.xml"][...]).decode()  # rarely present
    except Exception:
        ome_xml = None
    return group[keys[0]], others, ome_xml


def _multiscale(group: Any, path: Path) -> tuple[dict[str, Any], str, dict[str, str], list[str]]:
    """The first ``multiscales`` entry, its axis letters and units, and its levels' paths."""
    try:
        multiscale = _ngff(dict(group.attrs))["multiscales"][0]
        letters, units = _axis_names(multiscale.get("axes", ["t", "c", "z", "y", "x"][-5:]))
        paths = [str(d["path"]) for d in multiscale["datasets"]]
        if not paths:
            raise IndexError("no datasets")
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise SlideFormatError(
            f"{path}: its OME-Zarr 'multiscales' metadata is malformed ({type(exc).__name__}: "
            f"{exc}); re-export the image"
        ) from exc
    return multiscale, letters, units, paths


def _associated(groups: dict[str, Any], path: Path) -> dict[str, LevelSource]:
    """The first level of each other image of a bioformats2raw store (unreadable ones skipped)."""
    associated: dict[str, LevelSource] = {}
    for name, sub in groups.items():
        try:
            sub_multiscale = _ngff(dict(sub.attrs))["multiscales"][0]
            array = sub[sub_multiscale["datasets"][0]["path"]]
            sub_letters, _ = _axis_names(sub_multiscale.get("axes", []))
            if len(sub_letters) != array.ndim:
                sub_letters = "TCZYX"[-array.ndim :]
            chunks = (array.chunks[sub_letters.index("Y")], array.chunks[sub_letters.index("X")])
            associated[name] = LevelSource(
                array, sub_letters, path, f"associated image {name!r}", chunks
            )
        except Exception:
            continue
    return associated


def _level_source(group: Any, key: str, index: int, letters: str, path: Path) -> LevelSource:
    """The array of one listed level; a missing one means an incomplete copy."""
    try:
        array = group[key]
        array.ndim  # noqa: B018 (a group under that name has no ndim)
    except (KeyError, FileNotFoundError, AttributeError) as exc:
        raise SlideFormatError(
            f"{path}: the OME-Zarr metadata lists level {index} at {key!r}, but there is no "
            "readable array there (an incomplete copy?) — re-copy it"
        ) from exc
    axes = letters if len(letters) == array.ndim else "TCZYX"[-array.ndim :]
    chunks = (array.chunks[axes.index("Y")], array.chunks[axes.index("X")])
    source = LevelSource(array, axes, path, f"level {index}", chunks)
    source.stored = _stored_chunks(array, axes, source.n_channels)
    return source


def _stored_chunks(array: Any, axes: str, n_channels: int) -> ZarrChunks | None:
    """Chunk files of an array in a local directory store; None elsewhere (zip, remote...),
    where content digests hash decoded pixels instead."""
    try:
        from zarr.storage import LocalStore

        if not isinstance(array.store, LocalStore):
            return None
        return ZarrChunks(array, axes, n_channels, Path(array.store.root))
    except Exception:  # another zarr generation: decoded digests are still right
        return None


def _compression_name(array: Any) -> str:
    try:
        comps = getattr(array, "compressors", None) or [array.compressor]
        return ",".join(type(c).__name__.lower() for c in comps if c is not None) or "none"
    except Exception:
        return "unknown"


def _is_zarr(path: Path) -> bool:
    return path.is_dir() and any(
        (path / name).exists() for name in (".zgroup", ".zattrs", "zarr.json")
    )


BACKEND = Backend(
    name="ome-zarr",
    title="OME-Zarr",
    suffixes=(".zarr", ".ome.zarr"),
    directory=True,
    expects="a Zarr store (no .zgroup, .zattrs or zarr.json inside)",
    can_open=_is_zarr,
    open=open_ome_zarr,
)
