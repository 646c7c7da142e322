"""Lazy whole-slide images: :func:`open_slide` and :class:`Slide`.

Coordinates follow OpenSlide: public APIs take ``(x, y)`` in level-0 pixels and sizes as
``(width, height)``; arrays are ``(row, column, channel)``. Physical units are µm.

Nothing here decodes pixels until they are asked for: each level is a dask array chunked on
the file's own tiles, and :meth:`Slide.read_region` reads only the tiles a region touches.
"""

from __future__ import annotations

import hashlib
import math
import os
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .backends import registry
from .backends.base import LevelSource, SlideParts
from .backends.derived import derive_levels, stored_windows
from .backends.stored import JpegTiles
from .errors import MissingMppError, NotRGBError, SlideNotFoundError
from .io import as_path

__all__ = ["SLIDE_SUFFIXES", "LevelInfo", "Slide", "as_slide", "open_slide", "slide_stem"]

#: File name endings the reader accepts (lower case): those of the registered backends.
SLIDE_SUFFIXES = registry.suffixes()
#: A level may be this much coarser than asked for and still be read from (then resized).
LEVEL_TOLERANCE = 0.01


@dataclass(frozen=True)
class LevelInfo:
    """Geometry of one pyramid level."""

    index: int
    width: int
    height: int
    downsample: float
    downsample_xy: tuple[float, float]
    mpp: float | None
    tile: tuple[int, int]
    derived: bool


