"""Synthetic slides written as files: SVS, OME-TIFF, pyramidal TIFF and OME-Zarr.

Tests, benchmarks, the demo and napari's sample data use these; what the pixels show is
:class:`~.render.SyntheticSlide`'s business.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .render import GENERATOR_VERSION, SyntheticSlide, default_sample_spec

__all__ = ["write_giant_slide", "write_synthetic_slide"]


def _tiles(
    spec: SyntheticSlide, downsample: float, shape: tuple[int, int], tile: int
) -> Iterator[np.ndarray]:
    h, w = shape
    for r in range(0, h, tile):
        for c in range(0, w, tile):
            yield spec.render(c * downsample, r * downsample, tile, tile, downsample)


def _label_image(text_seed: int) -> np.ndarray:
    rng = np.random.default_rng(text_seed)
    label = np.full((300, 300, 3), 250, np.uint8)
    label[40:260:20, 30:270] = rng.integers(0, 60, size=(11, 240, 3), dtype=np.uint8)
    return label


def _atomic_target(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial-{os.getpid()}")


def write_synthetic_slide(
    path: str | os.PathLike[str],
    spec: SyntheticSlide | None = None,
    *,
    format: str = "svs",
    tile: int = 256,
    level_factors: tuple[int, ...] | None = None,
    compression: str | None = "jpeg",
    quality: int = 90,
    associated: bool = True,
    write_mpp: bool = True,
    overwrite: bool = False,
) -> SyntheticSlide:
    """Write ``spec`` as a slide file and return it with ``path`` set.

    Parameters
    ----------
    path
        Output file (or ``.zarr`` directory for ``format="ome-zarr"``).
    spec
        What to draw; :func:`default_sample_spec` when None.
    format
        ``"svs"`` (Aperio layout and description), ``"ome-tiff"`` (levels in SubIFDs),
        ``"tiff"`` (generic pyramidal TIFF, pixel size in resolution tags), or ``"ome-zarr"``.
    tile
        Tile size in pixels.
    level_factors
        Downsample factors of the reduced levels; by default ×4 steps down to ~1000 px.
        ``()`` writes a single-level slide.
    compression
        ``"jpeg"``, ``"zlib"``, ``None`` ... (TIFF formats).
    quality
        JPEG quality, 1–100 (``compression="jpeg"``).
    associated
        Also write a label and a macro image (and, for SVS, a thumbnail).
    write_mpp
        Record the pixel size in the file (set False to test the missing-mpp path).
    overwrite
        Replace an existing file; otherwise refuse.
    """
    path = Path(path)
    spec = spec or default_sample_spec()
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: exists; pass overwrite=True to replace it")
    if level_factors is None:
        level_factors, f = (), 4
        while max(spec.width, spec.height) // f >= 1000:
            level_factors += (f,)
            f *= 4
    shapes = spec.level_shapes(level_factors)
    downsamples = [1.0] + [float(f) for f in level_factors]
    tmp = _atomic_target(path)
    if format == "ome-zarr":
        _write_ome_zarr(tmp, spec, shapes, downsamples, tile, write_mpp)
    elif format in ("svs", "ome-tiff", "tiff"):
        _write_tiff(
            tmp,
            spec,
            shapes,
            downsamples,
            tile,
            format,
            compression,
            quality,
            associated,
            write_mpp,
        )
    else:
        raise ValueError(f"unknown format {format!r}; use svs, ome-tiff, tiff or ome-zarr")
    if path.exists():  # overwrite=True
        import shutil

        shutil.rmtree(path) if path.is_dir() else path.unlink()
    os.replace(tmp, path)
    return replace(spec, path=path)


def _write_tiff(
    path: Path,
    spec: SyntheticSlide,
    shapes: list[tuple[int, int]],
    downsamples: list[float],
    tile: int,
    fmt: str,
    compression: str | None,
    quality: int,
    associated: bool,
    write_mpp: bool,
) -> None:
    import tifffile

    comp_args: dict[str, Any] = {"compression": compression}
    if compression == "jpeg":
        comp_args["compressionargs"] = {"level": quality}
    with tifffile.TiffWriter(path, bigtiff=True, ome=(fmt == "ome-tiff")) as tw:
        if fmt == "svs":
            _write_svs(
                tw, spec, shapes, downsamples, tile, comp_args, quality, associated, write_mpp
            )
        else:
            _write_pyramidal(tw, spec, shapes, downsamples, tile, fmt, comp_args, write_mpp)
            if associated:
                _write_label(tw, fmt, spec.seed)


def _write_level(
    tw: Any, spec: SyntheticSlide, shape: tuple[int, int], downsample: float, tile: int, **kw: Any
) -> None:
    """One RGB pyramid level, rendered tile by tile as it is written."""
    tw.write(
        _tiles(spec, downsample, shape, tile),
        shape=(*shape, 3),
        dtype=np.uint8,
        tile=(tile, tile),
        photometric="rgb",
        **kw,
    )


def _write_svs(
    tw: Any,
    spec: SyntheticSlide,
    shapes: list[tuple[int, int]],
    downsamples: list[float],
    tile: int,
    comp_args: dict[str, Any],
    quality: int,
    associated: bool,
    write_mpp: bool,
) -> None:
    """Aperio's layout: baseline, thumbnail, reduced levels, label, macro."""
    h0, w0 = shapes[0]
    mag = spec.objective_power or round(10 / spec.mpp, 1)
    mpp_text = f"|MPP = {spec.mpp:.4f}" if write_mpp else ""
    desc = (
        f"Aperio Image Library v12.0.0\r\n{w0}x{h0} [0,0 {w0}x{h0}] ({tile}x{tile}) "
        f"JPEG/RGB Q={quality}|AppMag = {mag:g}{mpp_text}|Filename = synthetic"
        f"|napari-deeppt synthetic = {GENERATOR_VERSION}"
    )
    _write_level(tw, spec, shapes[0], 1.0, tile, description=desc, metadata=None, **comp_args)
    if associated:
        factor = max(h0, w0) / 768
        th, tw_ = max(1, int(h0 / factor)), max(1, int(w0 / factor))
        thumb = spec.render(0, 0, tw_, th, w0 / tw_)
        tw.write(
            thumb,
            photometric="rgb",
            description=f"{w0}x{h0} -> {tw_}x{th}",
            metadata=None,
            compression="jpeg",
        )
    for (h, w), ds in zip(shapes[1:], downsamples[1:]):
        desc = f"{w0}x{h0} -> {w}x{h}"
        _write_level(tw, spec, (h, w), ds, tile, metadata=None, description=desc, **comp_args)
    if associated:
        tw.write(
            _label_image(spec.seed),
            photometric="rgb",
            subfiletype=1,
            description="label 300x300",
            metadata=None,
            compression="lzw",
        )
        macro = spec.render(0, 0, 400, max(1, int(400 * h0 / w0)), w0 / 400)
        tw.write(
            macro,
            photometric="rgb",
            subfiletype=9,
            description="macro",
            metadata=None,
            compression="jpeg",
        )


