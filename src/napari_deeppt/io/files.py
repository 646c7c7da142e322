"""Writing files safely: temporary name, then rename; never clobber unless asked.

Temporary names carry the host and process that write them (``.<name>.partial-<host>-<pid>-
<random>``), so two writers never share one, and a partial left by a process that died (Ctrl-C
twice, a killed dask worker, a full disk) is recognised as stale and removed by the next run
(:func:`remove_stale_partials`) while a live run's partials are left alone.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "as_path",
    "atomic_outputs",
    "atomic_path",
    "bundled_slide_path",
    "cache_root",
    "describe_os_error",
    "file_sha256",
    "keep_recent",
    "mark_used",
    "partial_name",
    "refuse_existing",
    "remove_stale_partials",
]

#: Outputs that are folders (a zarr store); any other existing folder is never replaced.
FOLDER_SUFFIXES = frozenset({".zarr"})
#: A partial of another host is stale once it has not been touched for this long.
STALE_AFTER_S = 24 * 3600
_PARTIAL = re.compile(
    r"^\.(?P<name>.+)\.partial-(?P<host>[A-Za-z0-9_.]+)-(?P<pid>\d+)-[0-9a-f]{8}(\..*)?$"
)


def cache_root() -> Path:
    """Where napari-deeppt keeps caches and generated samples.

    ``$NAPARI_DEEPPT_CACHE`` if set, else ``$XDG_CACHE_HOME/napari-deeppt`` (``~/.cache``).
    """
    env = os.environ.get("NAPARI_DEEPPT_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "napari-deeppt"


def bundled_slide_path() -> Path:
    """Path of the bundled CMU-1-Small-Region.svs (Carnegie Mellon University, CC0 1.0)."""
    from importlib import resources

    return Path(str(resources.files("napari_deeppt") / "data" / "CMU-1-Small-Region.svs"))


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes (hex), read in 1 MiB blocks.

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    str
        64 hex digits.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def partial_name(name: str, host: str | None = None, pid: int | None = None) -> str:
    """The temporary name under which ``name`` is written by this (or the given) process.

    Parameters
    ----------
    name
        The target's file name (not a path).
    host, pid
        The writer's host name and process id; None: this host and process.

    Returns
    -------
    str
        ``.<name>.partial-<host>-<pid>-<8 random hex digits>``, new at every call.
    """
    host = re.sub(r"[^A-Za-z0-9_.]", "_", host) if host else _host()
    return f".{name}.partial-{host}-{os.getpid() if pid is None else pid}-{uuid.uuid4().hex[:8]}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_partials(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove partial outputs in ``folder`` whose writer is gone; return what was removed.

    A partial is stale when it was written on this host by a process that no longer runs, or
    (another host's, which cannot be asked) when it has not changed for ``STALE_AFTER_S``.

    Parameters
    ----------
    folder
        Where to look (not recursively); a missing folder removes nothing.

    Returns
    -------
    list of pathlib.Path
        The files and folders removed.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    here, now = _host(), time.time()
    for entry in sorted(folder.iterdir()):
        match = _PARTIAL.match(entry.name)
        if not match:
            continue
        try:
            age = now - entry.stat().st_mtime
        except OSError:
            continue
        mine = match["host"] == here  # this host's: ask whether its writer still runs
        if (not _alive(int(match["pid"]))) if mine else age > STALE_AFTER_S:
            _remove(entry)
            removed.append(entry)
    return removed


_CACHE_KEY = re.compile(r"^[0-9a-f]{32}$")


def mark_used(path: str | os.PathLike[str]) -> None:
    """Mark a cache entry used now (its modification time), so that :func:`keep_recent` in
    another process keeps it; a file that cannot be touched is left as it is.

    Parameters
    ----------
    path
        The entry's file.
    """
    with contextlib.suppress(OSError):
        os.utime(path)


def keep_recent(current: str | os.PathLike[str], keep: int) -> list[Path]:
    """Mark ``current`` used now and remove all but the ``keep`` most recently used entries
    of its cache folder; return what was removed.

    An entry is the files that share a 32-hex-digit key as their stem (``<key>.pt2`` and
    ``<key>.json``, say); other files are never touched. ``current``'s entry is always kept.
    A file that cannot be touched or removed is left as it is (another process may be
    removing it, or the folder is read-only): the cache works without the clean-up.

    Parameters
    ----------
    current
        A file of the entry in use; its folder is the cache folder.
    keep
        Entries to keep, ``current``'s included (0 keeps it alone, as 1 does).

    Returns
    -------
    list of pathlib.Path
        The files removed.
    """
    current = Path(current)
    mark_used(current)
    used: dict[str, float] = {}
    files: dict[str, list[Path]] = {}
    with contextlib.suppress(OSError):
        for entry in current.parent.iterdir():
            stem = entry.name.split(".", 1)[0]
            if not _CACHE_KEY.match(stem) or entry.is_dir():
                continue
            with contextlib.suppress(OSError):
                used[stem] = max(used.get(stem, 0.0), entry.stat().st_mtime)
                files.setdefault(stem, []).append(entry)
    mine = current.name.split(".", 1)[0]
    others = sorted((stem for stem in used if stem != mine), key=used.__getitem__, reverse=True)
    removed = []
    for stem in others[max(keep - 1, 0) :]:
        for entry in files[stem]:
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def as_path(value: Any, expected: str) -> Path:
    """``value`` as a :class:`~pathlib.Path`, or one line saying what was given instead.

    Parameters
    ----------
    value
        What the caller passed: a ``str`` or ``os.PathLike`` is a path.
    expected
        What it should be, for the message (``"the slide must be a file path"``).

    Raises
    ------
    InputTypeError
        ``value`` is something else (a dict, a list, a number, None).
    """
    if isinstance(value, (str, os.PathLike)):
        return Path(value)
    from ..errors import InputTypeError

    raise InputTypeError(f"{expected}, not {type(value).__name__}")


def refuse_existing(paths: Iterable[str | os.PathLike[str]], overwrite: bool) -> None:
    """Refuse outputs that exist unless ``overwrite``: checked before any work is done.

    Parameters
    ----------
    paths
        The outputs (files or folders).
    overwrite
        Allow existing ones (then nothing is checked).

    Raises
    ------
    FileExistsError
        Naming the existing files and how to allow overwriting.
    NotADirectoryError
        A folder on an output's path is a file (``x.svs/out.csv``).
    """
    paths = [Path(p) for p in paths]
    for path in paths:
        above = path.parent
        while not above.exists() and above != above.parent:
            above = above.parent
        if not above.is_dir():
            raise NotADirectoryError(
                errno.ENOTDIR, f"{above} is a file, not a folder; choose another output", str(path)
            )
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        verb = "already exists" if len(existing) == 1 else "already exist"
        raise FileExistsError(
            f"{', '.join(existing)}: {verb}; choose another output or allow "
            "overwriting (--overwrite / overwrite=True)"
        )


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike[str], overwrite: bool = False, folder: bool = False
) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; move it onto ``path`` only if the block succeeds.

    Parameters
    ----------
    path, overwrite, folder
        As for :func:`atomic_outputs`, with one target.

    Yields
    ------
    pathlib.Path
        Where the block writes (same folder, same suffix).

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is False (checked before any work is done).
    """
    with atomic_outputs([path], overwrite=overwrite, folders=folder) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_outputs(
    paths: Iterable[str | os.PathLike[str]], overwrite: bool = False, folders: bool = False
) -> Iterator[list[Path]]:
    """Write several files as one: all of them new, or (on any failure) all of them as before.

    Yields one temporary path per target (same folder, same suffix). When the block succeeds
    the targets are replaced together: existing ones are first moved aside, and put back if
    any rename fails. When the block fails (an exception, a full disk, Ctrl-C) the temporary
    files are removed and the targets are untouched.

    Parameters
    ----------
    paths
        The target files (or folders); their parent folders are created.
    overwrite
        Replace targets that exist.
    folders
        The targets are folders (a zarr store), so an existing folder may be replaced; else
        only targets named as folder outputs (:data:`FOLDER_SUFFIXES`) may.

    Yields
    ------
    list of pathlib.Path
        One temporary path per target, in order. A temporary the block leaves unwritten
        leaves no file: an existing target of it is removed.

    Raises
    ------
    FileExistsError
        A target exists and ``overwrite`` is False (checked before any work is done), or
        the block wrote a file where a folder is (or the reverse): nothing is replaced.
    IsADirectoryError
        A target is an existing folder and not a folder output (``folders`` or
        :data:`FOLDER_SUFFIXES`), checked before any work is done.
    """
    targets = [Path(p) for p in paths]
    refuse_existing(targets, overwrite)
    for target in targets:  # a file output never replaces a folder (nor its contents)
        if target.is_dir() and not folders and target.suffix.lower() not in FOLDER_SUFFIXES:
            raise IsADirectoryError(errno.EISDIR, "is a folder; give a file name", str(target))
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
    tmps = [t.with_name(partial_name(t.name) + t.suffix) for t in targets]
    try:
        yield tmps
        _commit(targets, tmps)
    finally:
        for tmp in tmps:
            _remove(tmp)


