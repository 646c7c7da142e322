"""Streaming feature extraction: tiles → stain normalisation → resize → backbone → features.

Tiles are read ahead in background threads (decoding overlaps inference), gathered into
fixed-size batches (pinned memory on CUDA), stain-normalised and resized on the device, and
fed to the model under ``torch.inference_mode()`` in channels-last layout (autocast on
CUDA). Features go straight into a zarr store under a temporary name, renamed into the cache
when complete: memory does not grow with the slide, and a cancelled or crashed run never
leaves an entry that looks complete.

Stain normalisation is fitted on each full-resolution tile (as DeepPT does) and, because a
Macenko fit is a per-tile 3×3 map in optical density, applied after the resize to the model's
input size, which saves ~5× the work; it differs from normalise-then-resize only through the
non-linearity of averaging within one output pixel.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DeepPTError
from ..progress import CancelLike, ProgressLike, check_cancelled, make_progress
from ..slide import as_slide
from ..tiles import GRID_FORMAT_VERSION, TileGrid, TileGridParams

__all__ = ["FeatureSet", "extract_features", "preprocess_batch"]

FEATURE_FORMAT_VERSION = 1
RESIZE = "bilinear-antialias"


@dataclass(frozen=True, eq=False)
class FeatureSet:
    """Features of the kept tiles of one slide.

    Attributes
    ----------
    features
        ``(n_tiles, feature_dim)`` float16 or float32, row ``i`` for ``grid.xy[i]``.
    grid
        The tiles.
    provenance
        Slide identity, extractor, weights hash, tile and stain parameters, versions.
    """

    features: np.ndarray
    grid: TileGrid
    provenance: dict[str, Any]
    from_cache: bool = False

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def __repr__(self) -> str:
        p = self.provenance
        return (
            f"FeatureSet({len(self)} tiles × {self.feature_dim} from {p.get('extractor')}, "
            f"weights {p.get('weights_hash')}, stain {p.get('stain', {}).get('method')})"
        )

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[1])

    # -- files --------------------------------------------------------------------------------
    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write a zarr directory (features, tile table, provenance), atomically."""
        from ..io import atomic_path

        path = Path(path)
        with atomic_path(path, overwrite=overwrite) as tmp:
            store = _create_store(
                tmp, self.grid, self.feature_dim, self.features.dtype, self.provenance
            )
            store["features"][:] = self.features
            store.attrs["complete"] = True
        return path

    @classmethod
    def load(cls, path: str | Path) -> FeatureSet:
        """Read a feature store written by :meth:`save` or by the cache."""
        import zarr

        try:
            group = zarr.open_group(str(path), mode="r")
            attrs = dict(group.attrs)
            if not attrs.get("complete"):
                raise ValueError("the store is incomplete (an interrupted run)")
            grid = _grid_from_group(group, attrs["grid"])
            features = np.asarray(group["features"][...])
        except DeepPTError:
            raise
        except Exception as exc:
            raise DeepPTError(f"{path}: not a napari-deeppt feature store ({exc})") from exc
        return cls(features, grid, attrs["provenance"])

    def to_npy(self, path: str | Path, overwrite: bool = False) -> Path:
        """Features as ``.npy`` (n_tiles × feature_dim), like the original scripts."""
        from ..io import atomic_path

        with atomic_path(path, overwrite=overwrite) as tmp, open(tmp, "wb") as fh:
            np.save(fh, self.features)
        return Path(path)

    def to_dataframe(self) -> Any:
        import pandas as pd

        table = self.grid.to_dataframe()[["x", "y", "tissue_fraction"]]
        columns = [f"f{i}" for i in range(self.feature_dim)]
        feats = pd.DataFrame(self.features.astype(np.float32), columns=columns)
        return pd.concat([table.reset_index(drop=True), feats], axis=1)

    def to_csv(self, path: str | Path, overwrite: bool = False) -> Path:
        """One row per tile: level-0 x, y, tissue fraction, then the features."""
        from ..io import atomic_path

        with atomic_path(path, overwrite=overwrite) as tmp:
            self.to_dataframe().to_csv(tmp, index=False, float_format="%.6g")
        return Path(path)

    def to_anndata(self) -> Any:
        """AnnData: tiles as obs, ``obsm["spatial"]`` tile centres in µm, ``obsm["features"]``."""
        import anndata

        adata = anndata.AnnData(obs=self.grid.obs_table())
        adata.obsm["spatial"] = self.grid.centres_um()
        adata.obsm["features"] = self.features.astype(np.float32)
        adata.uns["deeppt"] = {
            "provenance": json.dumps(self.provenance, default=str),
            "spatial_units": "micrometer",
        }
        return adata

    def to_h5ad(self, path: str | Path, overwrite: bool = False) -> Path:
        from ..io import atomic_path

        with atomic_path(path, overwrite=overwrite) as tmp:
            self.to_anndata().write_h5ad(tmp)
        return Path(path)

    # -- views --------------------------------------------------------------------------------
    def embedding_rgb(self, n_components: int = 3) -> np.ndarray:
        """First principal components of the features as RGB, one pixel per grid cell.

        Returns ``(rows, cols, 3)`` float32 in [0, 1] (each component scaled between its 1st
        and 99th percentile) with NaN where no tile was kept.
        """
        rows, cols = self.grid.grid_shape
        out = np.full((rows, cols, 3), np.nan, np.float32)
        if len(self) == 0:
            return out
        x = self.features.astype(np.float64)
        x = x - x.mean(axis=0)
        if len(self) > 1:
            _, _, vt = np.linalg.svd(x, full_matrices=False)
            scores = x @ vt[: min(n_components, vt.shape[0])].T
        else:
            scores = np.zeros((1, 1))
        colours = np.zeros((len(self), 3), np.float32)
        for k in range(min(3, scores.shape[1])):
            lo, hi = np.percentile(scores[:, k], [1, 99])
            colours[:, k] = np.clip((scores[:, k] - lo) / max(hi - lo, 1e-12), 0, 1)
        out[self.grid.rowcol[:, 0], self.grid.rowcol[:, 1]] = colours
        return out