def _write_pyramidal(
    tw: Any,
    spec: SyntheticSlide,
    shapes: list[tuple[int, int]],
    downsamples: list[float],
    tile: int,
    fmt: str,
    comp_args: dict[str, Any],
    write_mpp: bool,
) -> None:
    """Level 0 with the reduced levels in its SubIFDs (generic or OME-TIFF)."""
    resolution = {}
    if write_mpp:
        resolution = {
            "resolution": (1e4 / spec.mpp, 1e4 / spec.mpp),
            "resolutionunit": "CENTIMETER",
        }
    metadata: dict[str, object] | None = None
    if fmt == "ome-tiff":
        metadata = {"axes": "YXS", "Name": "synthetic slide"}
        if write_mpp:
            metadata.update(
                {
                    "PhysicalSizeX": spec.mpp,
                    "PhysicalSizeXUnit": "µm",
                    "PhysicalSizeY": spec.mpp,
                    "PhysicalSizeYUnit": "µm",
                }
            )
    _write_level(
        tw,
        spec,
        shapes[0],
        1.0,
        tile,
        subifds=len(shapes) - 1,
        metadata=metadata,
        **resolution,
        **comp_args,
    )
    for (h, w), ds in zip(shapes[1:], downsamples[1:]):
        res = (
            {"resolution": (1e4 / (spec.mpp * ds),) * 2, "resolutionunit": "CENTIMETER"}
            if write_mpp
            else {}
        )
        _write_level(tw, spec, (h, w), ds, tile, subfiletype=1, metadata=None, **res, **comp_args)


def _write_label(tw: Any, fmt: str, seed: int) -> None:
    if fmt == "ome-tiff":
        tw.write(_label_image(seed), photometric="rgb", metadata={"axes": "YXS", "Name": "label"})
    else:
        tw.write(
            _label_image(seed),
            photometric="rgb",
            metadata=None,
            subfiletype=1,
            description="label",
        )


