"""``deeppt train``: a DeepPT model bundle from slides with matched expression, or from
spatial transcriptomics sections (``--visium``, ``--hest``, ``--legacy-st``)."""

from __future__ import annotations

import argparse
from typing import Any

from ..model.inputs import TRANSFORMS, select_genes
from ..model.settings import TrainingSettings
from ..params import field_default
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
    "ae_tiles": "tiles per sample (at most) the autoencoder fits on; 'all' for every tile",
    "regressor_tiles": "latent tiles per sample (at most) the regressors train on; 'all'",
    "seed": "seeds the folds, the initialisation and the batch order",
}


#: Fold counts: passed to train() only when given (see model.folds.fit_folds).
_FOLDS = ("outer_folds", "inner_folds")
#: Tile samples: a count, or ``all`` (None) for every tile.
_TILE_SAMPLES = ("ae_tiles", "regressor_tiles")


def _count_or_all(text: str) -> int | None:
    """``all`` → None (every tile), else a count ≥ 1."""
    if text.strip().lower() == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a count ≥ 1 or 'all', got {text!r}")
    return value


def add_parser(subparsers: Any) -> None:
    """Add ``train`` to the ``deeppt`` subcommands."""
    parser = subparsers.add_parser(
        "train",
        help="train a DeepPT model bundle",
        description="Train on slides with matched expression (MANIFEST EXPRESSION), or on "
        "spots (a spot table and its counts, or spatial transcriptomics sections read with "
        "--visium/--hest/--legacy-st); writes the bundle, <out>.genes.csv (per-gene held-out "
        "R, p, Holm–Šidák) and <out>.heldout.csv.",
    )
    parser.add_argument(
        "manifest",
        nargs="?",
        metavar="MANIFEST",
        help="CSV: slide, sample_id, patient_id (or a spot table: slide, x, y, spot_id)",
    )
    parser.add_argument(
        "expression", nargs="?", metavar="EXPRESSION", help="CSV/TSV (either orientation) or .h5ad"
    )
    _add_section_options(parser)
    add_out_option(parser, help="bundle file to write (.deeppt)")
    add_feature_options(parser)
    add_tile_options(parser)
    _spot_aware_tile_px(parser)
    add_manifest_roi_class(parser)
    _add_gene_options(parser)
    for name, text in _SETTINGS.items():
        flag = "--" + name.replace("_", "-")
        if name in _FOLDS:  # not given: train() fits the default to few patients or sections
            default = field_default(TrainingSettings, name)
            text = f"{text} ({default}, fewer when the patients or sections cannot fill them)"
            add_field_option(parser, flag, TrainingSettings, name, text, default=None)
        elif name in _TILE_SAMPLES:
            add_field_option(
                parser, flag, TrainingSettings, name, f"{text} (%(default)s)", type=_count_or_all
            )
        else:
            add_field_option(parser, flag, TrainingSettings, name, f"{text} (%(default)s)")
    add_overwrite_quiet(parser)
    parser.set_defaults(func=cmd_train)


def _spot_aware_tile_px(parser: argparse.ArgumentParser) -> None:
    """``--tile-px`` defaults to train()'s own None (512 px for slides, 224 for spots), not
    to the tile grid's 512 (tests/test_spatial_readers.py holds it equal to train()'s)."""
    for action in parser._actions:
        if action.dest == "tile_px":
            action.default = None
            action.help = "tile side in px (512 for slides, 224 for spots)"


def _add_section_options(parser: argparse.ArgumentParser) -> None:
    """``--visium``, ``--hest``, ``--legacy-st`` (repeatable) and the ``--image`` of each."""
    group = parser.add_argument_group(
        "spatial transcriptomics sections (instead of MANIFEST EXPRESSION)",
        "Repeat a flag for several sections; each --image belongs to the section flag just "
        "before it. With several sections, spot ids are prefixed with the section's name.",
    )
    common = {"action": _InOrder, "dest": "sections", "default": []}
    group.add_argument("--visium", metavar="DIR", help="Space Ranger output folder", **common)
    group.add_argument(
        "--hest", metavar="H5AD", help="HEST-1k sample (.h5ad; its .tif found beside)", **common
    )
    group.add_argument(
        "--legacy-st",
        nargs=2,
        metavar=("COUNTS", "SPOTS"),
        help="legacy ST counts TSV (XxY spot ids) and spot-selection TSV",
        **common,
    )
    group.add_argument(
        "--image",
        metavar="TIF",
        help="full-resolution image of the section flag before it (optional for --hest)",
        **common,
    )


class _InOrder(argparse.Action):
    """Keeps the section flags and their ``--image`` in the order given: (flag, values)."""

    def __call__(
        self, parser: Any, namespace: argparse.Namespace, values: Any, option: Any = None
    ) -> None:
        given = [*getattr(namespace, self.dest), (option, values)]
        setattr(namespace, self.dest, given)


