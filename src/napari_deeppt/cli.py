"""The ``deeppt`` command line: thin over the core functions.

Every subcommand prints a one-line ``error: ...`` (exit status 2) for a user mistake instead of
a traceback; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .cli_common import (
    USER_ERRORS,
    describe,
    for_each_slide,
    make_output_folder,
    plan_outputs,
    stem,
)
from .errors import DeepPTError

__all__ = ["main"]


def _add_mpp_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mpp",
        type=float,
        default=None,
        help="µm per level-0 pixel; overrides the file's metadata",
    )
    parser.add_argument(
        "--magnification",
        type=float,
        default=None,
        help="objective magnification, to estimate mpp when the file has none",
    )


def _format_info(info: dict[str, Any]) -> str:
    w, h = info["dimensions"]
    mpp = (
        "unknown (pass --mpp)"
        if info["mpp"] is None
        else (f"{info['mpp']:.4f} µm/px (from {info['mpp_source']})")
    )
    power = info["objective_power"]
    lines = [
        f"file:            {info['path']}",
        f"format:          {info['format']} (vendor: {info['vendor']})",
        f"dimensions:      {w} × {h} px (level 0)",
        f"pixel size:      {mpp}",
        f"objective power: {'unknown' if power is None else f'{power:g}×'}",
        f"compression:     {info['compression']}",
        f"channels:        {info['channels']} × {info['dtype']}",
        f"levels:          {len(info['levels'])}",
        "  level      width     height  downsample   µm/px       tile  stored",
    ]
    for lv in info["levels"]:
        mpp_text = "-" if lv["mpp"] is None else f"{lv['mpp']:.4f}"
        tile = f"{lv['tile'][0]}×{lv['tile'][1]}"
        lines.append(
            f"  {lv['index']:>5} {lv['width']:>10} {lv['height']:>10} "
            f"{lv['downsample']:>11.3f} {mpp_text:>7} {tile:>10}  "
            f"{'derived' if lv['derived'] else 'file'}"
        )
    assoc = info["associated_images"]
    lines.append(
        "associated:      "
        + (", ".join(f"{k} ({v[1]}×{v[0]})" for k, v in assoc.items()) if assoc else "none")
    )
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    from .models import ModelBundle
    from .slide import open_slide

    for i, path in enumerate(args.slides):
        if i and not args.json:
            print()
        if str(path).lower().endswith(".deeppt"):  # a model bundle, not a slide
            bundle = ModelBundle.load(path)
            if args.json:
                print(json.dumps({"path": str(path), **bundle.metadata()}, default=str))
            else:
                print(f"{path}\n{bundle.describe()}")
            continue
        with open_slide(path, mpp=args.mpp, magnification=args.magnification) as slide:
            info = slide.info()
        print(json.dumps(info, default=str) if args.json else _format_info(info))
    return 0


def write_overview_png(
    slide: Any, path: Path, max_size: int = 1600, overwrite: bool = True
) -> Path:
    """Save a thumbnail of ``slide`` with a scale bar (when the pixel size is known)."""
    from PIL import Image, ImageDraw

    from .io import atomic_path

    thumb = slide.get_thumbnail(max_size)
    image = Image.fromarray(thumb[..., :3] if thumb.shape[2] >= 3 else thumb[..., 0])
    image = image.convert("RGB")
    if slide.mpp is not None:
        um_per_px = slide.mpp * slide.dimensions[0] / image.width
        bar_um = _nice_length(image.width * um_per_px / 5)
        bar_px = round(bar_um / um_per_px)
        draw = ImageDraw.Draw(image)
        x0, y0 = 12, image.height - 22
        draw.rectangle([x0 - 4, y0 - 16, x0 + bar_px + 4, y0 + 10], fill=(255, 255, 255))
        draw.rectangle([x0, y0, x0 + bar_px, y0 + 6], fill=(0, 0, 0))
        label = f"{bar_um / 1000:g} mm" if bar_um >= 1000 else f"{bar_um:g} um"
        draw.text((x0, y0 - 14), label, fill=(0, 0, 0))
    with atomic_path(path, overwrite=overwrite) as tmp:
        image.save(tmp, format="PNG")
    return path


def _nice_length(value: float) -> float:
    import math

    exponent = math.floor(math.log10(value))
    for step in (5, 2, 1):
        if step * 10**exponent <= value:
            return float(step * 10**exponent)
    return float(10**exponent)


def cmd_demo(args: argparse.Namespace) -> int:
    from .models import ModelBundle
    from .prediction import predict
    from .samples import cmu1_small_region_path, demo_bundle, synthetic_sample
    from .slide import open_slide
    from .tiles import detect_and_tile

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
        with open_slide(path) as slide:
            name = stem(slide.path)
            print(f"opened {slide}")
            png = write_overview_png(slide, out / f"{name}-overview.png")
            print(f"  wrote {png}")
            mask, grid = detect_and_tile(slide, tile_px=512, mpp=0.5)
            area = f", {mask.area_um2 / 1e6:.2f} mm² of tissue" if mask.slide_mpp else ""
            print(f"  {len(grid)} tiles of 512 px at 0.5 µm/px{area}")
            tiles_png = write_tiles_overview_png(
                slide, mask, grid, out / f"{name}-tiles.png", overwrite=True
            )
            print(f"  wrote {tiles_png}")
            prediction = predict(slide, bundle, progress=not args.quiet)
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
    return 0


def write_tiles_overview_png(
    slide: Any, mask: Any, grid: Any, path: Path, max_size: int = 1600, overwrite: bool = False
) -> Path:
    """Thumbnail with the tissue outline (green) and the kept tiles (blue) drawn on it."""
    from PIL import Image, ImageDraw
    from scipy import ndimage

    from .io import atomic_path

    thumb = slide.get_thumbnail(max_size)
    image = Image.fromarray(thumb[..., :3]).convert("RGB")
    scale_x = image.width / slide.dimensions[0]
    scale_y = image.height / slide.dimensions[1]
    outline = mask.mask ^ ndimage.binary_erosion(mask.mask)
    outline_img = Image.fromarray((outline * 255).astype(np.uint8)).resize(image.size)
    green = Image.new("RGB", image.size, (0, 200, 0))
    image.paste(green, mask=outline_img.point(lambda v: 255 if v > 0 else 0))
    draw = ImageDraw.Draw(image)
    size = grid.size_level0
    for x, y in grid.xy:
        draw.rectangle(
            [x * scale_x, y * scale_y, (x + size) * scale_x - 1, (y + size) * scale_y - 1],
            outline=(30, 80, 255),
        )
    with atomic_path(path, overwrite=overwrite) as tmp:
        image.save(tmp, format="PNG")
    return path


def cmd_tiles(args: argparse.Namespace) -> int:
    import warnings

    from .errors import NoTissueWarning
    from .io import atomic_outputs
    from .slide import open_slide
    from .tiles import detect_and_tile

    names = ["tiles.csv", "tissue.npz", "tiles.png"]
    if args.geojson:
        names += ["tissue.geojson", "tiles.geojson"]
    out = make_output_folder(args.out)
    plan = plan_outputs(args.slides, out, lambda s: [f"{s}.{n}" for n in names], args.overwrite)
    tissue = {
        "mpp": args.mask_mpp,
        "min_area_um2": args.min_area_um2,
        "exclude_pen": args.exclude_pen,
        "exclude_dark": not args.keep_dark,
    }
    if args.min_saturation is not None:
        tissue["min_saturation"] = args.min_saturation

    rois = _regions_per_slide(args.roi, args.slides)  # every slide's, before any work
    excludes = _regions_per_slide(args.exclude, args.slides)

    def one(path: str) -> None:
        slide = open_slide(path, mpp=args.mpp, magnification=args.magnification)
        roi, exclude = rois[path], excludes[path]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NoTissueWarning)
            mask, grid = detect_and_tile(
                slide,
                tissue=tissue,
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
        with atomic_outputs(plan[path], overwrite=True) as tmp:
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
        _print_written(plan[path])

    return for_each_slide(args.slides, one)


def _print_written(targets: list[Path]) -> None:
    for target in targets:
        print(f"  wrote {target}")


def cmd_features(args: argparse.Namespace) -> int:
    from .features import extract_features
    from .io import atomic_outputs
    from .slide import open_slide
    from .tiles import TileGrid, detect_and_tile

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = set(formats) - {"npy", "csv", "h5ad", "zarr"}
    if unknown:
        raise ValueError(f"unknown --formats {sorted(unknown)}; use npy, csv, h5ad, zarr")
    if args.tiles and len(args.slides) != 1:
        raise ValueError("--tiles takes the grid of one slide; give one SLIDE with it")
    if args.tiles and args.roi:
        raise ValueError("--roi restricts detected tiles; with --tiles the grid is used as is")
    out = make_output_folder(args.out)
    plan = plan_outputs(
        args.slides, out, lambda s: [f"{s}.features.{fmt}" for fmt in formats], args.overwrite
    )

    rois = _regions_per_slide(args.roi, args.slides)

    def one(path: str) -> None:
        slide = open_slide(path, mpp=args.mpp, magnification=args.magnification)
        if args.tiles:
            grid = TileGrid.load(args.tiles)
        else:
            _, grid = detect_and_tile(
                slide,
                tile_px=args.tile_px,
                mpp=args.tile_mpp,
                min_tissue=args.min_tissue,
                roi=rois[path],
                roi_class=args.roi_class,
                progress=not args.quiet,
            )
        features = extract_features(
            slide,
            grid,
            extractor=args.extractor,
            weights=args.weights,
            device=args.device,
            batch_size=args.batch_size,
            stain=None if args.stain == "none" else args.stain,
            cache_dir=args.cache_dir,
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
        with atomic_outputs(plan[path], overwrite=True) as tmp:
            for fmt, target in zip(formats, tmp, strict=True):
                writers[fmt](target, overwrite=True)
        seconds = features.provenance.get("seconds") or 0.0
        timing = " (from the cache)" if features.from_cache else f" in {seconds:.1f} s"
        print(
            f"{slide.path.name}: {len(features)} tiles × {features.feature_dim} features "
            f"({args.extractor}, weights {features.provenance['weights_hash']}){timing}"
        )
        _print_written(plan[path])

    return for_each_slide(args.slides, one)


def cmd_train(args: argparse.Namespace) -> int:
    from .training import train

    genes = None
    if args.genes:
        genes = [g.strip() for g in args.genes.split(",") if g.strip()]
    elif args.genes_file:
        genes = [g.strip() for g in Path(args.genes_file).read_text().split() if g.strip()]
    result = train(
        args.manifest,
        args.expression,
        args.out,
        extractor=args.extractor,
        weights=args.weights,
        tile_px=args.tile_px,
        tile_mpp=args.tile_mpp,
        min_tissue=args.min_tissue,
        stain=None if args.stain == "none" else args.stain,
        roi_class=args.roi_class,
        device=args.device,
        cache_dir=args.cache_dir,
        transform=args.transform,
        genes=genes,
        min_mean=args.min_mean,
        top_n=args.top_n,
        rank_by=args.rank_by,
        overwrite=args.overwrite,
        progress=not args.quiet,
        outer_folds=args.outer_folds,
        inner_folds=args.inner_folds,
        max_epochs=args.max_epochs,
        patience=args.patience,
        lr=args.lr,
        batch_slides=args.batch_slides,
        seed=args.seed,
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


def write_expression_png(
    slide: Any,
    prediction: Any,
    gene: str,
    path: Path,
    max_size: int = 1200,
    overwrite: bool = False,
) -> Path:
    """Thumbnail beside the same thumbnail with one gene's tile map over it (viridis)."""
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    from .io import atomic_path

    thumb = Image.fromarray(slide.get_thumbnail(max_size)[..., :3]).convert("RGB")
    raster = prediction.tile_map(gene)
    finite = raster[np.isfinite(raster)]
    lo, hi = np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0)
    scaled = np.clip((raster - lo) / max(hi - lo, 1e-9), 0, 1)
    rgba = (colormaps["viridis"](np.nan_to_num(scaled)) * 255).astype(np.uint8)
    rgba[..., 3] = np.where(np.isfinite(raster), 190, 0)
    grid = prediction.grid
    scale = thumb.width / slide.dimensions[0]
    stride = grid.stride_level0 * scale
    overlay = Image.fromarray(rgba, "RGBA").resize(
        (max(1, round(raster.shape[1] * stride)), max(1, round(raster.shape[0] * stride))),
        Image.Resampling.NEAREST,
    )
    right = thumb.copy()
    right.paste(overlay, (0, 0), overlay)
    canvas = Image.new("RGB", (thumb.width * 2 + 10, thumb.height + 40), (255, 255, 255))
    canvas.paste(thumb, (0, 40))
    canvas.paste(right, (thumb.width + 10, 40))
    label = f"{gene} predicted per tile ({prediction.transform}, {lo:.2f} to {hi:.2f})" + (
        "  -  DEMO MODEL trained on synthetic data" if prediction.demo else ""
    )
    ImageDraw.Draw(canvas).text((10, 12), label, fill=(0, 0, 0))
    with atomic_path(path, overwrite=overwrite) as tmp:
        canvas.save(tmp, format="PNG")
    return path