def _commit(targets: list[Path], tmps: list[Path]) -> None:
    """Rename every temporary onto its target; on a failure restore the old targets."""
    for tmp, target in zip(tmps, targets, strict=True):
        if tmp.exists() and target.exists() and tmp.is_dir() != target.is_dir():
            kind = "a folder" if target.is_dir() else "a file, not a folder"
            raise FileExistsError(errno.EEXIST, f"is {kind}; nothing was replaced", str(target))
    backups: list[tuple[Path, Path]] = []
    done: list[Path] = []
    try:
        for target in targets:
            if target.exists():
                backup = target.with_name(partial_name(target.name) + ".old")
                os.replace(target, backup)
                backups.append((backup, target))
        for tmp, target in zip(tmps, targets, strict=True):
            if tmp.exists():
                os.replace(tmp, target)
                done.append(target)
    except BaseException:
        for target in done:
            _remove(target)
        for backup, target in backups:
            os.replace(backup, target)
        raise
    for backup, _ in backups:
        _remove(backup)


_ADVICE = {
    errno.ENOSPC: "no space left on the device; free some space and run again (nothing was "
    "half-written)",
    errno.EDQUOT: "disk quota exceeded; free some space and run again (nothing was half-written)",
    errno.EACCES: "permission denied; choose a folder you can write to",
    errno.EPERM: "permission denied; choose a folder you can write to",
    errno.EROFS: "the file system is read-only; choose another output folder",
    errno.ENOTDIR: "a part of this path is a file, not a folder; choose another output folder",
    errno.EEXIST: "already exists and is not a folder; choose another output folder",
    errno.EISDIR: "is a folder; give a file name",
    errno.ENAMETOOLONG: "the name is too long for the file system",
}


def describe_os_error(exc: OSError) -> str:
    """One line for an operating-system error: the file, the problem and what to do.

    Parameters
    ----------
    exc
        The error; a temporary file name in it is shown as the target it stands for.

    Returns
    -------
    str
        ``"<file>: <problem>"``, or the problem alone when the error names no file.
    """
    where = _final_name(exc.filename) if exc.filename is not None else ""
    if exc.filename2 is not None:
        where = f"{where} → {_final_name(exc.filename2)}"
    problem = _ADVICE.get(exc.errno or -1) or exc.strerror or str(exc)
    if isinstance(exc, FileNotFoundError) and exc.filename is not None:
        problem = "no such file or folder"
    return f"{where}: {problem}" if where else problem


def _final_name(filename: object) -> str:
    """The file a temporary name stands for (what the user asked for), else the name itself."""
    path = Path(str(filename))
    match = _PARTIAL.match(path.name)
    return str(path.with_name(match["name"])) if match else str(filename)