def _write_ome_zarr(
    path: Path,
    spec: SyntheticSlide,
    shapes: list[tuple[int, int]],
    downsamples: list[float],
    tile: int,
    write_mpp: bool,
) -> None:
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    datasets = []
    for i, ((h, w), ds) in enumerate(zip(shapes, downsamples)):
        array = group.create_array(str(i), shape=(3, h, w), chunks=(3, tile, tile), dtype=np.uint8)
        for r in range(0, h, tile):
            for c in range(0, w, tile):
                block = spec.render(c * ds, r * ds, min(tile, w - c), min(tile, h - r), ds)
                array[:, r : r + block.shape[0], c : c + block.shape[1]] = block.transpose(2, 0, 1)
        scale = [1.0, spec.mpp * ds, spec.mpp * ds] if write_mpp else [1.0, ds, ds]
        datasets.append(
            {"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": scale}]}
        )
    unit = {"unit": "micrometer"} if write_mpp else {}
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "name": "synthetic slide",
            "axes": [
                {"name": "c", "type": "channel"},
                {"name": "y", "type": "space", **unit},
                {"name": "x", "type": "space", **unit},
            ],
            "datasets": datasets,
        }
    ]


def write_giant_slide(
    path: str | os.PathLike[str], size: int = 100_000, mpp: float = 0.25, tile: int = 512
) -> SyntheticSlide:
    """A ``size × size`` pyramidal SVS whose file is tiny.

    Every tile of every level but the coarsest points at one shared compressed tile (legal
    TIFF); the coarsest level (at most ~1600 px) is rendered for real. Decoding level 0 whole
    would need ``3 size²`` bytes (30 GB for the default), so code that opens or displays it
    proves it never does.

    Parameters
    ----------
    path
        The ``.svs`` file to write (replaced if it exists).
    size, mpp
        Level-0 side in pixels, and µm per pixel (Aperio ``MPP``; ``AppMag`` is ``10 / mpp``).
    tile
        The TIFF tile side in pixels.

    Returns
    -------
    SyntheticSlide
        The :func:`~napari_deeppt.testing.render.default_sample_spec` it renders, with ``path``.
    """
    import tifffile
    from imagecodecs import jpeg8_encode

    path = Path(path)
    spec = default_sample_spec(size, size, mpp)
    factors, f = [], 4
    while size // f >= 400:
        factors.append(f)
        f *= 4
    shapes = spec.level_shapes(tuple(factors))

    def shared_tiles(shape: tuple[int, int], downsample: float) -> Iterator[tuple[bytes, int]]:
        centre = 0.45 * size
        jpeg = jpeg8_encode(spec.render(centre, centre, tile, tile, downsample), level=80)
        n_tiles = math.ceil(shape[0] / tile) * math.ceil(shape[1] / tile)
        for _ in range(n_tiles - 1):
            yield b"", len(jpeg)  # same offset as the next tile: all share one blob
        yield jpeg, len(jpeg)

    tmp = _atomic_target(path)
    with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        desc = (
            f"Aperio Image Library v12.0.0\r\n{size}x{size} ({tile}x{tile}) JPEG/RGB Q=80"
            f"|AppMag = {10 / mpp:g}|MPP = {mpp:.4f}"
        )
        tw.write(
            shared_tiles(shapes[0], 1.0),
            shape=(size, size, 3),
            dtype=np.uint8,
            tile=(tile, tile),
            photometric="ycbcr",
            subsampling=(2, 2),
            compression="jpeg",
            description=desc,
            metadata=None,
        )
        thumb = spec.render(0, 0, 512, 512, size / 512)
        tw.write(thumb, photometric="rgb", metadata=None, description="thumbnail")
        for i, ((h, w), ds) in enumerate(zip(shapes[1:], factors)):
            common = {
                "shape": (h, w, 3),
                "dtype": np.uint8,
                "tile": (tile, tile),
                "compression": "jpeg",
                "metadata": None,
                "description": f"{size}x{size} -> {w}x{h}",
            }
            if i == len(factors) - 1:
                tw.write(_tiles(spec, float(ds), (h, w), tile), photometric="rgb", **common)
            else:
                tw.write(
                    shared_tiles((h, w), float(ds)),
                    photometric="ycbcr",
                    subsampling=(2, 2),
                    **common,
                )
    os.replace(tmp, path)
    return replace(spec, path=path)