def cmd_predict(args: argparse.Namespace) -> int:
    from .io import atomic_outputs
    from .models import ModelBundle
    from .prediction import predict
    from .slide import open_slide

    bundle = ModelBundle.load(args.model)
    if args.geojson and not (args.geojson_genes.isdigit() or args.geojson_genes == "all"):
        unknown = [g for g in args.geojson_genes.split(",") if g.strip() not in bundle.genes]
        if unknown:  # before any slide is read
            raise DeepPTError(f"--geojson-genes: {unknown[:5]} not predicted by {args.model}")
    names = ["expression.csv", "tiles.h5ad", "expression.png"]
    if args.geojson:
        names.append("tiles.geojson")
    out = make_output_folder(args.out)
    plan = plan_outputs(args.slides, out, lambda s: [f"{s}.{n}" for n in names], args.overwrite)

    rois = _regions_per_slide(args.roi, args.slides)

    def one(path: str) -> None:
        slide = open_slide(path, mpp=args.mpp, magnification=args.magnification)
        prediction = predict(
            slide,
            bundle,
            roi=rois[path],
            roi_class=args.roi_class,
            weights=args.weights,
            device=args.device,
            cache_dir=args.cache_dir,
            progress=not args.quiet,
        )
        prediction.bundle_path = str(args.model)
        gene = args.gene or prediction.top_genes(1).index[0]
        with atomic_outputs(plan[path], overwrite=True) as tmp:
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
        _print_written(plan[path])

    return for_each_slide(args.slides, one)


