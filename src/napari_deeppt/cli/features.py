"""``deeppt features``: tile features of slides, in the formats asked for."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..features import extract_features
from ..features.engine import require_precision
from ..features.params import FeatureDtype, FeatureParams
from ..params import field_default
from .common import (
    add_feature_options,
    add_mpp_options,
    add_overwrite_quiet,
    add_precision_option,
    add_roi_options,
    add_slides_and_out,
    add_tile_options,
    feature_keywords,
    print_written,
    run_per_slide,
    written_together,
)

__all__ = ["add_parser", "cmd_features"]

FORMATS = ("npy", "csv", "h5ad", "zarr")


def add_parser(subparsers: Any) -> None:
    """Add ``features`` to the ``deeppt`` subcommands."""
    parser = subparsers.add_parser(
        "features",
        help="tile features (ResNet50) of slides",
        description="Detect tissue, cut tiles and extract features; writes "
        "<stem>.features.{npy,csv,h5ad,zarr} per slide.",
    )
    add_slides_and_out(parser)
    parser.add_argument("--tiles", default=None, help="a tile grid CSV from 'deeppt tiles'")
    add_tile_options(parser)
    add_feature_options(parser, batch_size=True)
    add_precision_option(parser)
    parser.add_argument(
        "--dtype",
        default=field_default(FeatureParams, "dtype"),
        choices=[str(dtype) for dtype in FeatureDtype],
    )
    parser.add_argument("--formats", default="npy,h5ad", help="any of " + ",".join(FORMATS))
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    add_overwrite_quiet(parser)
    add_mpp_options(parser)
    add_roi_options(parser)
    parser.set_defaults(func=cmd_features)


def cmd_features(args: argparse.Namespace) -> int:
    """Extract each slide's tile features and write them in every format asked for."""
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if not formats:
        raise ValueError("--formats names no format; use any of " + ", ".join(FORMATS))
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown --formats {sorted(unknown)}; use {', '.join(FORMATS)}")
    if args.tiles and len(args.slides) != 1:
        raise ValueError("--tiles takes the grid of one slide; give one SLIDE with it")
    if args.tiles and args.roi:
        raise ValueError("--roi restricts detected tiles; with --tiles the grid is used as is")
    require_precision(args.precision, args.extractor, args.device)  # before any slide
    return run_per_slide(
        args,
        [f"features.{fmt}" for fmt in formats],
        lambda path, targets, roi: _features_of(path, args, formats, targets, roi),
    )


def _features_of(
    path: str, args: argparse.Namespace, formats: list[str], targets: list[Path], roi: Path | None
) -> None:
    from ..slide import open_slide
    from ..tiles import TileGrid, detect_and_tile

    slide = open_slide(path, mpp=args.mpp, magnification=args.magnification)
    if args.tiles:
        grid = TileGrid.load(args.tiles)
    else:
        _, grid = detect_and_tile(
            slide,
            tile_px=args.tile_px,
            mpp=args.tile_mpp,
            min_tissue=args.min_tissue,
            roi=roi,
            roi_class=args.roi_class,
            progress=not args.quiet,
        )
    features = extract_features(
        slide,
        grid,
        **feature_keywords(args),
        progress=not args.quiet,
        dtype=args.dtype,
        use_cache=not args.no_cache,
    )
    writers = {
        "npy": features.to_npy,
        "csv": features.to_csv,
        "h5ad": features.to_h5ad,
        "zarr": features.save,
    }
    with written_together(targets) as tmp:
        for fmt, target in zip(formats, tmp, strict=True):
            writers[fmt](target, overwrite=True)
    seconds = features.provenance.get("seconds") or 0.0
    timing = " (from the cache)" if features.from_cache else f" in {seconds:.1f} s"
    precision = features.provenance.get("precision", "float32")
    print(
        f"{slide.path.name}: {len(features)} tiles × {features.feature_dim} features "
        f"({args.extractor}, weights {features.provenance['weights_hash']}"
        f"{'' if precision == 'float32' else ', ' + precision}){timing}"
    )
    print_written(targets)