def _create_store(
    path: Path, grid: TileGrid, dim: int, dtype: Any, provenance: dict[str, Any]
) -> Any:
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array(
        "features",
        shape=(len(grid), dim),
        chunks=(max(1, min(len(grid), 1024)), dim),
        dtype=np.dtype(dtype),
    )
    group.create_array("xy", data=np.asarray(grid.xy, np.int64))
    group.create_array("rowcol", data=np.asarray(grid.rowcol, np.int64))
    group.create_array("tissue_fraction", data=np.asarray(grid.tissue_fraction, np.float32))
    group.create_array("edge_fraction", data=np.asarray(grid.edge_fraction, np.float32))
    group.attrs["grid"] = grid._meta()
    group.attrs["provenance"] = json.loads(json.dumps(provenance, default=str))
    group.attrs["complete"] = False
    return group


def _grid_from_group(group: Any, meta: dict[str, Any]) -> TileGrid:
    return TileGrid(
        xy=np.asarray(group["xy"][...]),
        rowcol=np.asarray(group["rowcol"][...]),
        tissue_fraction=np.asarray(group["tissue_fraction"][...]),
        edge_fraction=np.asarray(group["edge_fraction"][...]),
        grid_shape=tuple(meta["grid_shape"]),
        size_level0=float(meta["size_level0"]),
        stride_level0=float(meta["stride_level0"]),
        params=TileGridParams(**meta["params"]),
        slide_dimensions=tuple(meta["slide_dimensions"]),
        slide_mpp=float(meta["slide_mpp"]),
        slide_path=meta["slide_path"],
    )