def cmd_response(args: argparse.Namespace) -> int:
    from .response import response_scores

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


def cmd_run(args: argparse.Namespace) -> int:
    from .cohort import run_cohort

    result = run_cohort(
        args.manifest,
        args.model,
        args.out,
        scheduler=args.scheduler,
        n_workers=args.workers,
        threads_per_worker=args.threads_per_worker,
        weights=args.weights,
        device=args.device,
        cache_dir=args.cache_dir,
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


def _geojson_genes(option: str, prediction: Any) -> list[str]:
    """``all``, a number N (the top N genes by slide-level prediction), or a comma list."""
    if option.strip().lower() == "all":
        return list(prediction.genes)
    if option.strip().isdigit():
        return list(prediction.top_genes(int(option)).index)
    return [g.strip() for g in option.split(",") if g.strip()]


def _add_roi_options(parser: argparse.ArgumentParser, exclude: bool = False) -> None:
    parser.add_argument(
        "--roi",
        default=None,
        help="GeoJSON of regions of interest in level-0 px (QuPath annotations): only the "
        "tissue inside them; for several slides, a folder of <stem>.geojson files",
    )
    parser.add_argument(
        "--roi-class", default=None, help="only the ROI file's objects of this class (Tumor)"
    )
    if exclude:
        parser.add_argument(
            "--exclude", default=None, help="GeoJSON (or folder) of regions to leave out"
        )


def _regions_per_slide(option: str | None, slides: list[str]) -> dict[str, Path | None]:
    """Each slide's regions file, all found (or refused) before any slide is read."""
    return {path: _regions_for(option, Path(path), len(slides)) for path in slides}


def _regions_for(option: str | None, slide_path: Path, n_slides: int) -> Path | None:
    """The GeoJSON file for one slide: ``option`` itself, or ``<stem>.geojson`` in it."""
    if option is None:
        return None
    given = Path(option)
    if given.is_dir():
        base = stem(slide_path)
        for name in (f"{base}.geojson", f"{slide_path.name}.geojson", f"{base}.json"):
            if (given / name).is_file():
                return given / name
        raise DeepPTError(f"{given}: no {base}.geojson for {slide_path.name}")
    if not given.is_file():
        raise DeepPTError(f"{given}: no such GeoJSON file or folder")
    if n_slides > 1:
        raise ValueError(
            f"{given} would apply to all {n_slides} slides; give a folder of "
            "<stem>.geojson files, one per slide"
        )
    return given


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deeppt",
        description="Gene expression and treatment response from H&E whole-slide images.",
    )
    parser.add_argument("--version", action="version", version=f"napari-deeppt {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    info = sub.add_parser(
        "info", help="levels, pixel size, tiles and images of a slide; what a model holds"
    )
    info.add_argument("slides", nargs="+", metavar="SLIDE_OR_MODEL")
    info.add_argument("--json", action="store_true", help="one JSON object per slide")
    _add_mpp_options(info)
    info.set_defaults(func=cmd_info)

    tiles = sub.add_parser(
        "tiles",
        help="tissue mask and tile grid of slides",
        description="Detect tissue and cut the tile grid; writes "
        "<stem>.tiles.csv, <stem>.tissue.npz and <stem>.tiles.png per slide.",
    )
    tiles.add_argument("slides", nargs="+", metavar="SLIDE")
    tiles.add_argument("--out", required=True, help="output folder")
    tiles.add_argument("--tile-px", type=int, default=512, help="tile side in px (512)")
    tiles.add_argument("--tile-mpp", type=float, default=0.5, help="tile µm/px (0.5 = 20×)")
    tiles.add_argument("--stride-px", type=int, default=None, help="step in px (= tile)")
    tiles.add_argument(
        "--min-tissue", type=float, default=0.5, help="minimum tissue fraction of a kept tile (0.5)"
    )
    tiles.add_argument(
        "--edge-filter", action="store_true", help="also apply DeepPT's Sobel edge criterion"
    )
    tiles.add_argument("--mask-mpp", type=float, default=8.0, help="mask µm/px (8)")
    tiles.add_argument(
        "--min-area-um2",
        type=float,
        default=20000.0,
        help="drop tissue pieces smaller than this (µm²)",
    )
    tiles.add_argument(
        "--min-saturation",
        type=float,
        default=None,
        help="lower bound of the Otsu saturation threshold (0.07)",
    )
    tiles.add_argument("--exclude-pen", action="store_true", help="drop pen marks")
    _add_roi_options(tiles, exclude=True)
    tiles.add_argument("--keep-dark", action="store_true", help="keep near-black pixels")
    tiles.add_argument(
        "--geojson",
        action="store_true",
        help="also write <stem>.tissue.geojson and <stem>.tiles.geojson for QuPath",
    )
    tiles.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    tiles.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_mpp_options(tiles)
    tiles.set_defaults(func=cmd_tiles)

    feats = sub.add_parser(
        "features",
        help="tile features (ResNet50) of slides",
        description="Detect tissue, cut tiles and extract features; writes "
        "<stem>.features.{npy,csv,h5ad,zarr} per slide.",
    )
    feats.add_argument("slides", nargs="+", metavar="SLIDE")
    feats.add_argument("--out", required=True, help="output folder")
    feats.add_argument("--tiles", default=None, help="a tile grid CSV from 'deeppt tiles'")
    feats.add_argument("--tile-px", type=int, default=512)
    feats.add_argument("--tile-mpp", type=float, default=0.5)
    feats.add_argument("--min-tissue", type=float, default=0.5)
    feats.add_argument(
        "--extractor", default="resnet50", help="resnet50 (DeepPT), resnet18, resnet34, timm:<name>"
    )
    feats.add_argument(
        "--weights",
        default=None,
        help="weights file (.pth/.pt/.safetensors); "
        "default: torchvision's cache; 'random' for tests only",
    )
    feats.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    feats.add_argument("--batch-size", type=int, default=None)
    feats.add_argument("--stain", default="macenko", choices=["macenko", "reinhard", "none"])
    feats.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    feats.add_argument("--formats", default="npy,h5ad", help="any of npy,csv,h5ad,zarr")
    feats.add_argument("--cache-dir", default=None, help="feature cache folder")
    feats.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    feats.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    feats.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_mpp_options(feats)
    _add_roi_options(feats)
    feats.set_defaults(func=cmd_features)

    tr = sub.add_parser(
        "train",
        help="train a DeepPT model bundle",
        description="Train on slides with matched expression; writes the "
        "bundle, <out>.genes.csv (per-gene held-out R, p, Holm–Šidák) and "
        "<out>.heldout.csv.",
    )
    tr.add_argument("manifest", help="CSV: slide, sample_id, patient_id")
    tr.add_argument("expression", help="CSV/TSV (either orientation) or .h5ad")
    tr.add_argument("--out", required=True, help="bundle file to write (.deeppt)")
    tr.add_argument("--extractor", default="resnet50")
    tr.add_argument("--weights", default=None)
    tr.add_argument("--tile-px", type=int, default=512)
    tr.add_argument("--tile-mpp", type=float, default=0.5)
    tr.add_argument("--min-tissue", type=float, default=0.5)
    tr.add_argument("--stain", default="macenko", choices=["macenko", "reinhard", "none"])
    tr.add_argument(
        "--roi-class",
        default=None,
        help="with a 'roi' column in the manifest (a GeoJSON per slide): only its regions "
        "of this class (Tumor)",
    )
    tr.add_argument("--device", default="auto")
    tr.add_argument("--cache-dir", default=None)
    tr.add_argument("--transform", default="log2p1", choices=["log2p1", "none"])
    tr.add_argument("--genes", default=None, help="comma-separated genes to model")
    tr.add_argument("--genes-file", default=None, help="file with one gene per line")
    tr.add_argument("--min-mean", type=float, default=None)
    tr.add_argument("--top-n", type=int, default=None)
    tr.add_argument("--rank-by", default="variance", choices=["variance", "mean"])
    tr.add_argument("--outer-folds", type=int, default=5)
    tr.add_argument("--inner-folds", type=int, default=5)
    tr.add_argument("--max-epochs", type=int, default=200)
    tr.add_argument("--patience", type=int, default=20)
    tr.add_argument("--lr", type=float, default=1e-4)
    tr.add_argument("--batch-slides", type=int, default=16)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--overwrite", action="store_true")
    tr.add_argument("--quiet", action="store_true")
    tr.set_defaults(func=cmd_train)

    pr = sub.add_parser(
        "predict",
        help="predict expression of slides with a bundle",
        description="Writes <stem>.expression.csv (slide level), "
        "<stem>.tiles.h5ad (tile level) and <stem>.expression.png.",
    )
    pr.add_argument("slides", nargs="+", metavar="SLIDE")
    pr.add_argument("--model", required=True, help="model bundle (.deeppt)")
    pr.add_argument("--out", required=True, help="output folder")
    pr.add_argument("--gene", default=None, help="gene shown in the PNG (default: the highest)")
    pr.add_argument("--weights", default=None, help="extractor weights file")
    pr.add_argument("--device", default="auto")
    _add_roi_options(pr)
    pr.add_argument(
        "--geojson",
        action="store_true",
        help="also write <stem>.tiles.geojson: tiles with genes as QuPath measurements",
    )
    pr.add_argument(
        "--geojson-genes",
        default="100",
        help="genes in the GeoJSON: N (the top N by slide-level prediction; 100), 'all' "
        "(tiles × genes can be very large), or GENE1,GENE2",
    )
    pr.add_argument("--cache-dir", default=None)
    pr.add_argument("--overwrite", action="store_true")
    pr.add_argument("--quiet", action="store_true")
    _add_mpp_options(pr)
    pr.set_defaults(func=cmd_predict)

    rn = sub.add_parser(
        "run",
        help="predict a whole cohort on dask",
        description="Tissue, tiles, features and predictions for every slide "
        "of a manifest, one dask task per slide; resumable; writes "
        "slides/<sample_id>.*, cohort_expression.csv and run_report.csv.",
    )
    rn.add_argument("manifest", help="CSV: slide, sample_id (patient_id optional)")
    rn.add_argument("--model", required=True, help="model bundle (.deeppt)")
    rn.add_argument("--out", required=True, help="output folder")
    rn.add_argument(
        "--scheduler",
        default=None,
        help="address of an existing dask scheduler "
        "(default: a local cluster sized to this machine; 'serial': no dask)",
    )
    rn.add_argument("--workers", type=int, default=None, help="local cluster workers")
    rn.add_argument("--threads-per-worker", type=int, default=None)
    rn.add_argument("--weights", default=None)
    rn.add_argument("--device", default="auto")
    rn.add_argument(
        "--roi-class",
        default=None,
        help="with a 'roi' column in the manifest (a GeoJSON per slide): only its regions "
        "of this class (Tumor)",
    )
    rn.add_argument("--cache-dir", default=None)
    rn.add_argument("--no-resume", action="store_true", help="recompute slides already done")
    rn.add_argument("--quiet", action="store_true")
    rn.set_defaults(func=cmd_run)

    rs = sub.add_parser(
        "response",
        help="treatment-response scores from predicted expression",
        description="SELECT-style matching scores (an approximation of "
        "ENLIGHT) of every sample for every drug in a partner table; writes "
        "a samples × drugs CSV.",
    )
    rs.add_argument("expression", help="cohort predictions, samples × genes (CSV)")
    rs.add_argument("partners", help="CSV: drug, partner (gene), type (SL or SR)")
    rs.add_argument("--out", required=True, help="scores CSV to write")
    rs.add_argument(
        "--quantile",
        type=float,
        default=0.33,
        help="a partner is inactive below this cohort quantile (0.33)",
    )
    rs.add_argument(
        "--threshold",
        type=float,
        default=0.54,
        help="predicted responder at this matching score or above (0.54)",
    )
    rs.add_argument("--overwrite", action="store_true")
    rs.set_defaults(func=cmd_response)

    demo = sub.add_parser("demo", help="run the main job on the bundled sample slides")
    demo.add_argument(
        "--out",
        default="demo_output",
        help="output folder (its demo files are replaced on each run)",
    )
    demo.add_argument("--slide", default=None, help="use this slide instead of the samples")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``deeppt``."""
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
