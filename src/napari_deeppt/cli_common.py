"""What every multi-slide ``deeppt`` command shares: output names, per-slide errors, messages.

- :func:`plan_outputs` names each slide's output files before any work, refusing two slides that
  would write one file (``a/x.tif`` and ``b/x.tif``) and outputs that exist without
  ``--overwrite``.
- :func:`for_each_slide` runs one slide at a time; a slide that fails is reported in one line and
  the others still run, then a summary and exit status 1.
- :func:`describe` turns any error a user can cause into one line.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import DeepPTError, OutputError

__all__ = ["USER_ERRORS", "describe", "for_each_slide", "plan_outputs", "stem"]

#: Errors that are the user's to fix (bad input, full disk...): one line, never a traceback.
USER_ERRORS = (DeepPTError, OSError, ValueError)

_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr", ".svs", ".tiff", ".tif", ".zarr")


def stem(path: Path) -> str:
    """A slide's name without its (double) extension: ``case.ome.tif`` → ``case``."""
    name = path.name
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def describe(exc: BaseException) -> str:
    """One line for an error a user can cause: the file, the problem, what to do."""
    from .io import describe_os_error

    if isinstance(exc, OSError) and not isinstance(exc, DeepPTError) and exc.errno is not None:
        return describe_os_error(exc)
    return str(exc)


def plan_outputs(
    slides: Sequence[str | os.PathLike[str]],
    out: Path,
    names: Callable[[str], list[str]],
    overwrite: bool,
) -> dict[str, list[Path]]:
    """Each slide's output files (``names(stem)`` in ``out``), checked before any work.

    Raises
    ------
    OutputError
        A slide is given twice, or two slides would write one file (names compared without
        case: one file on macOS and Windows).
    FileExistsError
        Outputs exist and ``overwrite`` is False.
    """
    plan: dict[str, list[Path]] = {}
    owners: dict[str, str] = {}
    resolved: dict[Path, str] = {}
    for slide in map(str, slides):
        real = Path(slide).expanduser().resolve()
        if real in resolved:
            raise OutputError(f"{slide}: given twice (also as {resolved[real]}); give it once")
        resolved[real] = slide
        targets = [out / name for name in names(stem(Path(slide)))]
        for target in targets:
            owner = owners.setdefault(target.name.casefold(), slide)
            if owner != slide:
                raise OutputError(
                    f"{owner} and {slide} would both write {target}; rename one of them or "
                    "run them into different --out folders (deeppt run names outputs by the "
                    "manifest's sample_id)"
                )
        plan[slide] = targets
    existing = [str(t) for targets in plan.values() for t in targets if t.exists()]
    if existing and not overwrite:
        shown = ", ".join(existing[:4]) + (f" and {len(existing) - 4} more" if existing[4:] else "")
        raise FileExistsError(f"{shown} already exist; pass --overwrite to replace them")
    return plan


def make_output_folder(out: str | os.PathLike[str]) -> Path:
    """Create ``out`` (and its parents) or say in one line why it cannot be made."""
    from .io import describe_os_error

    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot make the output folder: {describe_os_error(exc)}") from exc
    return folder


def for_each_slide(slides: Sequence[str], work: Callable[[str], None]) -> int:
    """Run ``work`` on every slide; a failing slide is reported and the others still run.

    With one slide its error propagates (exit status 2); with several each failure is one
    ``error:`` line, and after the last slide a summary line and exit status 1.
    """
    if len(slides) == 1:
        work(slides[0])
        return 0
    failed: list[str] = []
    for slide in slides:
        try:
            work(slide)
        except USER_ERRORS as exc:
            print(f"error: {describe(exc)}", file=sys.stderr)
            failed.append(slide)
    if failed:
        names = ", ".join(Path(s).name for s in failed[:10])
        more = f" and {len(failed) - 10} more" if len(failed) > 10 else ""
        print(
            f"error: {len(failed)} of {len(slides)} slides failed ({names}{more}); the others "
            "were written",
            file=sys.stderr,
        )
        return 1
    return 0
