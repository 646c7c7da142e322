"""Streaming feature extraction: tiles → stain normalisation → resize → backbone → features.

Tiles are read ahead in background threads (decoding overlaps inference), gathered into
fixed-size batches (:mod:`.batches`), preprocessed on the device (:mod:`.preprocess`) and fed
to the model under ``torch.inference_mode()`` in channels-last layout (autocast on CUDA).
Features go straight into a zarr store under a temporary name, renamed into the cache when
complete (:mod:`.store`): memory does not grow with the slide, and a cancelled or crashed run
never leaves an entry that looks complete.
"""

from __future__ import annotations

import math
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..devices import resolve_device
from ..errors import DeepPTError
from ..io import atomic_path, remove_stale_partials
from ..progress import CancelLike, Progress, ProgressLike, check_cancelled, make_progress
from ..slide import Slide, as_slide
from ..tiles import TileGrid, detect_and_tile
from .batches import device_batches
from .compiled import needs_fixed_batch, prepare_model
from .extractors import (
    LoadedExtractor,
    inference_autocast,
    load_extractor,
    warn_cpu_time,
)
from .gpu.readback import Readback
from .params import FeatureParams, ModelPrecision
from .preprocess import preprocess_batch, stain_config
from .store import FeatureSet, cache_entry, cache_key, create_store, finish_store, load_cached

__all__ = ["FeatureSet", "extract_features", "require_precision"]


def extract_features(
    slide: Any,
    grid: TileGrid | None = None,
    *,
    cache_dir: str | Path | None = None,
    progress: ProgressLike = True,
    cancel: CancelLike = None,
    params: FeatureParams | None = None,
    **options: Any,
) -> FeatureSet:
    """Features of every kept tile of a slide, streamed, cached with their provenance.

    Parameters
    ----------
    slide
        A :class:`~napari_deeppt.slide.Slide` or a path.
    grid
        The tiles; detected with default parameters (DeepPT: 512 px at 0.5 µm/px) if None.
    cache_dir
        Cache folder (default ``<cache_root>/features``). Any changed input (slide content,
        tiles, extractor, weights, stain, dtype) is a new entry.
    progress, cancel
        See :mod:`napari_deeppt.progress`. Cancelling stops within one batch.
    params, **options
        :class:`~napari_deeppt.features.params.FeatureParams` (the defaults: DeepPT's ResNet50,
        Macenko, float16), with any of its fields given as keywords over it: ``extractor``,
        ``weights``, ``device``, ``batch_size``, ``stain``, ``fit_max_pixels``, ``dtype``,
        ``workers``, ``compile``, ``use_cache``, ``seed``, ``gpu_decode``, ``precision``. With
        ``gpu_decode`` a few tiles are decoded both ways first, and a disagreeing decoder
        gives a warning and tifffile reads the slide: the same pixels either way.

    Returns
    -------
    FeatureSet
    """
    started = time.perf_counter()
    p = replace(params or FeatureParams(), **options)
    slide, grid = _checked_inputs(slide, grid, progress, cancel)
    stain_dict = stain_config(p.stain, p.fit_max_pixels)
    dev = resolve_device(p.device)
    int8 = _required_precision(p, dev)  # refused before any weights are looked for
    loaded = load_extractor(p.extractor, p.weights, seed=p.seed)
    reader = _jpeg_reader(slide, grid, dev, p.gpu_decode)
    reader_name = "torchvision-jpeg" if reader is not None else "tiles"
    key, fields = cache_key(
        slide, grid, p.extractor, loaded.weights_hash, loaded.spec, stain_dict, p.dtype,
        reader_name, int8=int8, precision=p.precision,
    )  # fmt: skip
    entry = cache_entry(cache_dir, key)
    if p.use_cache and (cached := load_cached(entry)) is not None:
        return cached
    provenance = _provenance(fields, slide, loaded, dev, key)
    batch, workers = _batch_and_workers(p.batch_size, p.workers, dev)
    if len(grid) == 0:
        return FeatureSet(np.zeros((0, loaded.spec.feature_dim), p.dtype), grid, provenance)
    warn_cpu_time(loaded.spec, dev, len(grid))
    model = _model(loaded, p, dev, len(grid), batch, progress, cancel)
    run = _Run(slide, grid, reader, model, loaded, stain_dict, dev, batch, workers, p.dtype)
    features = _stream(run, entry if p.use_cache else None, provenance, progress, cancel, started)
    return FeatureSet(features, grid, provenance)


