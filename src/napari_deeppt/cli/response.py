"""``deeppt response``: treatment-response scores of a cohort's predicted expression."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..response import response_scores
from .common import add_out_option, add_overwrite_quiet, keyword_default

__all__ = ["add_parser", "cmd_response"]


def add_parser(subparsers: Any) -> None:
    """Add ``response`` to the ``deeppt`` subcommands."""
    parser = subparsers.add_parser(
        "response",
        help="treatment-response scores from predicted expression",
        description="SELECT-style matching scores (an approximation of "
        "ENLIGHT) of every sample for every drug in a partner table; writes "
        "a samples × drugs CSV.",
    )
    parser.add_argument("expression", help="cohort predictions, samples × genes (CSV)")
    parser.add_argument("partners", help="CSV: drug, partner (gene), type (SL or SR)")
    add_out_option(parser, help="scores CSV to write")
    quantile = keyword_default(response_scores, "quantile")
    threshold = keyword_default(response_scores, "threshold")
    parser.add_argument(
        "--quantile",
        type=float,
        default=quantile,
        help=f"a partner is inactive below this cohort quantile ({quantile})",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=threshold,
        help=f"predicted responder at this matching score or above ({threshold})",
    )
    add_overwrite_quiet(parser, quiet=False)
    parser.set_defaults(func=cmd_response)


def cmd_response(args: argparse.Namespace) -> int:
    """Score every sample for every drug; print the responders and what could not be scored."""
    result = response_scores(
        args.expression, args.partners, quantile=args.quantile, threshold=args.threshold
    )
    out = Path(args.out)
    result.to_csv(out, overwrite=args.overwrite)
    for drug, genes in result.missing_partners.items():
        print(
            f"warning: {drug}: partner(s) not among the predicted genes: {', '.join(genes[:10])}",
            file=sys.stderr,
        )
    for message in result.messages:
        print(f"warning: {message}", file=sys.stderr)
    scored = result.scores.columns[result.scores.notna().any()]
    responders = result.responders[scored].sum()
    print(
        f"{len(result.scores)} samples × {len(scored)} drugs scored (SELECT-style matching "
        f"score; inactive below the cohort's {result.quantile:.0%} quantile; responder at "
        f"≥ {result.threshold})"
    )
    for drug in scored:
        print(f"  {drug}: {int(responders[drug])} predicted responder(s)")
    print(f"  wrote {out}")
    return 0
