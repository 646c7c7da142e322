"""``deeppt predict``: expression of slides with a model bundle, as tables and pictures."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import DeepPTError
from .common import (
    add_feature_options,
    add_model_option,
    add_mpp_options,
    add_overwrite_quiet,
    add_precision_option,
    add_roi_options,
    add_slides_and_out,
    feature_keywords,
    print_written,
    run_per_slide,
    written_together,
)
from .render import write_expression_png

__all__ = ["add_parser", "cmd_predict"]


def add_parser(subparsers: Any) -> None:
    """Add ``predict`` to the ``deeppt`` subcommands."""
    parser = subparsers.add_parser(
        "predict",
        help="predict expression of slides with a bundle",
        description="Writes <stem>.expression.csv (slide level), "
        "<stem>.tiles.h5ad (tile level) and <stem>.expression.png.",
    )
    add_slides_and_out(parser)
    add_model_option(parser)
    parser.add_argument("--gene", default=None, help="gene shown in the PNG (default: the highest)")
    add_feature_options(parser, choose_extractor=False)
    add_precision_option(parser, bundles=True)
    add_roi_options(parser)
    parser.add_argument(
        "--geojson",
        action="store_true",
        help="also write <stem>.tiles.geojson: tiles with genes as QuPath measurements",
    )
    parser.add_argument(
        "--geojson-genes",
        default="100",
        help="genes in the GeoJSON: N (the top N by slide-level prediction; 100), 'all' "
        "(tiles × genes can be very large), or GENE1,GENE2",
    )
    add_overwrite_quiet(parser)
    add_mpp_options(parser)
    parser.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    """Predict every slide with one bundle; named GeoJSON genes are checked first."""
    from ..features.engine import require_precision
    from ..model.bundle import ModelBundle
    from ..prediction import precision_for

    bundle = ModelBundle.load(args.model)
    if args.geojson and not (args.geojson_genes.isdigit() or args.geojson_genes == "all"):
        unknown = [g for g in args.geojson_genes.split(",") if g.strip() not in bundle.genes]
        if unknown:  # before any slide is read
            raise DeepPTError(f"--geojson-genes: {unknown[:5]} not predicted by {args.model}")
    precision = precision_for(bundle.feature, args.precision)
    require_precision(precision, str(bundle.feature.get("extractor")), args.device)
    names = ["expression.csv", "tiles.h5ad", "expression.png"]
    if args.geojson:
        names.append("tiles.geojson")
    return run_per_slide(
        args, names, lambda path, targets, roi: _predict_slide(path, args, bundle, targets, roi)
    )


def _predict_slide(
    path: str, args: argparse.Namespace, bundle: Any, targets: list[Path], roi: Path | None
) -> None:
    from ..prediction import predict
    from ..slide import open_slide

    slide = open_slide(path, mpp=args.mpp, magnification=args.magnification)
    prediction = predict(
        slide,
        bundle,
        roi=roi,
        roi_class=args.roi_class,
        **feature_keywords(args),
        progress=not args.quiet,
    )
    prediction.bundle_path = str(args.model)
    gene = args.gene or prediction.top_genes(1).index[0]
    with written_together(targets) as tmp:
        prediction.to_csv(tmp[0], overwrite=True)
        prediction.to_h5ad(tmp[1], overwrite=True)
        write_expression_png(slide, prediction, gene, tmp[2], overwrite=True)
        if args.geojson:
            genes = _geojson_genes(args.geojson_genes, prediction)
            prediction.to_geojson(tmp[3], genes=genes, overwrite=True)
    demo = " (DEMO MODEL: synthetic data)" if prediction.demo else ""
    print(
        f"{slide.path.name}: {len(prediction.genes)} genes from {len(prediction.grid)} "
        f"tiles{demo}; top: "
        + ", ".join(f"{g} {v:.2f}" for g, v in prediction.top_genes(3).items())
    )
    print_written(targets)


def _geojson_genes(option: str, prediction: Any) -> list[str]:
    """``all``, a number N (the top N genes by slide-level prediction), or a comma list."""
    if option.strip().lower() == "all":
        return list(prediction.genes)
    if option.strip().isdigit():
        return list(prediction.top_genes(int(option)).index)
    return [g.strip() for g in option.split(",") if g.strip()]
