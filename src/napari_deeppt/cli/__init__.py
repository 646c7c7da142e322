"""The ``deeppt`` command line: one module per command, each thin over the core functions.

Each command module (:mod:`.info`, :mod:`.tiles`, :mod:`.features`, :mod:`.train`,
:mod:`.predict`, :mod:`.run`, :mod:`.response`, :mod:`.benchmark`, :mod:`.demo`) has an
``add_parser`` and its ``cmd_*`` function; options shared by several commands are declared
once in :mod:`.common`, and the PNG writers live in :mod:`.render`. Heavy libraries (torch,
dask, Pillow) are imported inside the commands, so ``deeppt --help`` answers at once.

Every command prints a one-line ``error: ...`` (exit status 2) for a user mistake instead of
a traceback; ``--debug`` shows the traceback. Warnings print as ``warning: ...`` lines.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from .._version import __version__
from . import benchmark, demo, features, info, predict, response, run, tiles, train
from .common import USER_ERRORS, describe

__all__ = ["build_parser", "main"]

#: The commands, in the order ``deeppt --help`` lists them.
COMMANDS = (info, tiles, features, train, predict, run, response, benchmark, demo)


def build_parser() -> argparse.ArgumentParser:
    """The ``deeppt`` parser, with one subcommand per module of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="deeppt",
        description="Gene expression and treatment response from H&E whole-slide images.",
    )
    parser.add_argument("--version", action="version", version=f"napari-deeppt {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``deeppt``.

    Parameters
    ----------
    argv
        The arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0 done, 1 some slides failed, 2 a user error, 130 interrupted.
    """
    import warnings

    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return int(args.func(args) or 0)
        except USER_ERRORS as exc:
            if args.debug:
                raise
            print(f"error: {describe(exc)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("cancelled", file=sys.stderr)
            return 130


def _show_warning(message: Any, category: Any, filename: str, lineno: int, *_: Any) -> None:
    """Warnings reach a person as ``warning: <message>``, not as a source line."""
    print(f"warning: {message}", file=sys.stderr)
