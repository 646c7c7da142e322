"""The slide formats napari-deeppt reads, and which one opens a path.

Each backend module declares a :class:`~.base.Backend` (its suffixes, a cheap ``can_open``
check and its ``open``); :func:`backend_for` asks them in order. A new format is a new module
with its ``BACKEND`` and one line in ``_BACKENDS`` below (or :func:`register` from outside).
Backend modules import their format libraries (tifffile, zarr) only when they open a file.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SlideFormatError
from . import omezarr, tiff
from .base import Backend

__all__ = ["backend_for", "backends", "register", "suffixes"]

_BACKENDS: list[Backend] = [tiff.BACKEND, omezarr.BACKEND]


def register(backend: Backend, first: bool = False) -> Backend:
    """Add a format; ``first`` lets it claim paths before the built-in ones.

    Parameters
    ----------
    backend
        The format's declaration; one of the same ``name`` is replaced.
    first
        Ask it before the others (a faster or more specific reader of a format they read).

    Returns
    -------
    Backend
        ``backend``, so a module can write ``BACKEND = register(Backend(...))``.
    """
    _BACKENDS[:] = [b for b in _BACKENDS if b.name != backend.name]
    _BACKENDS.insert(0 if first else len(_BACKENDS), backend)
    return backend


def backends() -> tuple[Backend, ...]:
    """The registered formats, in the order they are asked."""
    return tuple(_BACKENDS)


def suffixes() -> tuple[str, ...]:
    """File name endings of every registered format (lower case, no repeats)."""
    return tuple(dict.fromkeys(s for b in _BACKENDS for s in b.suffixes))


def backend_for(path: Path) -> Backend:
    """The first registered format whose ``can_open`` accepts ``path`` (which exists).

    Parameters
    ----------
    path
        An existing file or directory; only the formats of its kind (file or directory) are
        asked.

    Returns
    -------
    Backend

    Raises
    ------
    SlideFormatError
        No format accepts it; the message says what was looked for and what is supported.
    """
    directory = path.is_dir()
    candidates = [b for b in _BACKENDS if b.directory == directory]
    for backend in candidates:
        if backend.can_open(path):
            return backend
    expected = " nor ".join(b.expects for b in candidates) or "a format napari-deeppt reads"
    if directory:
        raise SlideFormatError(f"{path}: a directory, but not {expected}")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if not magic:
        raise SlideFormatError(f"{path}: the file is empty (0 bytes); copy the slide again")
    folders = [b.title for b in _BACKENDS if b.directory]
    note = f" ({', '.join(folders)} {'is a directory' if len(folders) == 1 else 'are directories'})"
    raise SlideFormatError(
        f"{path}: not {expected} (it starts with {magic!r}); supported: "
        f"{', '.join(suffixes())}{note if folders else ''}"
    )
