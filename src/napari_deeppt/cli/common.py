"""What the ``deeppt`` commands share: options declared once, output plans, per-slide errors.

Options
    Each ``add_*`` function adds one family of options to a command's parser, so a flag is
    declared in one place whatever the number of commands that take it. Defaults come from the
    core: a dataclass field (:func:`add_field_option`) or a core function's keyword
    (:func:`keyword_default`), never a repeated literal.
Outputs and errors
    :func:`plan_outputs` names each slide's output files before any work, refusing two slides
    that would write one file (``a/x.tif`` and ``b/x.tif``) and outputs that exist without
    ``--overwrite``; :func:`for_each_slide` runs one slide at a time, reporting a slide that
    fails in one line while the others still run; :func:`describe` turns any error a user can
    cause into one line.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import os
import sys
import typing
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..devices import Device
from ..errors import DeepPTError, OutputError
from ..features.params import FeatureParams, ModelPrecision
from ..params import field_default, field_of
from ..slide import slide_stem as stem
from ..stain import StainMethod
from ..tiles import TileGridParams

__all__ = [
    "USER_ERRORS",
    "add_feature_options",
    "add_field_option",
    "add_manifest_roi_class",
    "add_model_option",
    "add_mpp_options",
    "add_out_option",
    "add_overwrite_quiet",
    "add_precision_option",
    "add_roi_options",
    "add_slides_and_out",
    "add_tile_options",
    "describe",
    "device_name",
    "feature_keywords",
    "for_each_slide",
    "keyword_default",
    "make_output_folder",
    "plan_outputs",
    "print_written",
    "regions_per_slide",
    "run_per_slide",
    "stem",
    "written_together",
]

#: Errors that are the user's to fix (bad input, full disk...): one line, never a traceback.
USER_ERRORS = (DeepPTError, OSError, ValueError)


# -- options made from the core's declarations -----------------------------------------------
def _option_type(hint: Any) -> type:
    """``int`` for ``int``, ``float`` for ``float | None``: what argparse converts to."""
    kinds = [kind for kind in typing.get_args(hint) if kind is not type(None)] or [hint]
    if len(kinds) != 1 or not callable(kinds[0]):
        raise TypeError(f"no single option type for {hint!r}")
    return kinds[0]


def add_field_option(
    parser: argparse.ArgumentParser,
    flag: str,
    cls: type,
    name: str,
    help: str,
    **overrides: Any,
) -> None:
    """Add ``flag`` with the type and default of the dataclass field ``cls.name``.

    Parameters
    ----------
    parser
        The command's parser.
    flag
        The option, e.g. ``--tile-px``.
    cls, name
        The parameter dataclass and its field: the single source of the default.
    help
        Help text; argparse replaces ``%(default)s`` in it by the default.
    **overrides
        Passed to :meth:`~argparse.ArgumentParser.add_argument` over what the field gives
        (e.g. ``dest``).
    """
    field = field_of(cls, name)
    options: dict[str, Any] = {"default": field.default, "help": help}
    if isinstance(field.default, bool):
        if field.default:
            raise TypeError(f"{cls.__name__}.{name} defaults to True: give a --no- flag by hand")
        options["action"] = "store_true"
    else:
        options["type"] = _option_type(typing.get_type_hints(cls)[name])
    parser.add_argument(flag, **(options | overrides))


def keyword_default(function: Callable[..., Any], name: str) -> Any:
    """The default of ``function``'s keyword ``name``: the core's own default for an option."""
    default = inspect.signature(function).parameters[name].default
    if default is inspect.Parameter.empty:
        raise TypeError(f"{function.__name__}() has no default for {name!r}")
    return default


# -- option families ---------------------------------------------------------------------------
def add_out_option(parser: argparse.ArgumentParser, help: str = "output folder") -> None:
    """``--out`` (required)."""
    parser.add_argument("--out", required=True, help=help)


def add_model_option(parser: argparse.ArgumentParser) -> None:
    """``--model`` (required): the model bundle to predict with."""
    parser.add_argument("--model", required=True, help="model bundle (.deeppt)")


def add_overwrite_quiet(
    parser: argparse.ArgumentParser, overwrite: bool = True, quiet: bool = True
) -> None:
    """``--overwrite`` (replace existing outputs) and ``--quiet`` (no progress bars)."""
    if overwrite:
        parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    if quiet:
        parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_mpp_options(parser: argparse.ArgumentParser) -> None:
    """``--mpp`` and ``--magnification``: the pixel size when the file's metadata is wrong."""
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


def add_roi_options(parser: argparse.ArgumentParser, exclude: bool = False) -> None:
    """``--roi``, ``--roi-class`` and (with ``exclude``) ``--exclude``: regions per slide."""
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


def add_manifest_roi_class(parser: argparse.ArgumentParser) -> None:
    """``--roi-class`` for commands whose manifest names the regions (``train``, ``run``)."""
    parser.add_argument(
        "--roi-class",
        default=None,
        help="with a 'roi' column in the manifest (a GeoJSON per slide): only its regions "
        "of this class (Tumor)",
    )


