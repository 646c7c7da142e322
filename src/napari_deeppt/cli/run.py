"""``deeppt run``: predictions for a whole cohort, one dask task per slide, resumable."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..cohort.params import CohortParams
from ..params import field_default
from .common import (
    add_feature_options,
    add_field_option,
    add_manifest_roi_class,
    add_model_option,
    add_out_option,
    add_overwrite_quiet,
    add_precision_option,
    feature_keywords,
)

__all__ = ["add_parser", "cmd_run"]


def add_parser(subparsers: Any) -> None:
    """Add ``run`` to the ``deeppt`` subcommands."""
    parser = subparsers.add_parser(
        "run",
        help="predict a whole cohort on dask",
        description="Tissue, tiles, features and predictions for every slide "
        "of a manifest, one dask task per slide; resumable; writes "
        "slides/<sample_id>.*, cohort_expression.csv and run_report.csv.",
    )
    parser.add_argument("manifest", help="CSV: slide, sample_id (patient_id optional)")
    add_model_option(parser)
    add_out_option(parser)
    parser.add_argument(
        "--scheduler",
        default=field_default(CohortParams, "scheduler"),
        help="address of an existing dask scheduler "
        "(default: a local cluster sized to this machine; 'serial': no dask)",
    )
    add_field_option(parser, "--workers", CohortParams, "n_workers", "local cluster workers")
    add_field_option(
        parser, "--threads-per-worker", CohortParams, "threads_per_worker", "threads per worker"
    )
    add_feature_options(parser, choose_extractor=False)
    add_precision_option(parser, bundles=True)
    add_manifest_roi_class(parser)
    parser.add_argument("--no-resume", action="store_true", help="recompute slides already done")
    add_overwrite_quiet(parser, overwrite=False)
    parser.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    """Run the cohort; print the status counts, each failed slide and the files written."""
    from ..cohort import run_cohort

    result = run_cohort(
        args.manifest,
        args.model,
        args.out,
        scheduler=args.scheduler,
        n_workers=args.workers,
        threads_per_worker=args.threads_per_worker,
        **feature_keywords(args),
        resume=not args.no_resume,
        roi_class=args.roi_class,
        progress=not args.quiet,
    )
    counts = result.report["status"].value_counts().to_dict()
    print(f"{len(result.report)} slides: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    for _, row in result.report[result.report["status"] == "error"].iterrows():
        print(f"  error: {row['sample_id']}: {row['error']}", file=sys.stderr)
    print(
        f"  wrote {result.out / 'cohort_expression.csv'} ({result.expression.shape[0]} "
        f"samples × {result.expression.shape[1]} genes)"
    )
    print(f"  wrote {result.out / 'run_report.csv'}")
    return 0 if "error" not in counts else 1