def require_precision(precision: Any, extractor: str, device: Any = "auto") -> None:
    """Refuse, in one line, a precision that ``extractor`` or ``device`` cannot run.

    What :func:`extract_features` checks first, for callers that check before any slide
    work (commands with several slides, predictions, cohort runs).

    Parameters
    ----------
    precision
        A :class:`~napari_deeppt.features.params.ModelPrecision` value.
    extractor
        The extractor's registry name.
    device
        ``auto``, ``cpu``, ``cuda`` … as :class:`FeatureParams` takes it.

    Raises
    ------
    ValueError
        An unknown precision.
    DeepPTError
        bfloat16 where the device has no native bfloat16; int8 for another extractor than
        the ResNets it has, or off the CPU.
    """
    params = FeatureParams(extractor=extractor, precision=precision, device=device)
    _required_precision(params, resolve_device(params.device))


def _required_precision(p: FeatureParams, dev: Any) -> dict[str, Any] | None:
    """Refuse a precision ``dev`` cannot run (one line); int8's identity, else None."""
    if p.precision == ModelPrecision.BFLOAT16:
        from .bfloat16 import require_bfloat16

        require_bfloat16(dev)
    if p.precision != ModelPrecision.INT8:
        return None
    from .quantized import int8_identity, require_int8

    require_int8(p.extractor, dev)
    return int8_identity()


def _model(
    loaded: LoadedExtractor,
    p: FeatureParams,
    dev: Any,
    n_tiles: int,
    batch: int,
    progress: ProgressLike,
    cancel: CancelLike,
) -> Any:
    """The extractor ready to run at ``p.precision`` on ``dev`` (compiled as ``p`` says)."""
    if p.precision == ModelPrecision.INT8:
        from .quantized import int8_model

        return int8_model(loaded, dev, progress, cancel)
    model, key = loaded.model, (p.extractor, loaded.weights_hash)
    if p.precision == ModelPrecision.BFLOAT16:
        from .bfloat16 import bfloat16_model

        model, key = bfloat16_model(model, key), (*key, p.precision)
    return prepare_model(
        model, dev, p.compile, n_tiles, key, batch=batch, input_size=loaded.spec.input_size
    )


def _checked_inputs(
    slide: Any, grid: TileGrid | None, progress: ProgressLike, cancel: CancelLike
) -> tuple[Slide, TileGrid]:
    """The slide (RGB) and its tiles (detected when None), checked to belong together."""
    slide = as_slide(slide)
    slide.require_rgb("feature extraction")
    if grid is None:
        _, grid = detect_and_tile(slide, progress=progress, cancel=cancel)
    if tuple(grid.slide_dimensions) != slide.dimensions:
        raise DeepPTError(
            f"the tile grid was made for a {grid.slide_dimensions} px slide, but "
            f"{slide.path} is {slide.dimensions} px"
        )
    return slide, grid


def _jpeg_reader(slide: Slide, grid: TileGrid, dev: Any, gpu_decode: Any) -> Any:
    """A reader decoding the file's JPEG tiles on ``dev`` when asked and trustworthy, else None."""
    if not (gpu_decode is True or (gpu_decode == "auto" and dev.type == "cuda")):
        return None
    from .gpu.jpeg import JpegTileReader

    reader = JpegTileReader.for_grid(slide, grid)
    problem = reader.check_decoder(dev) if reader is not None and len(grid) else None
    if problem is not None:
        warnings.warn(f"{slide.path}: {problem}; reading tiles with tifffile instead", stacklevel=3)
        return None
    return reader