def _stain_config(stain: Any, fit_max_pixels: int | None) -> dict[str, Any]:
    from ..stain import DEEPPT_TARGET, DEFAULT_REINHARD_TARGET, MacenkoTarget, ReinhardTarget

    if stain in (None, "none", False):
        return {"method": None}
    if stain == "macenko" or isinstance(stain, MacenkoTarget):
        target = stain if isinstance(stain, MacenkoTarget) else DEEPPT_TARGET
        return {**target.as_dict(), "fit_max_pixels": fit_max_pixels, "applied": "after resize"}
    if stain == "reinhard" or isinstance(stain, ReinhardTarget):
        target = stain if isinstance(stain, ReinhardTarget) else DEFAULT_REINHARD_TARGET
        return {**target.as_dict(), "applied": "after resize"}
    raise DeepPTError(
        f"unknown stain normalisation {stain!r}; use 'macenko', 'reinhard', None, "
        "or a MacenkoTarget/ReinhardTarget"
    )


def resize_uint8(batch: Any, size: int) -> Any:
    """Antialiased bilinear resize of uint8 ``(B, H, W, 3)`` tiles to ``(B, size, size, 3)``.

    On the CPU torch resizes uint8 channels-last images directly (a vectorised path ~30×
    faster than going through float); elsewhere through float32, rounded back to uint8.
    """
    import torch
    import torch.nn.functional as F

    if batch.shape[1] == size and batch.shape[2] == size:
        return batch
    images = batch.permute(0, 3, 1, 2)  # a channels-last view, no copy
    if batch.device.type == "cpu":
        out = F.interpolate(
            images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    else:
        out = F.interpolate(
            images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        out = out.round_().clamp_(0, 255).to(torch.uint8)
    return out.permute(0, 2, 3, 1)


def preprocess_batch(batch: Any, spec: Any, stain: dict[str, Any]) -> Any:
    """uint8 ``(B, H, W, 3)`` tensor on the device → normalised ``(B, 3, S, S)`` float tensor."""
    import torch

    from ..stain import (
        MacenkoTarget,
        ReinhardTarget,
        apply_od_transform,
        macenko_transforms,
        reinhard_normalize,
    )

    size = spec.input_size
    method = stain.get("method")
    transform = fitted = None
    if method == "macenko":
        target = MacenkoTarget(
            tuple(map(tuple, stain["stain_matrix"])),
            tuple(stain["max_concentrations"]),
            stain["io"],
            stain["alpha"],
            stain["beta"],
        )
        transform, fitted, _, _, _ = macenko_transforms(
            batch, target, fit_max_pixels=stain["fit_max_pixels"]
        )
    resized = resize_uint8(batch, size)
    if method == "macenko":
        resized = apply_od_transform(resized.contiguous(), transform, fitted, stain["io"])
    elif method == "reinhard":
        resized = reinhard_normalize(
            resized.contiguous(), ReinhardTarget(tuple(stain["mean"]), tuple(stain["std"]))
        )
    x = resized.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(spec.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


_PREPARED: dict[tuple[Any, ...], Any] = {}


def _prepare_model(
    model: Any, device: Any, compile_mode: Any, n_tiles: int, key: tuple[Any, ...] | None = None
) -> Any:
    """Move to the device in channels-last, optionally ``torch.compile`` (freezing on CPU).

    Prepared models are kept per ``key`` (extractor, weights, device, compile), so a cohort
    pays for loading and compiling once per process.
    """
    import torch

    want = compile_mode is True or (compile_mode == "auto" and n_tiles >= 2048)
    full_key = None if key is None else (*key, str(device), want)
    if full_key is not None and full_key in _PREPARED:
        return _PREPARED[full_key]
    model = model.to(device).to(memory_format=torch.channels_last).eval()
    if want:
        try:
            import torch._inductor.config as inductor_config

            if device.type == "cpu":
                inductor_config.freezing = True
            model = torch.compile(model)
        except Exception as exc:  # compile is an optimisation: never a reason to fail
            warnings.warn(f"torch.compile unavailable ({exc}); running eagerly", stacklevel=3)
    if full_key is not None:
        _PREPARED.clear()  # keep one model: they are large
        _PREPARED[full_key] = model
    return model


def _cache_key(
    slide: Any,
    grid: TileGrid,
    extractor: str,
    weights_hash: str,
    spec: Any,
    stain: dict[str, Any],
    dtype: str,
    reader: str = "tiles",
) -> tuple[str, dict[str, Any]]:
    from .. import __version__

    grid_digest = hashlib.sha256(np.ascontiguousarray(grid.xy, np.int64).tobytes())
    grid_digest.update(json.dumps(grid._meta()["params"], sort_keys=True).encode())
    fields = {
        "format": FEATURE_FORMAT_VERSION,
        "grid_format": GRID_FORMAT_VERSION,
        "slide_content": slide.content_digest(grid),  # the stored bytes these tiles read
        "slide_mpp": slide.mpp,
        "grid": {
            "params": grid._meta()["params"],
            "n_tiles": len(grid),
            "size_level0": grid.size_level0,
            "digest": grid_digest.hexdigest()[:16],
        },
        "extractor": extractor,
        "weights_hash": weights_hash,
        "input_size": spec.input_size,
        "mean": spec.mean,
        "std": spec.std,
        "resize": RESIZE,
        "stain": stain,
        "dtype": dtype,
        "deeppt_major": __version__.split(".")[0],
        "reader": reader,
    }
    key = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()
    return key[:24], fields


def extract_features(
    slide: Any,
    grid: TileGrid | None = None,
    extractor: str = "resnet50",
    weights: Any = None,
    device: Any = "auto",
    batch_size: int | None = None,
    stain: Any = "macenko",
    cache_dir: str | Path | None = None,
    progress: ProgressLike = True,
    cancel: CancelLike = None,
    *,
    dtype: str = "float16",
    workers: int | None = None,
    compile: Any = "auto",
    fit_max_pixels: int | None = 8192,
    use_cache: bool = True,
    seed: int = 0,
    gpu_decode: Any = "auto",
) -> FeatureSet:
    """Features of every kept tile of a slide, streamed, cached with their provenance.

    Parameters
    ----------
    slide
        A :class:`~napari_deeppt.slide.Slide`, a path, or a napari layer from this plugin.
    grid
        The tiles; detected with default parameters (DeepPT: 512 px at 0.5 µm/px) if None.
    extractor
        Registry key (``"resnet50"``: torchvision ResNet50, global average pool → 2048).
    weights
        A weights file, ``"random"`` (tests/demos; recorded in the provenance), or None for
        torchvision's cache / download (see :mod:`napari_deeppt.features.extractors`).
    device
        ``"auto"`` (cuda > mps > cpu), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    batch_size
        Tiles per forward pass; default 256 on CUDA, 32 on CPU.
    stain
        ``"macenko"`` (DeepPT's reference), ``"reinhard"``, None, or a target object.
    cache_dir
        Cache folder; default ``<cache_root>/features``. The same request again loads from
        it; any changed parameter (slide content, tiles, extractor, weights, stain, dtype)
        makes a new entry.
    progress, cancel
        See :mod:`napari_deeppt.progress`. Cancelling stops within one batch.
    dtype
        Storage dtype of the features (``"float16"`` or ``"float32"``).
    workers
        Threads reading and decoding tiles ahead of the model.
    compile
        ``True``, ``False`` or ``"auto"`` (compile only for ≥ 2048 tiles, where it pays).
    fit_max_pixels
        Pixels per tile used to fit Macenko (see :func:`~napari_deeppt.stain.macenko_normalize`;
        default 8192, every 6th pixel of a 512² tile each way).
    use_cache
        Read and write the cache.
    gpu_decode
        Decode the slide's JPEG tiles with ``torchvision.io.decode_jpeg`` on the device,
        batched, instead of with tifffile on the CPU: ``"auto"`` on CUDA when the level is
        JPEG-tiled, ``True`` wherever possible (also on the CPU), ``False`` never. The same
        pixels either way: a few file tiles are first decoded both ways, and if the device's
        decoder disagrees (or fails) a warning says so and tifffile reads the slide.
    seed
        Seeds random weights (``weights="random"``).

    Returns
    -------
    FeatureSet
    """
    import torch

    from .. import __version__
    from ..devices import resolve_device
    from ..io import atomic_path, cache_root, remove_stale_partials
    from ..tiles import detect_and_tile
    from .extractors import load_extractor

    started = time.perf_counter()
    slide = as_slide(slide)
    slide.require_rgb("feature extraction")
    if grid is None:
        _, grid = detect_and_tile(slide, progress=progress, cancel=cancel)
    if tuple(grid.slide_dimensions) != slide.dimensions:
        raise DeepPTError(
            f"the tile grid was made for a {grid.slide_dimensions} px slide, but "
            f"{slide.path} is {slide.dimensions} px"
        )
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
    stain_config = _stain_config(stain, fit_max_pixels)
    loaded = load_extractor(extractor, weights, seed=seed)
    spec = loaded.spec
    dev = resolve_device(device)
    reader = None
    if gpu_decode is True or (gpu_decode == "auto" and dev.type == "cuda"):
        from .jpeg import JpegTileReader

        reader = JpegTileReader.for_grid(slide, grid)
        problem = reader.check_decoder(dev) if reader is not None and len(grid) else None
        if problem is not None:
            warnings.warn(
                f"{slide.path}: {problem}; reading tiles with tifffile instead", stacklevel=2
            )
            reader = None
    key, fields = _cache_key(
        slide,
        grid,
        extractor,
        loaded.weights_hash,
        spec,
        stain_config,
        dtype,
        "torchvision-jpeg" if reader is not None else "tiles",
    )
    cache_path = Path(cache_dir or cache_root() / "features") / f"{key}.zarr"
    if use_cache and cache_path.exists():
        try:
            cached = FeatureSet.load(cache_path)
            return FeatureSet(cached.features, cached.grid, cached.provenance, from_cache=True)
        except DeepPTError:
            pass  # unreadable entry: recompute and replace it
    provenance = {
        **fields,
        "slide_path": str(slide.path),
        "weights_source": loaded.weights_source,
        "device": str(dev),
        "versions": {
            "napari_deeppt": __version__,
            "torch": torch.__version__,
            "torchvision": _version("torchvision"),
        },
        "cache_key": key,
    }
    batch = int(batch_size or (256 if dev.type == "cuda" else 32))
    if batch < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch}")
    workers = int(workers or min(8, max(2, (torch.get_num_threads() or 2))))
    if len(grid) == 0:
        result = FeatureSet(np.zeros((0, spec.feature_dim), dtype), grid, provenance)
        return result
    model = _prepare_model(
        loaded.model, dev, compile, len(grid), key=(extractor, loaded.weights_hash)
    )
    compiled = hasattr(model, "_orig_mod")
    autocast = (
        torch.autocast(
            "cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        )
        if dev.type == "cuda"
        else _null()
    )
    out = np.empty((len(grid), spec.feature_dim), dtype)
    if use_cache:  # partial entries of runs that died (Ctrl-C, a killed worker) go
        remove_stale_partials(cache_path.parent)
    writer = atomic_path(cache_path, overwrite=cache_path.exists()) if use_cache else _null()
    with writer as tmp:
        store = _create_store(tmp, grid, spec.feature_dim, dtype, provenance) if tmp else None
        with (
            make_progress(progress, len(grid), "extracting features", unit="tile") as bar,
            torch.inference_mode(),
            autocast,
        ):
            t0 = time.perf_counter()
            batches = _device_batches(slide, grid, reader, batch, dev, compiled, workers)
            readback = _Readback(dev, batch, spec.feature_dim)

            def store_block(start: int, block: np.ndarray) -> None:
                block = block.astype(dtype)
                out[start : start + len(block)] = block
                if store is not None:
                    store["features"][start : start + len(block)] = block
                done = start + len(block)
                rate = done / max(time.perf_counter() - t0, 1e-9)
                eta = (len(grid) - done) / max(rate, 1e-9)
                bar.update(len(block), f"{rate:.1f} tiles/s, ETA {_format_eta(eta)}")

            for start, filled, images in batches:
                check_cancelled(cancel, "feature extraction")
                feats = model(preprocess_batch(images, spec, stain_config))
                # on CUDA the copy back is queued now and collected after the next batch is
                # launched, so the GPU never waits for the CPU to store features
                for done_start, block in readback.push(start, feats[:filled]):
                    store_block(done_start, block)
            for done_start, block in readback.flush():
                store_block(done_start, block)
        provenance["seconds"] = round(time.perf_counter() - started, 3)
        if store is not None:
            store.attrs["provenance"] = json.loads(json.dumps(provenance, default=str))
            store.attrs["complete"] = True
    return FeatureSet(out, grid, provenance)


def _device_batches(
    slide: Any, grid: TileGrid, reader: Any, batch: int, dev: Any, compiled: bool, workers: int
) -> Any:
    """Yield ``(start, n_tiles, uint8 images on the device)`` batch by batch.

    A compiled model sees one shape only, so a short last batch is padded (at most one batch
    of extra work per slide, instead of a recompile).
    """
    import torch

    if reader is not None:  # decode the file's JPEG tiles on the device
        from concurrent.futures import ThreadPoolExecutor

        def fetch(first: int) -> Any:  # file reads only: runs ahead in a thread
            return reader.fetch(np.arange(first, min(first + batch, len(grid))))

        with ThreadPoolExecutor(max_workers=1) as pool:
            ahead = pool.submit(fetch, 0)
            for start in range(0, len(grid), batch):
                fetched = ahead.result()
                if start + batch < len(grid):
                    ahead = pool.submit(fetch, start + batch)
                images = reader.assemble(fetched, dev)
                filled = len(fetched.rows)
                if compiled and filled < batch:
                    pad = images.new_zeros((batch - filled, *images.shape[1:]))
                    images = torch.cat([images, pad])
                yield start, filled, images
        return
    tile_px = grid.tile_px
    # two staging buffers (pinned on CUDA): one is filled while the other's copy to the
    # device may still be in flight; _Readback collects batch k-1 before batch k+1 is filled
    staging = [torch.empty((batch, tile_px, tile_px, 3), dtype=torch.uint8) for _ in range(2)]
    if dev.type == "cuda":
        staging = [buffer.pin_memory() for buffer in staging]
    filled, start, turn = 0, 0, 0
    for _, tile in grid.iter_tiles(slide, workers=workers, prefetch=2 * batch):
        staging[turn].numpy()[filled] = tile  # shares memory: no tensor per tile
        filled += 1
        if filled == batch or start + filled == len(grid):
            rows = batch if compiled else filled
            yield start, filled, staging[turn][:rows].to(dev, non_blocking=True)
            start += filled
            filled, turn = 0, 1 - turn


class _Readback:
    """Features back to the host, one batch late on CUDA (pinned memory, events).

    :meth:`push` queues a batch's copy and returns the batches whose copies are complete:
    on the CPU the batch itself, on CUDA the previous one, so the GPU computes batch ``k``
    while the host stores batch ``k - 1``.
    """

    def __init__(self, device: Any, batch: int, dim: int, deferred: bool | None = None) -> None:
        import torch

        self.cuda = device.type == "cuda"
        self.deferred = self.cuda if deferred is None else deferred
        self.pending: list[tuple[int, Any, Any]] = []
        self.host = [torch.empty((batch, dim), dtype=torch.float32) for _ in range(2)]
        if self.cuda:
            self.host = [buffer.pin_memory() for buffer in self.host]
        self.turn = 0

    def push(self, start: int, feats: Any) -> list[tuple[int, np.ndarray]]:
        import torch

        if not self.deferred:
            return [(start, feats.float().cpu().numpy())]
        host = self.host[self.turn][: int(feats.shape[0])]
        host.copy_(feats.float(), non_blocking=self.cuda)
        event = None
        if self.cuda:
            event = torch.cuda.Event()
            event.record()
        self.turn = 1 - self.turn
        self.pending.append((start, host, event))
        return self._collect(keep=1)

    def flush(self) -> list[tuple[int, np.ndarray]]:
        return self._collect(keep=0)

    def _collect(self, keep: int) -> list[tuple[int, np.ndarray]]:
        ready = []
        while len(self.pending) > keep:
            start, host, event = self.pending.pop(0)
            if event is not None:
                event.synchronize()
            ready.append((start, host.numpy().copy()))
        return ready


def _format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


class _null:
    """A do-nothing context manager that yields None."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"