def _sections(args: argparse.Namespace) -> list[tuple[str, list[str], str | None]]:
    """The sections given as (flag, paths, image), misuse refused in one line."""
    sections: list[tuple[str, list[str], str | None]] = []
    for flag, values in args.sections:
        if flag != "--image":
            sections.append((flag, values if isinstance(values, list) else [values], None))
        elif not sections:
            raise ValueError(
                f"--image {values} comes before any --visium/--hest/--legacy-st; give each "
                "--image right after the section it belongs to"
            )
        elif sections[-1][2] is not None:
            flag, paths, image = sections[-1]
            raise ValueError(
                f"--image {values}: {flag} {' '.join(paths)} already has --image {image}; give "
                "one --image right after each section"
            )
        else:
            sections[-1] = (*sections[-1][:2], values)
    positional = [a for a in (args.manifest, args.expression) if a is not None]
    if sections and positional:
        raise ValueError(
            "give either MANIFEST EXPRESSION or --visium/--hest/--legacy-st sections, not both"
        )
    if not sections and len(positional) < 2:
        raise ValueError(
            "give MANIFEST EXPRESSION (a manifest or spot table and its expression table), or "
            "sections with --visium DIR --image TIF, --hest H5AD or --legacy-st COUNTS SPOTS "
            "--image TIF"
        )
    for flag, paths, image in sections:
        if image is None and flag != "--hest":
            raise ValueError(f"{flag} {' '.join(paths)}: give its full-resolution --image after it")
    return sections


def _read_sections(sections: list[tuple[str, list[str], str | None]]) -> Any:
    """Each section read (named after its folder or file when there are several), as one."""
    from ..spatial import SpatialData, read_hest, read_legacy_st, read_visium

    names = [_section_name(flag, paths) for flag, paths, _ in sections]
    names = [n if names.count(n) == 1 else f"{n}-{i + 1}" for i, n in enumerate(names)]
    parts = []
    for (flag, paths, image), name in zip(sections, names, strict=True):
        sample = name if len(sections) > 1 else None
        if flag == "--visium":
            part = read_visium(paths[0], image, sample=sample)
        elif flag == "--hest":
            part = read_hest(paths[0], image, sample=sample)
        else:
            part = read_legacy_st(paths[0], paths[1], image, sample=sample)
        print(f"read {part.source}: {len(part.spots)} spots, {part.counts.shape[1]} genes")
        parts.append(part)
    data = SpatialData.concat(parts)
    if len(parts) > 1:
        print(f"{len(parts)} sections ({', '.join(names)}): {data.counts.shape[1]} shared genes")
    return data


def _section_name(flag: str, paths: list[str]) -> str:
    """A section's name: the Space Ranger sample folder (above ``outs``) or the file stem."""
    from pathlib import Path

    path = Path(paths[0]).expanduser().resolve()
    if flag == "--visium":
        return path.parent.name if path.name == "outs" else path.name
    return path.stem


def _add_gene_options(parser: argparse.ArgumentParser) -> None:
    """Which genes are modelled and how their values are transformed."""
    parser.add_argument(
        "--transform",
        default=TRANSFORMS[0],  # train()'s default; tests/test_cli.py holds them equal
        choices=TRANSFORMS,
        help="expression transform before training (%(default)s)",
    )
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument("--genes", default=None, help="comma-separated genes to model")
    chosen.add_argument("--genes-file", default=None, help="file with one gene per line")
    parser.add_argument("--min-mean", type=float, default=None)
    parser.add_argument("--top-n", type=int, default=None)
    parser.add_argument(
        "--rank-by", default=keyword_default(select_genes, "rank_by"), choices=["variance", "mean"]
    )


def _genes(args: argparse.Namespace) -> list[str] | None:
    """``--genes`` or the genes of ``--genes-file``; None: the selection options decide."""
    from pathlib import Path

    if args.genes is not None:
        genes, source = [g.strip() for g in args.genes.split(",") if g.strip()], "--genes"
    elif args.genes_file is not None:
        try:
            text = Path(args.genes_file).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{args.genes_file}: not a readable gene list ({exc})") from None
        genes, source = [g.strip() for g in text.split() if g.strip()], args.genes_file
    else:
        return None
    if not genes:
        raise ValueError(f"{source}: names no gene; give at least one (or leave it out)")
    return genes


def cmd_train(args: argparse.Namespace) -> int:
    """Train the bundle and print the held-out summary and the files written."""
    sections = _sections(args)
    if not sections:
        return _train(args, args.manifest, args.expression)
    data = _read_sections(sections)
    return _train(args, data.spots, data.counts)


def _train(args: argparse.Namespace, manifest: Any, expression: Any) -> int:
    """Train on a manifest or spot table and its expression; print what was made."""
    from ..model.training import train  # torch: only when training

    result = train(
        manifest,
        expression,
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
        **{
            name: getattr(args, name)
            for name in _SETTINGS
            if getattr(args, name) is not None or name in _TILE_SAMPLES  # None: every tile
        },
    )
    s = result.summary
    scope = s.get("r_scope", "pooled")
    print(
        f"{s['genes']} genes: {s['significant']} significant (Holm–Šidák), "
        f"{s['r_above_0.4']} with R > 0.4, median R of the top 1000 "
        f"{s['median_r_top_1000']:.3f} (held-out Pearson R, {scope})"
    )
    if "baseline_median_r" in s:
        print(
            f"  median R {s['median_r']:.3f}; {s['baseline']}: median R "
            f"{s['baseline_median_r']:.3f} (per gene: baseline_r in the .genes.csv)"
        )
    suffixes = ["", ".genes.csv", ".heldout.csv"]
    if scope != "pooled":
        suffixes.append(".sections.csv")
    for suffix in suffixes:
        print(f"  wrote {result.bundle_path.with_suffix(suffix) if suffix else result.bundle_path}")
    return 0