def _provenance(
    fields: dict[str, Any], slide: Slide, loaded: LoadedExtractor, dev: Any, key: str
) -> dict[str, Any]:
    """The cache key's fields plus where the run happened and with which versions."""
    import torch

    return {
        **fields,
        "slide_path": str(slide.path),
        "weights_source": loaded.weights_source,
        "precision": fields.get("precision", "float32"),
        "device": str(dev),
        "versions": {
            "napari_deeppt": __version__,
            "torch": torch.__version__,
            "torchvision": _package_version("torchvision"),
        },
        "cache_key": key,
    }


def _batch_and_workers(batch_size: int | None, workers: int | None, dev: Any) -> tuple[int, int]:
    import torch

    batch = int(batch_size or (256 if dev.type == "cuda" else 32))
    return batch, int(workers or min(8, max(2, (torch.get_num_threads() or 2))))


@dataclass
class _Run:
    """What the streaming loop needs, resolved."""

    slide: Slide
    grid: TileGrid
    reader: Any
    model: Any
    loaded: LoadedExtractor
    stain: dict[str, Any]
    dev: Any
    batch: int
    workers: int
    dtype: str


def _stream(
    run: _Run,
    entry: Path | None,
    provenance: dict[str, Any],
    progress: ProgressLike,
    cancel: CancelLike,
    started: float,
) -> np.ndarray:
    """Run the model over every tile; write the features into the cache ``entry`` (if any)."""
    import torch

    dim = run.loaded.spec.feature_dim
    out = np.empty((len(run.grid), dim), run.dtype)
    if entry is not None:  # partial entries of runs that died (Ctrl-C, a killed worker) go
        remove_stale_partials(entry.parent)
    writer = (
        atomic_path(entry, overwrite=entry.exists(), folder=True)
        if entry is not None
        else nullcontext()
    )
    with writer as tmp:
        store = create_store(tmp, run.grid, dim, run.dtype, provenance) if tmp else None
        with (
            make_progress(progress, len(run.grid), "extracting features", unit="tile") as bar,
            torch.inference_mode(),
            inference_autocast(run.dev),
        ):
            sink = _Sink(out, store, bar)
            compiled = needs_fixed_batch(run.model)
            batches = device_batches(
                run.slide, run.grid, run.reader, run.batch, run.dev, compiled, run.workers
            )
            readback = Readback(run.dev, run.batch, dim)
            for start, filled, images in batches:
                check_cancelled(cancel, "feature extraction")
                feats = run.model(preprocess_batch(images, run.loaded.spec, run.stain))
                # on CUDA the copy back is queued now and collected after the next batch is
                # launched, so the GPU never waits for the CPU to store features
                sink.write_all(readback.push(start, feats[:filled]))
            sink.write_all(readback.flush())
        provenance["seconds"] = round(time.perf_counter() - started, 3)
        if store is not None:
            finish_store(store, provenance)
    return out


@dataclass
class _Sink:
    """Stores finished feature blocks (array and zarr store) and reports progress."""

    out: np.ndarray
    store: Any
    bar: Progress
    t0: float = field(default_factory=time.perf_counter)

    def write_all(self, blocks: list[tuple[int, np.ndarray]]) -> None:
        for start, block in blocks:
            self.write(start, block)

    def write(self, start: int, block: np.ndarray) -> None:
        block = block.astype(self.out.dtype)
        self.out[start : start + len(block)] = block
        if self.store is not None:
            self.store["features"][start : start + len(block)] = block
        done = start + len(block)
        rate = done / max(time.perf_counter() - self.t0, 1e-9)
        eta = (len(self.out) - done) / max(rate, 1e-9)
        self.bar.update(len(block), f"{rate:.1f} tiles/s, ETA {_format_eta(eta)}")


def _format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


def _package_version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"
