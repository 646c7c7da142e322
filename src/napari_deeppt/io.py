"""Writing files safely: temporary name, then rename; never clobber unless asked."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "cache_root"]


def cache_root() -> Path:
    """Where napari-deeppt keeps caches and generated samples.

    ``$NAPARI_DEEPPT_CACHE`` if set, else ``$XDG_CACHE_HOME/napari-deeppt`` (``~/.cache``).
    """
    env = os.environ.get("NAPARI_DEEPPT_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "napari-deeppt"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; move it onto ``path`` only if the block succeeds.

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is False (checked before any work is done).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{path}: already exists; choose another output or allow "
            "overwriting (--overwrite / overwrite=True)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        yield tmp
        if path.is_dir() and tmp.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
