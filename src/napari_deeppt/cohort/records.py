"""What made a cohort result, so that a resumed run reuses only results it would make again.

Each slide's results in a cohort run (``slides/<sample_id>.*``) come with a record,
``slides/<sample_id>.run.json``: the SHA-256 of the model bundle, the slide's identity, the
extractor weights, the regions of interest and the napari-deeppt version. A rerun computes the
record it *would* write and reuses an earlier result only when the two agree on everything that
determines the result.

The slide's identity is its resolved path, size, modification time and a hash of its first and
last 64 KiB (for a folder such as an OME-Zarr: every file's relative path, size and time), the
test ``make`` and ``rsync`` use; re-scanning or replacing a slide changes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import ExpressionTableError
from ..io import file_sha256

__all__ = [
    "RECORD_FORMAT",
    "check_sample_ids",
    "expected_record",
    "file_sha256",
    "read_record",
    "record_path",
    "slide_identity",
    "stale_reason",
]

#: Version of the record layout; records of another layout are never reused.
RECORD_FORMAT = 1
_EDGE_BYTES = 64 * 1024
_UNSAFE = re.compile(r"[/\\\x00-\x1f\x7f:*?\"<>|]")


def slide_identity(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A cheap identity of a slide file or folder: path, size, time, and a hash of its edges.

    Parameters
    ----------
    path
        The slide file, or a folder slide (whose files' names, sizes and times are hashed).

    Returns
    -------
    dict
        ``path`` (resolved), ``size`` (bytes), ``mtime_ns`` and ``edges`` (32 hex digits).
    """
    path = Path(path).resolve()
    digest = hashlib.sha256()
    if path.is_dir():
        size = 0
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            stat = file.stat()
            size += stat.st_size
            digest.update(f"{file.relative_to(path).as_posix()}|{stat.st_size}|".encode())
            digest.update(f"{stat.st_mtime_ns}\n".encode())
        mtime = path.stat().st_mtime_ns
    else:
        stat = path.stat()
        size, mtime = stat.st_size, stat.st_mtime_ns
        with open(path, "rb") as fh:
            digest.update(fh.read(_EDGE_BYTES))
            if size > _EDGE_BYTES:
                fh.seek(max(_EDGE_BYTES, size - _EDGE_BYTES))
                digest.update(fh.read(_EDGE_BYTES))
    return {"path": str(path), "size": size, "mtime_ns": mtime, "edges": digest.hexdigest()[:32]}


def expected_record(
    slide: str,
    bundle_sha256: str,
    weights: str,
    roi: str | None,
    roi_class: str | None,
    precision: str | dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The record a slide's result would carry if it were made now.

    Parameters
    ----------
    slide
        The slide's path.
    bundle_sha256
        :func:`file_sha256` of the model bundle.
    weights
        What identifies the extractor weights (their hash, ``"random-0"``, ``"none"``).
    roi, roi_class
        The slide's regions of interest (a GeoJSON path or None) and the class kept.
    precision
        The extractor's precision when it is not float32 as the bundle has it (int8 with its
        engine, recipe and torch version), else None: not recorded, so the records of
        float32 runs stay as they were.
    """
    from .._version import __version__

    record = {
        "format": RECORD_FORMAT,
        "napari_deeppt": __version__,
        "bundle_sha256": bundle_sha256,
        "slide": slide_identity(slide),
        "weights": weights,
        "roi": None if roi is None else {"path": str(roi), "sha256": file_sha256(roi)},
        "roi_class": roi_class if roi is not None else None,
    }
    if precision is not None:
        record["precision"] = precision
    return record


_WHAT = {
    "format": "an older napari-deeppt run layout",
    "napari_deeppt": "another napari-deeppt version",
    "bundle_sha256": "another model bundle",
    "slide": "another slide file (or this one changed since)",
    "weights": "other extractor weights",
    "roi": "other regions of interest",
    "roi_class": "another region class",
    "precision": "another precision (or int8 engine or torch) than now",
}


def stale_reason(old: dict[str, Any] | None, new: dict[str, Any]) -> str | None:
    """Why an earlier result cannot be reused (None when it can).

    Parameters
    ----------
    old
        The earlier result's record (:func:`read_record`), None when it has none.
    new
        The record it would have now (:func:`expected_record`).

    Returns
    -------
    str or None
        The first field that differs, in words.
    """
    if old is None:
        return "no record of what made the earlier result"
    for key, what in _WHAT.items():
        if old.get(key) != new.get(key):
            return f"recomputed: the earlier result was made with {what}"
    return None


def record_path(out: Path, sample_id: str) -> Path:
    """Where the record of a sample's result lives.

    Parameters
    ----------
    out, sample_id
        The cohort's output folder and the sample's id.

    Returns
    -------
    pathlib.Path
        ``<out>/slides/<sample_id>.run.json``.
    """
    return out / "slides" / f"{sample_id}.run.json"


def read_record(path: Path) -> dict[str, Any] | None:
    """A result's record, or None when it is missing or unreadable.

    Parameters
    ----------
    path
        The record file (:func:`record_path`); one that is not a JSON object counts as
        unreadable.

    Returns
    -------
    dict or None
    """
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def check_sample_ids(ids: list[str], source: object) -> None:
    """Refuse sample ids that are not safe, distinct file names.

    Parameters
    ----------
    ids
        The sample ids, as text.
    source
        What they come from (the manifest's path), for the message.

    Raises
    ------
    ExpressionTableError
        An id is empty, starts with a dot, has leading or trailing spaces, is longer than 200
        characters, holds a path separator or a character file systems refuse, an id is
        repeated, or two ids differ only in case (one file on macOS/Windows).
    """
    bad = [
        i
        for i in ids
        if not i or i.strip() != i or i.startswith(".") or _UNSAFE.search(i) or len(i) > 200
    ]
    if bad:
        raise ExpressionTableError(
            f"{source}: sample_id(s) {bad[:5]} cannot name output files (they would leave the "
            "output folder or be hidden); use letters, digits, '-', '_' and '.' not first"
        )
    repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
    if repeated:
        raise ExpressionTableError(
            f"{source}: sample_id(s) {repeated[:5]} are listed more than once and would write "
            "one set of outputs; give each slide its own sample_id"
        )
    seen: dict[str, str] = {}
    for sample in ids:
        other = seen.setdefault(sample.casefold(), sample)
        if other != sample:
            raise ExpressionTableError(
                f"{source}: sample_ids {other!r} and {sample!r} differ only in case and would "
                "write one file on many file systems; rename one of them"
            )
