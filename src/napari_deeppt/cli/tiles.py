"""``deeppt tiles``: the tissue mask and tile grid of slides, with a picture of both."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..tissue import TissueParams
from .common import (
    add_field_option,
    add_mpp_options,
    add_overwrite_quiet,
    add_roi_options,
    add_slides_and_out,
    add_tile_options,
    print_written,
    regions_per_slide,
    run_per_slide,
    written_together,
)
from .render import write_tiles_overview_png

__all__ = ["add_parser", "cmd_tiles"]


def add_parser(subparsers: Any) -> None:
    """Add ``tiles`` to the ``deeppt`` subcommands."""
    parser = subparsers.add_parser(
        "tiles",
        help="tissue mask and tile grid of slides",
        description="Detect tissue and cut the tile grid; writes "
        "<stem>.tiles.csv, <stem>.tissue.npz and <stem>.tiles.png per slide.",
    )
    add_slides_and_out(parser)
    add_tile_options(parser, layout=True)
    _add_tissue_options(parser)
    add_roi_options(parser, exclude=True)
    parser.add_argument(
        "--geojson",
        action="store_true",
        help="also write <stem>.tissue.geojson and <stem>.tiles.geojson for QuPath",
    )
    add_overwrite_quiet(parser)
    add_mpp_options(parser)
    parser.set_defaults(func=cmd_tiles)


def _add_tissue_options(parser: argparse.ArgumentParser) -> None:
    """The tissue detection options (defaults: :class:`~napari_deeppt.tissue.TissueParams`)."""
    add_field_option(parser, "--mask-mpp", TissueParams, "mpp", "mask µm/px (%(default)s)")
    add_field_option(
        parser,
        "--min-area-um2",
        TissueParams,
        "min_area_um2",
        "drop tissue pieces smaller than this (µm²; %(default)s)",
    )
    add_field_option(
        parser,
        "--min-saturation",
        TissueParams,
        "min_saturation",
        "lower bound of the Otsu saturation threshold (%(default)s)",
    )
    add_field_option(parser, "--exclude-pen", TissueParams, "exclude_pen", "drop pen marks")
    parser.add_argument("--keep-dark", action="store_true", help="keep near-black pixels")


def _tissue_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`~napari_deeppt.tissue.TissueParams` fields the options set."""
    return {
        "mpp": args.mask_mpp,
        "min_area_um2": args.min_area_um2,
        "min_saturation": args.min_saturation,
        "exclude_pen": args.exclude_pen,
        "exclude_dark": not args.keep_dark,
    }


def cmd_tiles(args: argparse.Namespace) -> int:
    """Detect tissue, cut tiles and write each slide's grid, mask and picture."""
    names = ["tiles.csv", "tissue.npz", "tiles.png"]
    if args.geojson:
        names += ["tissue.geojson", "tiles.geojson"]
    excludes = regions_per_slide(args.exclude, args.slides)  # every slide's, before any work
    return run_per_slide(
        args,
        names,
        lambda path, targets, roi: _tile_slide(path, args, targets, roi, excludes[path]),
    )


def _tile_slide(
    path: str,
    args: argparse.Namespace,
    targets: list[Path],
    roi: Path | None,
    exclude: Path | None,
) -> None:
    import warnings

    from ..errors import NoTissueWarning
    from ..slide import open_slide
    from ..tiles import detect_and_tile

    slide = open_slide(path, mpp=args.mpp, magnification=args.magnification)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NoTissueWarning)
        mask, grid = detect_and_tile(
            slide,
            tissue=_tissue_settings(args),
            roi=roi,
            exclude_regions=exclude,
            roi_class=args.roi_class,
            tile_px=args.tile_px,
            mpp=args.tile_mpp,
            min_tissue=args.min_tissue,
            stride_px=args.stride_px,
            edge_filter=args.edge_filter,
            progress=not args.quiet,
        )
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    with written_together(targets) as tmp:
        grid.save(tmp[0], overwrite=True)
        mask.save(tmp[1], overwrite=True)
        write_tiles_overview_png(slide, mask, grid, tmp[2], overwrite=True)
        if args.geojson:
            mask.to_geojson(tmp[3], overwrite=True)
            grid.to_geojson(tmp[4], overwrite=True)
    rows, cols = grid.grid_shape
    area = f"{mask.area_um2 / 1e6:.3f} mm² tissue" if mask.slide_mpp else ""
    print(
        f"{slide.path.name}: {len(grid)} tiles of {rows * cols} kept "
        f"({args.tile_px} px at {args.tile_mpp} µm/px), {area}"
    )
    print_written(targets)
