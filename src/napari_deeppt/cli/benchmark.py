"""``deeppt benchmark-extractors``: which feature extractor predicts a lab's own spots best."""

from __future__ import annotations

import argparse
from typing import Any

from ..extractor_benchmark import benchmark_extractors
from .common import add_out_option, add_overwrite_quiet, device_name, keyword_default

__all__ = ["add_parser", "cmd_benchmark_extractors"]


def _weights_pair(text: str) -> tuple[str, str]:
    """``NAME=PATH`` → (name, path)."""
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name.strip(), path.strip()


def add_parser(subparsers: Any) -> None:
    """Add ``benchmark-extractors`` to the ``deeppt`` subcommands."""
    parser = subparsers.add_parser(
        "benchmark-extractors",
        help="compare feature extractors on your spatial data (HEST protocol)",
        description="For each extractor: one tile centred on each spot, its features, and a "
        "PCA-256 + ridge probe scored by per-gene Pearson R on held-out sections (HEST-"
        "Benchmark's protocol, top variable genes). Writes extractor_benchmark.csv (one row "
        "per extractor), extractor_benchmark_genes.csv (genes × extractors) and a figure.",
    )
    parser.add_argument("spots", help="spot table: slide, x, y (level-0 px), spot_id")
    parser.add_argument("counts", help="counts, spots × genes (CSV/TSV, or .h5ad)")
    parser.add_argument(
        "--extractors",
        default=",".join(keyword_default(benchmark_extractors, "extractors")),
        help="comma-separated extractor names, e.g. resnet50,uni,h-optimus-0 (%(default)s)",
    )
    parser.add_argument(
        "--weights",
        action="append",
        type=_weights_pair,
        default=[],
        metavar="NAME=PATH",
        help="an extractor's weights file or Hugging Face snapshot folder (repeatable)",
    )
    for name, kind, text in (
        ("genes", int, "most variable genes scored"),
        ("folds", int, "folds at most, each holding out whole groups"),
        ("components", int, "PCA components"),
        ("tile_px", int, "tile size in pixels"),
        ("tile_mpp", float, "tile resolution in µm per pixel"),
    ):
        default = keyword_default(benchmark_extractors, name)
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=kind, default=default, help=f"{text} (%(default)s)")
    parser.add_argument(
        "--group-by",
        default=keyword_default(benchmark_extractors, "group_by"),
        help="'section' or a spot-table column such as patient_id (%(default)s)",
    )
    parser.add_argument(
        "--device", type=device_name, default="auto", help="auto, cpu, cuda, cuda:1, mps"
    )
    parser.add_argument("--cache-dir", default=None, help="feature cache folder")
    add_out_option(parser, help="folder for the tables and the figure")
    add_overwrite_quiet(parser)
    parser.set_defaults(func=cmd_benchmark_extractors)


def cmd_benchmark_extractors(args: argparse.Namespace) -> int:
    """Run the benchmark and print one line per extractor, best first."""
    weights = dict(args.weights)
    result = benchmark_extractors(
        args.spots,
        args.counts,
        args.extractors,
        weights=weights,
        genes=args.genes,
        group_by=args.group_by,
        folds=args.folds,
        components=args.components,
        tile_px=args.tile_px,
        tile_mpp=args.tile_mpp,
        device=args.device,
        cache_dir=args.cache_dir,
        out=args.out,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(f"{len(result.per_gene)} genes, {result.folds}: held-out Pearson R of PCA + ridge")
    for name, row in result.summary.iterrows():
        print(
            f"  {name:<16} mean R {row['mean_r']:.3f}, median {row['median_r']:.3f} "
            f"({row['feature_dim']} features, {row['seconds']:.0f} s)"
        )
    for name in (
        "extractor_benchmark.csv",
        "extractor_benchmark_genes.csv",
        "extractor_benchmark.png",
    ):
        print(f"  wrote {args.out}/{name}")
    return 0
