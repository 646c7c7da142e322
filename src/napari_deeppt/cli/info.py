"""``deeppt info``: levels, pixel size, tiles and images of a slide; what a model holds."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .common import add_mpp_options

__all__ = ["add_parser", "cmd_info"]


def add_parser(subparsers: Any) -> None:
    """Add ``info`` to the ``deeppt`` subcommands."""
    parser = subparsers.add_parser(
        "info", help="levels, pixel size, tiles and images of a slide; what a model holds"
    )
    parser.add_argument("slides", nargs="+", metavar="SLIDE_OR_MODEL")
    parser.add_argument("--json", action="store_true", help="one JSON object per slide")
    add_mpp_options(parser)
    parser.set_defaults(func=cmd_info)


def cmd_info(args: argparse.Namespace) -> int:
    """Print each slide's (or model bundle's) description, as text or JSON lines."""
    from ..model.bundle import ModelBundle
    from ..slide import open_slide

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
