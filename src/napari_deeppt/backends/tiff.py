"""TIFF-family slides through tifffile: Aperio SVS, pyramidal/OME-TIFF, plain TIFF.

Each pyramid level is a zarr array over tifffile's own zarr store, so chunks are the file's
tiles (or strips) and nothing is decoded until asked for. Uncompressed contiguous images are
memory-mapped instead (a huge single-strip TIFF would otherwise be one giant chunk).
"""

from __future__ import annotations

import logging
import os
import re
import struct
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SlideFormatError
from .base import Backend, LevelSource, SlideParts
from .ome import parse_ome_xml, positive_float
from .stored import JpegTiles, RawFile, TiffSegments

__all__ = ["BACKEND", "open_tiff"]

#: Plausible µm/px for a microscope image; resolution tags outside are screen defaults (72 dpi).
PLAUSIBLE_MPP = (0.02, 100.0)
ASSOCIATED_KEYWORDS = ("label", "macro", "thumbnail", "overview", "barcode")


class TiffTileArray:
    """Read-only numpy-style access to one TIFF page through tifffile's segment decoder.

    The fallback when tifffile's zarr store cannot be used with the installed tifffile/zarr
    pair: it reads and decodes exactly the tiles (or strips) a slice touches, with
    ``TiffPage.decode`` (public in every tifffile of the last years). Axes are ``YXS``.
    """

    def __init__(self, page: Any) -> None:
        separate, depth, length, width, samples = page.shaped
        if separate != 1 or depth != 1:
            raise ValueError("planar-separate or volumetric pages are not supported here")
        self.page = page
        self.shape = (int(length), int(width), int(samples))
        self.dtype = page.dtype
        self.tiled = bool(page.is_tiled)
        self.segment = (
            (int(page.tilelength), int(page.tilewidth))
            if self.tiled
            else (int(page.rowsperstrip), int(width))
        )

    def __getitem__(self, key: tuple[slice, slice, slice]) -> Any:
        rows, cols, chans = key
        out = np.zeros((rows.stop - rows.start, cols.stop - cols.start, self.shape[2]), self.dtype)
        seg_h, seg_w = self.segment
        per_row = -(-self.shape[1] // seg_w)
        fh = self.page.parent.filehandle
        decode = self.page.decode
        for sy in range(rows.start // seg_h, (rows.stop - 1) // seg_h + 1):
            for sx in range(cols.start // seg_w, (cols.stop - 1) // seg_w + 1):
                index = sy * per_row + sx if self.tiled else sy
                offset, count = self.page.dataoffsets[index], self.page.databytecounts[index]
                with fh.lock:
                    fh.seek(offset)
                    data = fh.read(count) if count else None
                segment, _, _ = decode(data, index, jpegtables=self.page.jpegtables)
                if segment is None:
                    continue
                segment = segment.reshape(segment.shape[-3:])  # (length, width, samples)
                y0, x0 = sy * seg_h, sx * seg_w
                r0, r1 = max(rows.start, y0), min(rows.stop, y0 + segment.shape[0])
                c0, c1 = max(cols.start, x0), min(cols.stop, x0 + segment.shape[1])
                out[r0 - rows.start : r1 - rows.start, c0 - cols.start : c1 - cols.start] = segment[
                    r0 - y0 : r1 - y0, c0 - x0 : c1 - x0
                ]
        return out[:, :, chans]


def _zarr_open_array(store: Any) -> Any:
    """Open tifffile's zarr store read-only, whatever the tifffile/zarr API generation."""
    import zarr

    try:
        return zarr.open_array(store=store, mode="r")
    except TypeError:  # very old zarr signatures
        return zarr.open(store, mode="r")


def _level_array(tif: Any, series: Any, level: int) -> tuple[Any, str, tuple[int, int] | None]:
    """Return (array, axes, native chunk) for one level of a tifffile series."""
    import tifffile

    level_series = series.levels[level]
    page = level_series.keyframe
    axes = level_series.axes
    chunks = (int(page.chunks[0]), int(page.chunks[1])) if page.chunks else None
    if page.compression == 1 and level_series.dataoffset is not None:
        try:  # uncompressed & contiguous: zero-copy memory map, no giant single chunk
            index = next(i for i, s in enumerate(tif.series) if s is series)
            mm = tifffile.memmap(tif.filehandle.path, series=index, level=level, mode="r")
            if len(mm.shape) == len(axes):
                return mm, axes, None
        except Exception:
            pass
    if _decode_directly(tif, level_series, page, axes):
        tiles = TiffTileArray(page)
        return tiles, "YXS", tiles.segment
    try:
        array = _zarr_open_array(series.aszarr(level=level))
    except Exception:  # a tifffile/zarr pair whose zarr API we cannot use: decode directly
        tiles = TiffTileArray(page)
        return tiles, "YXS", tiles.segment
    if len(array.shape) != len(axes):  # store kept length-1 axes the series squeezed
        axes = level_series.get_axes(False)
        if len(array.shape) != len(axes):
            axes = "".join(a for a, n in zip(axes, level_series.get_shape(False)) if n > 1)
    return array, axes, chunks


def _decode_directly(tif: Any, level_series: Any, page: Any, axes: str) -> bool:
    """Whether a level is read tile by tile with ``TiffPage.decode`` instead of through zarr.

    For the common slide level — one tiled, compressed, interleaved RGB(A) page — reading a
    512 px tile straight from its TIFF tiles takes about 0.64 of the time zarr's store takes
    (its asynchronous machinery costs more than the decoding; same pixels, tested), and the
    feature pipeline's reader threads share the CPU with the model.
    """
    try:
        separate, depth, _, _, samples = page.shaped
        return bool(
            page.is_tiled
            and page.compression != 1
            and not tif.is_ndpi
            and len(level_series.pages) == 1
            and separate == 1
            and depth == 1
            and samples in (3, 4)
            and axes.upper() == "YXS"
        )
    except Exception:  # anything unusual: zarr, as before
        return False


def _series_name(series: Any) -> str:
    return (series.name or "").strip().lower()


def _associated_key(name: str, fallback: str) -> str | None:
    for keyword in ASSOCIATED_KEYWORDS:
        if keyword in name:
            return "thumbnail" if keyword == "overview" else keyword
    return None if not name else fallback


def _yx(series: Any) -> tuple[int, int]:
    axes = series.axes
    return int(series.shape[axes.index("Y")]), int(series.shape[axes.index("X")])


class _TifffileLog(logging.Filter):
    """Holds back tifffile's log records in threads that are opening a slide.

    tifffile logs what it finds wrong (a directory past the end of the file ...) and carries
    on; without a handler Python prints that to stderr. While :func:`open_tiff` runs, the
    records are kept instead, and what they mean becomes one error or one warning.
    """

    def __init__(self) -> None:
        super().__init__()
        self.local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        held = getattr(self.local, "records", None)
        if held is None:
            return True
        held.append(record)
        return False


_TIFFFILE_LOG = _TifffileLog()


@contextmanager
def _holding_tifffile_log() -> Iterator[list[logging.LogRecord]]:
    logger = logging.getLogger("tifffile")
    if _TIFFFILE_LOG not in logger.filters:
        logger.addFilter(_TIFFFILE_LOG)
    outer = getattr(_TIFFFILE_LOG.local, "records", None)
    held: list[logging.LogRecord] = []
    _TIFFFILE_LOG.local.records = held
    try:
        yield held
    finally:
        _TIFFFILE_LOG.local.records = outer


def _truncated(path: Path, size: int, offset: int, inside: bool) -> SlideFormatError:
    where = "runs past the end" if inside else "is past the end"
    return SlideFormatError(
        f"{path}: the file is truncated ({size} bytes; its directory at offset {offset} "
        f"{where}) — re-copy it"
    )


def _check_directories(path: Path, tif: Any = None) -> None:
    """Raise :class:`SlideFormatError` when an image directory lies past the end of the file.

    tifffile stops at such a directory with a log line, and the slide would open with fewer
    levels than it has (or none: "no 2-D image"). Walks the chain of directories from the
    header, and every page's SubIFDs, with the file's own offset sizes.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        header = fh.read(16)
        order = "<" if header[:2] == b"II" else ">"
        if tif is not None:
            t = tif.tiff
            fmt = (t.offsetformat, t.offsetsize, t.tagnoformat, t.tagnosize, t.tagsize)
        elif header[2:4] in (b"\x2b\x00", b"\x00\x2b"):  # BigTIFF
            fmt = (order + "Q", 8, order + "Q", 8, 20)
        else:
            fmt = (order + "I", 4, order + "H", 2, 12)
        first_at = 4 if fmt[1] == 4 else 8
        if len(header) < first_at + fmt[1]:
            raise SlideFormatError(
                f"{path}: the file is truncated ({size} bytes, shorter than a TIFF header) — "
                "re-copy it"
            )
        chains = [struct.unpack(fmt[0], header[first_at : first_at + fmt[1]])[0]]
        if tif is not None:
            chains += [o for page in tif.pages for o in (getattr(page, "subifds", None) or ())]
        for offset in chains:
            _walk_directories(fh, path, size, int(offset), fmt)


def _walk_directories(fh: Any, path: Path, size: int, offset: int, fmt: tuple) -> None:
    offsetformat, offsetsize, tagnoformat, tagnosize, tagsize = fmt
    seen: set[int] = set()
    while offset and offset not in seen and len(seen) < 1 << 20:
        seen.add(offset)
        if offset + tagnosize > size:
            raise _truncated(path, size, offset, offset < size)
        fh.seek(offset)
        count = struct.unpack(tagnoformat, fh.read(tagnosize))[0]
        end = offset + tagnosize + count * tagsize + offsetsize
        if end > size:
            raise _truncated(path, size, offset, True)
        fh.seek(end - offsetsize)
        offset = struct.unpack(offsetformat, fh.read(offsetsize))[0]


def open_tiff(path: Path) -> SlideParts:
    """Open a TIFF-family slide; see the module docstring.

    Parameters
    ----------
    path
        The TIFF, SVS or other TIFF-family file. Errors tifffile logs while reading it are
        repeated as one warning.

    Returns
    -------
    SlideParts

    Raises
    ------
    SlideFormatError
        Not a readable TIFF, truncated before one of its image directories, or no 2-D image.
    """
    with _holding_tifffile_log() as held:
        parts = _open_tiff(path)
    problems = sorted({r.getMessage() for r in held if r.levelno >= logging.ERROR})
    if problems:  # the file opened, but tifffile found something wrong with it
        warnings.warn(f"{path}: tifffile reports: {'; '.join(problems)[:500]}", stacklevel=3)
    return parts


def _open_tifffile(path: Path) -> tuple[Any, list[Any]]:
    """tifffile's view of the file and its series, or a one-line SlideFormatError."""
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
        series_list = list(tif.series)
    except Exception as exc:
        _check_directories(path)
        raise SlideFormatError(
            f"{path}: not a readable TIFF/SVS file ({type(exc).__name__}: {exc}). "
            "The file may be truncated, corrupt, or another format with a TIFF extension."
        ) from exc
    try:
        _check_directories(path, tif)
    except BaseException:
        tif.close()
        raise
    try:
        tif.filehandle.set_lock(True)  # dask reads tiles from several threads
    except AttributeError:
        tif.filehandle.lock = threading.RLock()
    return tif, series_list


def _open_tiff(path: Path) -> SlideParts:
    tif, series_list = _open_tifffile(path)
    image_series = [s for s in series_list if "Y" in s.axes and "X" in s.axes]
    if not image_series:
        tif.close()
        raise SlideFormatError(f"{path}: the TIFF holds no 2-D image")

    # The pyramid: the SVS baseline, else the largest series that is not a label/macro image.
    named = {i: _series_name(s) for i, s in enumerate(image_series)}
    baseline = [s for s in image_series if tif.is_svs and _series_name(s) == "baseline"]
    if baseline:
        main = baseline[0]
    else:  # not SVS, or an Aperio description on a file tifffile reads as its own layout
        candidates = [
            s for i, s in enumerate(image_series) if _associated_key(named[i], "x") in (None, "x")
        ] or image_series
        main = max(candidates, key=lambda s: _yx(s)[0] * _yx(s)[1])
    level_series: list[tuple[Any, int]] = [(main, j) for j in range(len(main.levels))]

    # OME-TIFF may store levels as separate series of the same image, not as SubIFDs.
    h0, w0 = _yx(main)
    others = [s for s in image_series if s is not main]
    if len(main.levels) == 1:
        for s in sorted(others, key=lambda s: -_yx(s)[0] * _yx(s)[1]):
            h, w = _yx(s)
            name = _series_name(s)
            if (
                _associated_key(name, "x") in (None, "x")
                and h < h0
                and w < w0
                and abs((w0 / w) - (h0 / h)) / (w0 / w) < 0.02
                and s.dtype == main.dtype
                and s.shape[-1:] == main.shape[-1:]
            ):
                level_series.append((s, 0))
        others = [s for s in others if all(s is not ls for ls, _ in level_series)]

    raw = RawFile(path, tif.filehandle.size)
    sources: list[LevelSource] = []
    for index, (series, level) in enumerate(level_series):
        array, axes, chunks = _level_array(tif, series, level)
        n_channels = 3 if _is_rgba(series) else None
        source = LevelSource(array, axes, path, f"level {index}", chunks, n_channels)
        source.jpeg_tiles = _jpeg_tiles(series.levels[level].keyframe, raw)
        source.stored = _stored_segments(series, level, raw, source.name)
        sources.append(source)
    sources.sort(key=lambda src: -src.shape[0] * src.shape[1])

    associated: dict[str, LevelSource] = {}
    for i, s in enumerate(others):
        key = _associated_key(_series_name(s), f"image{i + 1}") or f"image{i + 1}"
        while key in associated:
            key += "_"
        array, axes, chunks = _level_array(tif, s, 0)
        associated[key] = LevelSource(
            array, axes, path, f"associated image {key!r}", chunks, 3 if _is_rgba(s) else None
        )
        associated[key].stored = _stored_segments(s, 0, raw, associated[key].name)

    page = main.keyframe
    parts = SlideParts(levels=sources, associated=associated, closers=[tif, raw])
    parts.compression = getattr(page.compression, "name", str(page.compression)).lower()
    parts.properties = {"tiff.ImageDescription": (page.description or "")[:4000]}
    _parse_metadata(tif, main, parts, path)
    return parts


def _stored_segments(series: Any, level: int, raw: RawFile, name: str) -> TiffSegments | None:
    """The tiles/strips behind a level stored in one TIFF page, else None (decoded digests)."""
    import tifffile

    pages = series.levels[level].pages
    if len(pages) != 1 or not isinstance(pages[0], tifffile.TiffPage):
        return None
    try:
        return TiffSegments(pages[0], raw, name)
    except (ValueError, TypeError, AttributeError):
        return None


def _jpeg_tiles(page: Any, raw: RawFile) -> JpegTiles | None:
    """The page's stored tiles when they are JPEG-compressed RGB (one plane), else None."""
    if int(page.compression) != 7 or not page.is_tiled:
        return None
    if page.samplesperpixel != 3 or page.planarconfig != 1 or page.imagedepth != 1:
        return None
    return JpegTiles(
        tile_shape=(int(page.tilelength), int(page.tilewidth)),
        level_shape=(int(page.imagelength), int(page.imagewidth)),
        tables=page.jpegtables,
        rgb_colourspace=int(page.photometric) == 2,
        offsets=np.asarray(page.dataoffsets, np.int64),
        counts=np.asarray(page.databytecounts, np.int64),
        raw=raw,
    )


def _is_rgba(series: Any) -> bool:
    page = series.keyframe
    return int(getattr(page, "photometric", 0)) == 2 and page.samplesperpixel == 4


def _parse_metadata(tif: Any, main: Any, parts: SlideParts, path: Path) -> None:
    """Fill mpp, objective power, vendor and format from whatever the file carries."""
    import tifffile

    page = main.keyframe
    if tif.is_svs:
        parts.vendor, parts.format = "aperio", "aperio-svs"
        try:
            meta = tifffile.svs_description_metadata(page.description)
        except Exception:
            meta = dict(re.findall(r"\|\s*([^=|]+?)\s*=\s*([^|]*)", page.description))
        parts.properties.update({f"aperio.{k}": v for k, v in meta.items()})
        mpp = positive_float(meta.get("MPP"))
        if mpp:
            parts.mpp_xy, parts.mpp_source = (mpp, mpp), "aperio MPP"
        parts.objective_power = positive_float(meta.get("AppMag"))
    elif tif.is_ome and tif.ome_metadata:
        parts.vendor, parts.format = "ome", "ome-tiff"
        parse_ome_xml(tif.ome_metadata, _yx(main), parts)
    else:
        flags = [f for f in ("ndpi", "philips", "scn", "bif", "qpi") if getattr(tif, f"is_{f}")]
        parts.vendor = flags[0] if flags else "generic"
        parts.format = (
            f"{flags[0]}-tiff" if flags else ("pyramidal-tiff" if len(parts.levels) > 1 else "tiff")
        )
    if parts.mpp_xy is None:
        mpp_xy = _mpp_from_resolution_tags(page, path)
        if mpp_xy:
            parts.mpp_xy, parts.mpp_source = mpp_xy, "TIFF resolution tags"


def _mpp_from_resolution_tags(page: Any, path: Path) -> tuple[float, float] | None:
    tags = page.tags
    if "XResolution" not in tags or "ResolutionUnit" not in tags:
        return None
    unit = int(tags["ResolutionUnit"].value)
    um_per_unit = {2: 25400.0, 3: 10000.0, 4: 1000.0, 5: 1.0}.get(unit)
    if um_per_unit is None:
        return None
    out = []
    for name in ("XResolution", "YResolution"):
        value = tags[name].value if name in tags else tags["XResolution"].value
        pixels_per_unit = value[0] / value[1] if isinstance(value, tuple) else float(value)
        if pixels_per_unit <= 0:
            return None
        out.append(um_per_unit / pixels_per_unit)
    lo, hi = PLAUSIBLE_MPP
    if not (lo <= out[0] <= hi):
        warnings.warn(
            f"{path}: ignoring TIFF resolution tags ({out[0]:.4g} µm/px is not a microscope "
            "pixel size; probably a screen default like 72 dpi)",
            stacklevel=4,
        )
        return None
    return out[0], out[1]


def _starts_like_tiff(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) in (b"II", b"MM")


BACKEND = Backend(
    name="tiff",
    title="TIFF/SVS",
    suffixes=(".svs", ".tif", ".tiff", ".ome.tif", ".ome.tiff"),
    directory=False,
    expects="a TIFF/SVS file",
    can_open=_starts_like_tiff,
    open=open_tiff,
)