class Slide:
    """A whole-slide image opened lazily.

    Use :func:`open_slide` to create one. Attributes are read-only by convention.

    Attributes
    ----------
    path : Path
        The file (or ``.zarr`` directory) the slide was opened from.
    levels : list of dask.array.Array
        Pyramid levels, finest (level 0) first, each ``(height, width, channels)``; stored
        levels are chunked on the file's own tiles, then coarser levels derived lazily from
        the coarsest stored one until it fits in ``DERIVED_LEVEL_MAX_SIZE`` pixels.
    mpp : float or None
        µm per level-0 pixel (the mean of x and y), or None when unknown.
    mpp_xy : tuple of float or None
        µm per level-0 pixel along x and y.
    mpp_source : str
        Where ``mpp`` came from (``"aperio MPP"``, ``"user"`` ...), for provenance.
    objective_power : float or None
        Scanning objective magnification, when the file records it.
    vendor, format, compression : str
        What the file is.
    associated_images : dict of str to dask.array.Array
        Label, macro and thumbnail images by name; never part of ``levels``.
    properties : dict
        Raw metadata the backend found.
    """

    def __init__(
        self, path: Path, parts: SlideParts, mpp_xy: tuple[float, float] | None, mpp_source: str
    ) -> None:
        self.path = Path(path)
        self._parts = parts
        self._sources: list[LevelSource | None] = list(parts.levels)
        self.mpp_xy = mpp_xy
        self.mpp = None if mpp_xy is None else float((mpp_xy[0] + mpp_xy[1]) / 2)
        self.mpp_source = mpp_source
        self.objective_power = parts.objective_power
        self.vendor = parts.vendor
        self.format = parts.format
        self.compression = parts.compression
        self.properties = dict(parts.properties)
        # dask treats arrays of one name as one: never share names between two openings
        # (a Zarr chunk rewritten in place changes neither the folder's size nor its mtime)
        self._token = uuid.uuid4().hex[:16]
        self.levels = [self._as_dask(src, f"level{i}") for i, src in enumerate(parts.levels)]
        self._add_derived_levels()
        self.associated_images = {
            name: self._as_dask(src, f"assoc-{name}") for name, src in parts.associated.items()
        }

    # -- construction helpers ---------------------------------------------------------------
    def _as_dask(self, source: LevelSource, name: str) -> Any:
        import dask.array as da

        chunks = (*source.chunks, source.n_channels)
        return da.from_array(
            source,
            chunks=chunks,
            name=f"deeppt-{self._token}-{name}",
            asarray=False,
            lock=False,
            meta=np.empty((0, 0, 0), dtype=source.dtype),
        )

    def _add_derived_levels(self) -> None:
        for level in derive_levels(self.levels[-1]):
            self.levels.append(level)
            self._sources.append(None)

    # -- geometry -----------------------------------------------------------------------------
    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 ``(width, height)`` in pixels."""
        h, w = self.levels[0].shape[:2]
        return int(w), int(h)

    @property
    def level_count(self) -> int:
        return len(self.levels)

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        """``(width, height)`` of every level."""
        return [(int(a.shape[1]), int(a.shape[0])) for a in self.levels]

    @property
    def downsamples_xy(self) -> list[tuple[float, float]]:
        """Exact ``(x, y)`` downsample of every level relative to level 0."""
        w0, h0 = self.dimensions
        return [(w0 / w, h0 / h) for w, h in self.level_dimensions]

    @property
    def downsamples(self) -> list[float]:
        """Downsample of every level (mean of x and y, as OpenSlide reports it)."""
        return [(dx + dy) / 2 for dx, dy in self.downsamples_xy]

    @property
    def n_channels(self) -> int:
        return int(self.levels[0].shape[2])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.levels[0].dtype)

    @property
    def is_rgb(self) -> bool:
        """True for brightfield RGB slides (3 channels of uint8)."""
        return self.n_channels == 3 and self.dtype == np.uint8

    @property
    def n_stored_levels(self) -> int:
        return len(self._parts.levels)

    def level_info(self, level: int) -> LevelInfo:
        """Geometry of one level (size, downsample, µm per pixel, native tile)."""
        w, h = self.level_dimensions[level]
        dxy = self.downsamples_xy[level]
        chunk = self.levels[level].chunksize[:2]
        return LevelInfo(
            index=level,
            width=w,
            height=h,
            downsample=self.downsamples[level],
            downsample_xy=dxy,
            mpp=None if self.mpp is None else self.mpp * self.downsamples[level],
            tile=(int(chunk[1]), int(chunk[0])),
            derived=self._sources[level] is None,
        )

    def require_mpp(self, needed_for: str = "this step") -> float:
        """Return ``mpp`` or raise :class:`MissingMppError` saying how to provide it."""
        if self.mpp is None:
            raise MissingMppError(self.path, needed_for)
        return self.mpp

    def require_rgb(self, needed_for: str = "the H&E pipeline") -> None:
        """Raise :class:`NotRGBError` unless this is a 3-channel uint8 brightfield slide."""
        if not self.is_rgb:
            raise NotRGBError(
                f"{self.path}: {needed_for} needs an RGB brightfield (H&E) slide with 3 channels "
                f"of uint8, but this slide has {self.n_channels} channel(s) of {self.dtype}. "
                "It can still be viewed in napari."
            )

    def best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample is at most ``downsample`` (1 % tolerance)."""
        best = 0
        for i, ds in enumerate(self.downsamples):
            if ds <= downsample * (1 + LEVEL_TOLERANCE):
                best = i
        return best

    # -- pixels -------------------------------------------------------------------------------
    def read_region(
        self, x: int, y: int, width: int, height: int, level: int = 0, fill: int = 255
    ) -> np.ndarray:
        """Read a region as a numpy array (OpenSlide's convention).

        Parameters
        ----------
        x, y
            Top-left corner in level-0 pixels.
        width, height
            Size in pixels of ``level``.
        level
            Pyramid level to read from.
        fill
            Value for the part of the region that lies outside the slide.

        Returns
        -------
        numpy.ndarray
            ``(height, width, channels)`` of the slide's dtype (uint8 for H&E).
        """
        if not 0 <= level < self.level_count:
            raise IndexError(
                f"{self.path}: level {level} does not exist "
                f"(the slide has levels 0–{self.level_count - 1})"
            )
        width, height = int(width), int(height)
        if width < 0 or height < 0:
            raise ValueError(f"region size must be non-negative, got {width}×{height}")
        dx, dy = self.downsamples_xy[level]
        col0, row0 = math.floor(x / dx), math.floor(y / dy)
        lw, lh = self.level_dimensions[level]
        r0, r1 = max(row0, 0), min(row0 + height, lh)
        c0, c1 = max(col0, 0), min(col0 + width, lw)
        inside = (r0, r1, c0, c1) == (row0, row0 + height, col0, col0 + width)
        if r1 <= r0 or c1 <= c0:
            return np.full((height, width, self.n_channels), fill, dtype=self.dtype)
        source = self._sources[level]
        if source is not None:
            block = source.read(slice(r0, r1), slice(c0, c1))
        else:
            block = np.asarray(self.levels[level][r0:r1, c0:c1].compute(scheduler="threads"))
        if inside:  # the common case: no padding, no copy
            return block
        out = np.full((height, width, self.n_channels), fill, dtype=self.dtype)
        out[r0 - row0 : r1 - row0, c0 - col0 : c1 - col0] = block
        return out

    def read_region_at_mpp(
        self, x: int, y: int, width: int, height: int, mpp: float, fill: int = 255
    ) -> np.ndarray:
        """Read ``width × height`` pixels at ``mpp`` µm/px starting at level-0 ``(x, y)``.

        Reads from the coarsest level that is at least as fine as ``mpp`` and resizes (area
        averaging when shrinking, bilinear when enlarging).
        """
        level, src_w, src_h = self.read_plan(width, height, mpp)
        region = self.read_region(x, y, src_w, src_h, level=level, fill=fill)
        return resize_rgb(region, width, height)

    def read_plan(self, width: int, height: int, mpp: float) -> tuple[int, int, int]:
        """``(level, width, height)`` that :meth:`read_region_at_mpp` reads before resizing
        to ``width × height`` px at ``mpp`` µm/px (the coarsest level at least as fine)."""
        target_ds = mpp / self.require_mpp("reading at a physical resolution")
        level = self.best_level_for_downsample(target_ds)
        ds = self.downsamples[level]
        return level, max(1, round(width * target_ds / ds)), max(1, round(height * target_ds / ds))

    def get_thumbnail(self, max_size: int = 1024) -> np.ndarray:
        """The whole slide, its longer side at most ``max_size`` pixels."""
        w0, h0 = self.dimensions
        scale = max(w0, h0) / max_size
        level = self.best_level_for_downsample(max(scale, 1.0))
        image = np.asarray(self.levels[level].compute(scheduler="threads"))
        h, w = image.shape[:2]
        factor = max(w, h) / max_size
        if factor <= 1:
            return image
        return resize_rgb(image, max(1, round(w / factor)), max(1, round(h / factor)))

    def jpeg_tiles(self, level: int) -> JpegTiles | None:
        """The stored JPEG tiles of ``level``, undecoded, for a batch decoder (nvJPEG).

        Returns
        -------
        JpegTiles or None
            None unless ``level`` is stored (not derived) as JPEG-compressed RGB tiles.
        """
        source = self._sources[level] if 0 <= level < len(self._sources) else None
        return None if source is None else source.jpeg_tiles

    # -- identity and info --------------------------------------------------------------------
    def content_digest(self, grid: Any) -> str:
        """A digest of every stored byte that reading ``grid``'s tiles decodes.

        What a cache of per-tile results is keyed on: the raw bytes of the file tiles
        (strips, Zarr chunks) that ``grid.read_tile`` and the batched JPEG reader read at the
        level :meth:`read_plan` picks (for a derived level: the stored pixels it averages),
        plus all that changes how they decode (compression, JPEG tables, colour space, dtype,
        level shapes). Nothing is decoded; a copy of the file elsewhere has the same digest.
        A change where no tile of the grid reads keeps it (the cached result still holds).

        Parameters
        ----------
        grid
            A :class:`~napari_deeppt.tiles.TileGrid` (its ``xy``, ``tile_px`` and ``mpp``).

        Returns
        -------
        str
            64 hexadecimal characters.

        Raises
        ------
        SlideReadError
            A tile the grid reads is cut short (a truncated file).
        """
        level, width, height = self.read_plan(grid.tile_px, grid.tile_px, grid.mpp)
        return self.region_digest(grid.xy, width, height, level)

    def region_digest(self, xy: Any, width: int, height: int, level: int = 0) -> str:
        """:meth:`content_digest` of ``width × height`` px regions of ``level`` at level-0
        top-left corners ``xy`` (``(n, 2)``, x then y), placed as :meth:`read_region` does."""
        stored = min(level, self.n_stored_levels - 1)  # a derived level reads this one
        windows = stored_windows(xy, self.downsamples_xy[level], width, height, level - stored)
        shapes = repr(([lv.shape for lv in self.levels], level)).encode()
        digest = hashlib.blake2b(shapes, digest_size=32)
        digest.update(self._sources[stored].content_digest(*windows))  # type: ignore[union-attr]
        return digest.hexdigest()

    def info(self) -> dict[str, Any]:
        """Everything ``deeppt info`` prints, as plain data."""
        return {
            "path": str(self.path),
            "format": self.format,
            "vendor": self.vendor,
            "dimensions": self.dimensions,
            "mpp": self.mpp,
            "mpp_xy": self.mpp_xy,
            "mpp_source": self.mpp_source,
            "objective_power": self.objective_power,
            "compression": self.compression,
            "channels": self.n_channels,
            "dtype": str(self.dtype),
            "levels": [vars(self.level_info(i)) for i in range(self.level_count)],
            "associated_images": {
                k: tuple(int(n) for n in v.shape) for k, v in self.associated_images.items()
            },
        }

    def close(self) -> None:
        """Release the file handles."""
        for closer in self._parts.closers:
            try:
                closer.close()
            except Exception:
                pass

    def __del__(self) -> None:
        self.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        mpp = "unknown" if self.mpp is None else f"{self.mpp:.4g}"
        return (
            f"Slide({self.path.name!r}, {w}×{h} px, {self.level_count} levels, "
            f"mpp={mpp}, format={self.format})"
        )


