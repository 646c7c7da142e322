"""``deeppt train``: a DeepPT model bundle from slides with matched expression."""

from __future__ import annotations

import argparse
from typing import Any

from ..model.inputs import TRANSFORMS, select_genes
from ..model.settings import TrainingSettings
from .common import (
    add_feature_options,
    add_field_option,
    add_manifest_roi_class,
    add_out_option,
    add_overwrite_quiet,
    add_tile_options,
    feature_keywords,
    keyword_default,
)

__all__ = ["add_parser", "cmd_train"]

#: ``--outer-folds`` … ``--seed``: fields of TrainingSettings, with their help.
_SETTINGS = {
    "outer_folds": "patient-level folds giving the held-out predictions",
    "inner_folds": "folds inside each outer one; their models are ensembled",
    "max_epochs": "regressor epochs at most",
    "patience": "epochs without a better validation R before stopping",
    "lr": "Adam's learning rate",
    "batch_slides": "samples per regressor batch",
    "seed": "seeds the folds, the initialisation and the batch order",
}


def add_parser(subparsers: Any) -> None:
    """Add ``train`` to the ``deeppt`` subcommands."""
    parser = subparsers.add_parser(
        "train",
        help="train a DeepPT model bundle",
        description="Train on slides with matched expression; writes the "
        "bundle, <out>.genes.csv (per-gene held-out R, p, Holm–Šidák) and "
        "<out>.heldout.csv.",
    )
    parser.add_argument("manifest", help="CSV: slide, sample_id, patient_id")
    parser.add_argument("expression", help="CSV/TSV (either orientation) or .h5ad")
    add_out_option(parser, help="bundle file to write (.deeppt)")
    add_feature_options(parser)
    add_tile_options(parser)
    add_manifest_roi_class(parser)
    _add_gene_options(parser)
    for name, text in _SETTINGS.items():
        flag = "--" + name.replace("_", "-")
        add_field_option(parser, flag, TrainingSettings, name, f"{text} (%(default)s)")
    add_overwrite_quiet(parser)
    parser.set_defaults(func=cmd_train)


def _add_gene_options(parser: argparse.ArgumentParser) -> None:
    """Which genes are modelled and how their values are transformed."""
    parser.add_argument(
        "--transform",
        default=TRANSFORMS[0],  # train()'s default; tests/test_cli.py holds them equal
        choices=TRANSFORMS,
        help="expression transform before training (%(default)s)",
    )
    parser.add_argument("--genes", default=None, help="comma-separated genes to model")
    parser.add_argument("--genes-file", default=None, help="file with one gene per line")
    parser.add_argument("--min-mean", type=float, default=None)
    parser.add_argument("--top-n", type=int, default=None)
    parser.add_argument(
        "--rank-by", default=keyword_default(select_genes, "rank_by"), choices=["variance", "mean"]
    )


def _genes(args: argparse.Namespace) -> list[str] | None:
    """``--genes`` or the genes of ``--genes-file``; None: the selection options decide."""
    from pathlib import Path

    if args.genes:
        return [g.strip() for g in args.genes.split(",") if g.strip()]
    if args.genes_file:
        return [g.strip() for g in Path(args.genes_file).read_text().split() if g.strip()]
    return None


def cmd_train(args: argparse.Namespace) -> int:
    """Train the bundle and print the held-out summary and the files written."""
    from ..model.training import train  # torch: only when training

    result = train(
        args.manifest,
        args.expression,
        args.out,
        tile_px=args.tile_px,
        tile_mpp=args.tile_mpp,
        min_tissue=args.min_tissue,
        roi_class=args.roi_class,
        transform=args.transform,
        genes=_genes(args),
        min_mean=args.min_mean,
        top_n=args.top_n,
        rank_by=args.rank_by,
        overwrite=args.overwrite,
        progress=not args.quiet,
        **feature_keywords(args),
        **{name: getattr(args, name) for name in _SETTINGS},
    )
    s = result.summary
    scope = s.get("r_scope", "pooled")
    print(
        f"{s['genes']} genes: {s['significant']} significant (Holm–Šidák), "
        f"{s['r_above_0.4']} with R > 0.4, median R of the top 1000 "
        f"{s['median_r_top_1000']:.3f} (held-out Pearson R, {scope})"
    )
    suffixes = ["", ".genes.csv", ".heldout.csv"]
    if scope != "pooled":
        suffixes.append(".sections.csv")
    for suffix in suffixes:
        print(f"  wrote {result.bundle_path.with_suffix(suffix) if suffix else result.bundle_path}")
    return 0