def add_tile_options(parser: argparse.ArgumentParser, layout: bool = False) -> None:
    """``--tile-px``, ``--tile-mpp``, ``--min-tissue``; with ``layout`` also ``--stride-px``
    and ``--edge-filter`` (defaults: :class:`~napari_deeppt.tiles.TileGridParams`)."""
    add_field_option(
        parser, "--tile-px", TileGridParams, "tile_px", "tile side in px (%(default)s)"
    )
    add_field_option(parser, "--tile-mpp", TileGridParams, "mpp", "tile µm/px (%(default)s = 20×)")
    add_field_option(
        parser,
        "--min-tissue",
        TileGridParams,
        "min_tissue",
        "minimum tissue fraction of a kept tile (%(default)s)",
    )
    if layout:
        add_field_option(parser, "--stride-px", TileGridParams, "stride_px", "step in px (= tile)")
        add_field_option(
            parser,
            "--edge-filter",
            TileGridParams,
            "edge_filter",
            "also apply DeepPT's Sobel edge criterion",
        )


def device_name(text: str) -> str:
    """``--device``'s value, checked before any work (argparse reports the one line)."""
    from ..devices import check_device_name

    try:
        return check_device_name(text)
    except DeepPTError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_feature_options(
    parser: argparse.ArgumentParser, choose_extractor: bool = True, batch_size: bool = False
) -> None:
    """How features are made: ``--weights``, ``--device``, ``--cache-dir``; with
    ``choose_extractor`` also ``--extractor`` and ``--stain`` (a model bundle fixes both);
    with ``batch_size`` also ``--batch-size`` (defaults: :class:`FeatureParams`)."""
    if choose_extractor:
        parser.add_argument(
            "--extractor",
            default=field_default(FeatureParams, "extractor"),
            help="resnet50 (DeepPT), resnet18, resnet34, a pathology foundation model (uni, "
            "uni2-h, virchow2, h-optimus-0, h-optimus-1, prov-gigapath, phikon-v2, "
            "conch-v1.5), timm:<name>",
        )
    parser.add_argument(
        "--weights",
        default=None,
        help="extractor weights: a .pth/.pt/.bin/.safetensors file or a Hugging Face "
        "snapshot folder; default: torchvision's or Hugging Face's local cache; 'random' for "
        "tests only",
    )
    parser.add_argument(
        "--device",
        type=device_name,
        default=str(field_default(FeatureParams, "device")),
        help=", ".join(map(str, Device)) + ", or an indexed device (cuda:1)",
    )
    if batch_size:
        parser.add_argument("--batch-size", type=int, default=None, help="tiles per batch")
    if choose_extractor:
        parser.add_argument(
            "--stain",
            default=str(field_default(FeatureParams, "stain")),
            choices=[str(method) for method in StainMethod],
            help="stain normalisation (%(default)s)",
        )
    parser.add_argument("--cache-dir", default=None, help="feature cache folder")


def add_precision_option(parser: argparse.ArgumentParser, bundles: bool = False) -> None:
    """``--precision``: the model's arithmetic (:class:`FeatureParams`' ``precision``).

    With ``bundles`` (prediction) the default is the model bundle's own precision.
    """
    default = None if bundles else str(field_default(FeatureParams, "precision"))
    said = (
        "default: the model's, float32 unless trained on bfloat16 or int8 features"
        if bundles
        else ("default %(default)s")
    )
    parser.add_argument(
        "--precision",
        default=default,
        choices=[str(precision) for precision in ModelPrecision],
        help="float32 (DeepPT's); bfloat16: about twice as fast on CPUs with AVX-512 BF16 "
        "or AMX (refused on others) and on CUDA GPUs with bfloat16, features within "
        "bfloat16 rounding of float32's; int8: about twice as fast on a CPU, "
        f"resnet18/resnet50 only, features within quantization error ({said})",
    )


def feature_keywords(args: argparse.Namespace) -> dict[str, Any]:
    """The core keywords set by :func:`add_feature_options`' options (``--stain none``: None)."""
    names = ("extractor", "weights", "device", "batch_size", "cache_dir", "precision")
    keywords = {name: getattr(args, name) for name in names if hasattr(args, name)}
    if hasattr(args, "stain"):
        keywords["stain"] = None if args.stain == "none" else args.stain
    return keywords


def add_slides_and_out(parser: argparse.ArgumentParser) -> None:
    """``SLIDE...`` and ``--out`` (the output folder): the commands that work slide by slide."""
    parser.add_argument("slides", nargs="+", metavar="SLIDE")
    add_out_option(parser)


# -- outputs, regions and errors --------------------------------------------------------------
def describe(exc: BaseException) -> str:
    """One line for an error a user can cause: the file, the problem, what to do."""
    from ..io import describe_os_error

    if isinstance(exc, OSError) and not isinstance(exc, DeepPTError) and exc.errno is not None:
        return describe_os_error(exc)
    return str(exc)