def resize_rgb(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize a ``(h, w, c)`` uint8 image (area averaging down, bilinear up) with Pillow."""
    if image.shape[1] == width and image.shape[0] == height:
        return image
    from PIL import Image

    shrinking = width < image.shape[1] and height < image.shape[0]
    resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    if image.dtype != np.uint8 or image.shape[2] not in (1, 3, 4):
        channels = [
            np.asarray(
                Image.fromarray(image[..., i].astype(np.float32)).resize((width, height), resample)
            )
            for i in range(image.shape[2])
        ]
        return np.stack(channels, axis=-1).astype(image.dtype)
    squeeze = image.shape[2] == 1
    pil = Image.fromarray(image[..., 0] if squeeze else image)
    out = np.asarray(pil.resize((width, height), resample))
    return out[..., np.newaxis] if squeeze else out


def open_slide(
    path: str | os.PathLike[str], mpp: float | None = None, magnification: float | None = None
) -> Slide:
    """Open a whole-slide image lazily.

    Parameters
    ----------
    path
        An Aperio ``.svs``, a (pyramidal, OME-) TIFF, or an OME-Zarr directory (the
        formats of :mod:`napari_deeppt.backends.registry`).
    mpp
        µm per level-0 pixel. Overrides whatever the file says; use it when the file has none.
    magnification
        Objective magnification, used to estimate ``mpp = 10 / magnification`` (40× ≈
        0.25 µm/px) when ``mpp`` is not given and the file has no pixel size.

    Returns
    -------
    Slide

    Raises
    ------
    SlideNotFoundError
        ``path`` does not exist.
    SlideFormatError
        The file is not a readable slide (wrong format, truncated header).
    """
    for name, value in (("mpp (µm per level-0 pixel)", mpp), ("magnification", magnification)):
        if value is not None and not 0 < float(value) < float("inf"):
            raise ValueError(f"{name} must be a positive number, got {value}")
    path = as_path(path, "the slide must be a file path (or a Slide)").expanduser()
    if not path.exists():
        raise SlideNotFoundError(f"{path}: no such file or directory")
    parts = registry.backend_for(path).open(path)
    if mpp is not None:
        mpp_xy, source = (float(mpp), float(mpp)), "user"
    elif parts.mpp_xy is not None:
        mpp_xy, source = parts.mpp_xy, parts.mpp_source
    elif magnification is not None or parts.objective_power:
        power = float(parts.objective_power if magnification is None else magnification)  # type: ignore[arg-type]
        mpp_xy = (10.0 / power, 10.0 / power)
        source = "user magnification" if magnification is not None else "objective power (estimate)"
        if magnification is None:
            warnings.warn(
                f"{path}: no pixel size in the file; estimated {mpp_xy[0]:.3g} µm/px "
                f"from its {power:g}× objective. Pass mpp= if you know it.",
                stacklevel=2,
            )
    else:
        mpp_xy, source = None, "none"
    if magnification is not None and parts.objective_power is None:
        parts.objective_power = float(magnification)
    return Slide(path, parts, mpp_xy, source)


def as_slide(obj: Any, mpp: float | None = None) -> Slide:
    """A :class:`Slide` as it is, or a path opened with :func:`open_slide` (``mpp`` applies).

    Parameters
    ----------
    obj, mpp
        A Slide or a slide path (else TypeError: napari layers are converted by the napari
        side, its docks and ``deeppt`` in the console); µm per level-0 pixel, overriding
        the file's (a Slide of another ``mpp`` is opened again from its path).
    """
    if isinstance(obj, Slide):
        if mpp is not None and obj.mpp != mpp:
            return open_slide(obj.path, mpp=mpp)
        return obj
    if isinstance(obj, (str, os.PathLike)):
        return open_slide(obj, mpp=mpp)
    hint = ""
    if hasattr(obj, "metadata") and hasattr(obj, "data"):
        hint = (
            "; for a napari layer use deeppt.<function>(layer) in napari's console "
            "(napari_deeppt._napari.console)"
        )
    raise TypeError(f"expected a Slide or a slide path, got {type(obj).__name__}{hint}")


def slide_stem(path: str | os.PathLike[str]) -> str:
    """A slide's name without its (double) extension: ``case.ome.tif`` → ``case``.

    Parameters
    ----------
    path
        The slide's path. Its stem names every output made from the slide (files, layers).
    """
    path = Path(path)
    name = path.name
    for suffix in sorted(SLIDE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem
