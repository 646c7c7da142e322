"""``deeppt demo``: the main job (tiles, prediction, pictures) on the bundled sample slides."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..tiles import TileGridParams
from .common import add_overwrite_quiet, make_output_folder, stem
from .render import write_expression_png, write_overview_png, write_tiles_overview_png

__all__ = ["add_parser", "cmd_demo"]


def add_parser(subparsers: Any) -> None:
    """Add ``demo`` to the ``deeppt`` subcommands."""
    parser = subparsers.add_parser("demo", help="run the main job on the bundled sample slides")
    parser.add_argument(
        "--out",
        default="demo_output",
        help="output folder (its demo files are replaced on each run)",
    )
    parser.add_argument("--slide", default=None, help="use this slide instead of the samples")
    add_overwrite_quiet(parser, overwrite=False)
    parser.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    """Train (or reuse) the demo model, then tile, predict and draw each sample slide."""
    from ..model.bundle import ModelBundle
    from ..samples import cmu1_small_region_path, demo_bundle, synthetic_sample

    out = make_output_folder(args.out)
    slides = (
        [Path(args.slide)] if args.slide else [cmu1_small_region_path(), synthetic_sample().path]
    )
    print("training (or reusing) the DEMO model on a synthetic cohort…")
    bundle = ModelBundle.load(demo_bundle(progress=not args.quiet))
    print(
        f"  demo model: {len(bundle.genes)} synthetic genes, held-out: "
        f"{bundle.metrics['significant']} significant"
    )
    for path in slides:
        _demo_slide(path, bundle, out, progress=not args.quiet)
    return 0


def _demo_slide(path: Path, bundle: Any, out: Path, progress: bool) -> None:
    from ..prediction import predict
    from ..slide import open_slide
    from ..tiles import detect_and_tile

    tiling = TileGridParams()  # DeepPT's tiles: 512 px at 0.5 µm/px
    with open_slide(path) as slide:
        name = stem(slide.path)
        print(f"opened {slide}")
        png = write_overview_png(slide, out / f"{name}-overview.png")
        print(f"  wrote {png}")
        mask, grid = detect_and_tile(slide, tile_px=tiling.tile_px, mpp=tiling.mpp)
        area = f", {mask.area_um2 / 1e6:.2f} mm² of tissue" if mask.slide_mpp else ""
        print(f"  {len(grid)} tiles of {tiling.tile_px} px at {tiling.mpp} µm/px{area}")
        tiles_png = write_tiles_overview_png(
            slide, mask, grid, out / f"{name}-tiles.png", overwrite=True
        )
        print(f"  wrote {tiles_png}")
        prediction = predict(slide, bundle, progress=progress)
        gene = prediction.top_genes(1).index[0]
        files = [
            prediction.to_csv(out / f"{name}.expression.csv", overwrite=True),
            prediction.to_h5ad(out / f"{name}.tiles.h5ad", overwrite=True),
            write_expression_png(
                slide, prediction, gene, out / f"{name}.expression.png", overwrite=True
            ),
            prediction.to_geojson(out / f"{name}.tiles.geojson", overwrite=True),
        ]
        print(
            f"  DEMO MODEL prediction from {len(prediction.grid)} tiles; top: "
            + ", ".join(f"{g} {v:.2f}" for g, v in prediction.top_genes(3).items())
        )
        for file in files:
            print(f"  wrote {file}")