def plan_outputs(
    slides: Sequence[str | os.PathLike[str]],
    out: Path,
    names: Callable[[str], list[str]],
    overwrite: bool,
) -> dict[str, list[Path]]:
    """Each slide's output files (``names(stem)`` in ``out``), checked before any work.

    Raises
    ------
    OutputError
        A slide is given twice, or two slides would write one file (names compared without
        case: one file on macOS and Windows).
    FileExistsError
        Outputs exist and ``overwrite`` is False.
    """
    plan: dict[str, list[Path]] = {}
    owners: dict[str, str] = {}
    resolved: dict[Path, str] = {}
    for slide in map(str, slides):
        real = Path(slide).expanduser().resolve()
        if real in resolved:
            raise OutputError(f"{slide}: given twice (also as {resolved[real]}); give it once")
        resolved[real] = slide
        targets = [out / name for name in names(stem(Path(slide)))]
        for target in targets:
            owner = owners.setdefault(target.name.casefold(), slide)
            if owner != slide:
                raise OutputError(
                    f"{owner} and {slide} would both write {target}; rename one of them or "
                    "run them into different --out folders (deeppt run names outputs by the "
                    "manifest's sample_id)"
                )
        plan[slide] = targets
    existing = [str(t) for targets in plan.values() for t in targets if t.exists()]
    if existing and not overwrite:
        shown = ", ".join(existing[:4]) + (f" and {len(existing) - 4} more" if existing[4:] else "")
        raise FileExistsError(f"{shown} already exist; pass --overwrite to replace them")
    return plan


def print_written(targets: list[Path]) -> None:
    """One ``wrote <file>`` line per output."""
    for target in targets:
        print(f"  wrote {target}")


def make_output_folder(out: str | os.PathLike[str]) -> Path:
    """Create ``out`` (and its parents) or say in one line why it cannot be made; remove the
    partial files a killed earlier command left in it."""
    from ..io import describe_os_error, remove_stale_partials

    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot make the output folder: {describe_os_error(exc)}") from exc
    remove_stale_partials(folder)
    return folder


@contextlib.contextmanager
def written_together(targets: list[Path]) -> Iterator[list[Path]]:
    """One slide's outputs written as a set (:func:`~napari_deeppt.io.atomic_outputs`); an
    operating-system error that names no file names the output folder."""
    from ..io import atomic_outputs, describe_os_error

    try:
        with atomic_outputs(targets, overwrite=True) as tmps:
            yield tmps
    except OSError as exc:
        if isinstance(exc, DeepPTError) or exc.filename is not None:
            raise
        raise OutputError(f"{targets[0].parent}: {describe_os_error(exc)}") from exc


def regions_per_slide(option: str | None, slides: list[str]) -> dict[str, Path | None]:
    """Each slide's regions file (``--roi``/``--exclude``), all found or refused before any
    slide is read: ``option`` itself for one slide, or ``<stem>.geojson`` in a folder."""
    return {path: _regions_for(option, Path(path), len(slides)) for path in slides}


def _regions_for(option: str | None, slide_path: Path, n_slides: int) -> Path | None:
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


def run_per_slide(
    args: argparse.Namespace,
    suffixes: list[str],
    work: Callable[[str, list[Path], Path | None], None],
) -> int:
    """The multi-slide commands' driver: every check first, then each slide in turn.

    Plans the outputs (``<stem>.<suffix>`` in ``--out``: clashes and existing files refused),
    finds each slide's ``--roi`` file, makes ``--out`` only then (and removes it again when it
    was new and nothing was written: a refused command leaves no folder), and runs
    ``work(slide, its output paths, its roi file)`` through :func:`for_each_slide`.
    """
    plan = plan_outputs(
        args.slides, Path(args.out), lambda s: [f"{s}.{x}" for x in suffixes], args.overwrite
    )
    rois = regions_per_slide(args.roi, args.slides)
    existed = Path(args.out).exists()
    folder = make_output_folder(args.out)
    try:
        return for_each_slide(args.slides, lambda path: work(path, plan[path], rois[path]))
    finally:  # a run refused by its slides' own checks leaves no empty folder behind
        if not existed:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty


def for_each_slide(slides: Sequence[str], work: Callable[[str], None]) -> int:
    """Run ``work`` on every slide; a failing slide is reported and the others still run.

    With one slide its error propagates (exit status 2); with several each failure is one
    ``error:`` line, and after the last slide a summary line and exit status 1.
    """
    if len(slides) == 1:
        work(slides[0])
        return 0
    failed: list[str] = []
    for slide in slides:
        try:
            work(slide)
        except USER_ERRORS as exc:
            print(f"error: {describe(exc)}", file=sys.stderr)
            failed.append(slide)
    if failed:
        names = ", ".join(Path(s).name for s in failed[:10])
        more = f" and {len(failed) - 10} more" if len(failed) > 10 else ""
        print(
            f"error: all {len(slides)} slides failed ({names}{more})"
            if len(failed) == len(slides)
            else f"error: {len(failed)} of {len(slides)} slides failed ({names}{more}); the "
            "others were written",
            file=sys.stderr,
        )
        return 1
    return 0
