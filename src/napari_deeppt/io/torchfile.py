"""Why torch could not read a file, in a few words for people (never torch's own text).

torch's errors for a corrupt or foreign file are long, multi-line, and advise loading with
``weights_only=False`` (which runs arbitrary code from the file). Callers that read weights or
model bundles turn a failed ``torch.load`` into one line with :func:`why_unreadable`.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["load_weights_only", "why_unreadable"]

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_TRUNCATED = "it is truncated or corrupt: an interrupted download or copy?"


def _size(source: Path | BinaryIO) -> int:
    if isinstance(source, Path):
        return source.stat().st_size
    return source.seek(0, os.SEEK_END)


def _head(source: Path | BinaryIO) -> bytes:
    if isinstance(source, Path):
        with open(source, "rb") as fh:
            return fh.read(4)
    source.seek(0)
    return source.read(4)


def _zip_problem(source: Path | BinaryIO) -> str | None:
    """What is wrong with a file that starts like a zip archive (torch's format since 1.6)."""
    if isinstance(source, io.IOBase):
        source.seek(0)
    if not zipfile.is_zipfile(source):
        return _TRUNCATED
    if isinstance(source, io.IOBase):
        source.seek(0)
    try:
        with zipfile.ZipFile(source) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return _TRUNCATED
    if not any(name.endswith("data.pkl") for name in names):
        return "a zip archive, but not a torch file"
    return None


def why_unreadable(source: Path | BinaryIO, exc: BaseException) -> str | None:
    """A short, one-line reason why ``torch.load(source)`` raised ``exc``.

    Parameters
    ----------
    source
        The file (a path, or the open binary stream that was given to torch).
    exc
        What ``torch.load(..., weights_only=True)`` raised.

    Returns
    -------
    str or None
        E.g. ``"the file is empty"``, ``"it is truncated or corrupt: …"``, ``"it holds a
        pickled torchvision.models.resnet.ResNet, not only tensors"``; never torch's advice to
        load with ``weights_only=False``. None when nothing more precise than "corrupt or
        another format" can be said (the caller says that in its own words).
    """
    if isinstance(exc, PermissionError):
        return "permission denied"
    try:
        if _size(source) == 0:
            return "the file is empty"
        head = _head(source)
    except OSError as err:
        return f"it cannot be read ({err.strerror or type(err).__name__})"
    text = str(exc)
    if head[:2] == b"PK":
        problem = _zip_problem(source)
        if problem is not None:
            return problem
    found = _GLOBAL.search(text)
    if found:
        return f"it holds a pickled {found.group(1)}, not only tensors"
    if isinstance(exc, EOFError) or "Ran out of input" in text or "truncated" in text:
        return _TRUNCATED
    return None


def load_weights_only(source: Any) -> Any:
    """``torch.load(source, weights_only=True)`` on the CPU, without torch's own warnings.

    torch warns about pickle protocols and asks to file issues when it meets a foreign
    pickle; the caller turns any failure into one line (:func:`why_unreadable`), so those
    warnings would only be noise before it.

    Parameters
    ----------
    source
        A path or a binary file object, as ``torch.load`` takes.

    Returns
    -------
    Any
        What the file holds (tensors, and containers of them), on the CPU; torch's exception
        when it is unreadable or holds other objects.
    """
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(source, map_location="cpu", weights_only=True)
