"""The tile grid: :func:`make_tile_grid` → :class:`TileGrid`, and reading its tiles."""

from __future__ import annotations

import io
import json
import math
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .concurrency import read_ahead
from .errors import DeepPTError, NoTissueWarning, TileGridError
from .geometry import GridPlacement
from .progress import CancelLike, ProgressLike, check_cancelled, make_progress
from .slide import Slide, as_slide
from .tissue import TissueMask, detect_tissue

__all__ = ["TileGrid", "TileGridParams", "detect_and_tile", "make_tile_grid", "sobel_edge_fraction"]

GRID_FORMAT_VERSION = 1
GRID_HEADER = "# napari-deeppt tile grid "


@dataclass(frozen=True)
class TileGridParams:
    """How tiles are cut (DeepPT: 512 px at 0.5 µm/px, i.e. 20×, no overlap).

    Attributes
    ----------
    tile_px
        Tile side in pixels at ``mpp``.
    mpp
        Resolution of the tiles in µm/px; read from the best level, then resized.
    stride_px
        Step between tiles in pixels at ``mpp``; None = ``tile_px`` (no overlap).
    min_tissue
        Keep tiles whose tissue fraction (from the mask) is at least this.
    edge_filter
        Also apply DeepPT's Sobel criterion (reads every candidate tile).
    edge_magnitude, edge_min_fraction
        Sobel criterion: keep a tile when at least ``edge_min_fraction`` of its grey pixels
        have Sobel magnitude ≥ ``edge_magnitude`` (DeepPT: 15 and 0.5).
    """

    tile_px: int = 512
    mpp: float = 0.5
    stride_px: int | None = None
    min_tissue: float = 0.5
    edge_filter: bool = False
    edge_magnitude: float = 15.0
    edge_min_fraction: float = 0.5

    def __post_init__(self) -> None:
        problems = []
        if int(self.tile_px) != self.tile_px or self.tile_px < 16:
            problems.append(f"tile_px={self.tile_px!r} must be an integer ≥ 16")
        if not self.mpp > 0:
            problems.append(f"mpp={self.mpp!r} must be > 0 µm/px")
        if self.stride_px is not None and not (
            int(self.stride_px) == self.stride_px and self.stride_px >= 1
        ):
            problems.append(f"stride_px={self.stride_px!r} must be a positive integer")
        if not 0 <= self.min_tissue <= 1:
            problems.append(f"min_tissue={self.min_tissue!r} must be in [0, 1]")
        if not 0 <= self.edge_min_fraction <= 1:
            problems.append(f"edge_min_fraction={self.edge_min_fraction!r} must be in [0, 1]")
        if problems:
            raise ValueError("tile grid parameters out of range: " + "; ".join(problems))

    @property
    def stride(self) -> int:
        return int(self.stride_px or self.tile_px)


@dataclass(frozen=True, eq=False)
class TileGrid:
    """Kept tiles of a slide: a typed table plus how they were read.

    Attributes
    ----------
    xy
        ``(n, 2)`` int64 level-0 top-left corners ``(x, y)``.
    rowcol
        ``(n, 2)`` position of each tile in the full grid (``grid_shape``).
    tissue_fraction
        ``(n,)`` fraction of each tile covered by tissue.
    edge_fraction
        ``(n,)`` fraction of pixels with Sobel magnitude ≥ the threshold (NaN if not computed).
    size_level0, stride_level0
        Tile side and step in level-0 pixels.
    """

    xy: np.ndarray
    rowcol: np.ndarray
    tissue_fraction: np.ndarray
    edge_fraction: np.ndarray
    grid_shape: tuple[int, int]
    size_level0: float
    stride_level0: float
    params: TileGridParams
    slide_dimensions: tuple[int, int]
    slide_mpp: float
    slide_path: str = ""

    def __len__(self) -> int:
        return int(self.xy.shape[0])

    def __repr__(self) -> str:
        p = self.params
        return (
            f"TileGrid({len(self)} tiles of {p.tile_px} px at {p.mpp} µm/px, "
            f"grid {self.grid_shape[0]}×{self.grid_shape[1]}, slide {Path(self.slide_path).name!r})"
        )

    @property
    def tile_px(self) -> int:
        return int(self.params.tile_px)

    @property
    def mpp(self) -> float:
        return float(self.params.mpp)

    @property
    def placement(self) -> GridPlacement:
        """Placement of a raster with one pixel per grid cell (see :meth:`raster`)."""
        return GridPlacement((self.stride_level0,) * 2, (self.size_level0,) * 2)

    @property
    def centres(self) -> np.ndarray:
        """``(n, 2)`` level-0 centres ``(x, y)`` of the tiles (continuous coordinates)."""
        return self.xy + self.size_level0 / 2

    def centres_um(self) -> np.ndarray:
        """``(n, 2)`` tile centres ``(x, y)`` in µm from the slide's origin (for AnnData)."""
        return self.centres.astype(np.float64) * self.slide_mpp

    def obs_table(self) -> Any:
        """One row per tile (``tile0``, ``tile1`` …): level-0 corner, grid cell, tissue."""
        import pandas as pd

        return pd.DataFrame(
            {
                "x_level0": self.xy[:, 0],
                "y_level0": self.xy[:, 1],
                "row": self.rowcol[:, 0],
                "col": self.rowcol[:, 1],
                "tissue_fraction": self.tissue_fraction,
            },
            index=[f"tile{i}" for i in range(len(self))],
        )

    def raster(self, values: Any = None, fill: float = 0) -> np.ndarray:
        """One pixel per grid cell: ``values`` (default 1) at kept tiles, ``fill`` elsewhere."""
        values = np.ones(len(self), np.uint8) if values is None else np.asarray(values)
        out = np.full(self.grid_shape + values.shape[1:], fill, dtype=values.dtype)
        out[self.rowcol[:, 0], self.rowcol[:, 1]] = values
        return out

    def subset(self, keep: Any) -> TileGrid:
        """A grid with only the tiles selected by a boolean mask or index array."""
        keep = np.asarray(keep)
        return replace(
            self,
            xy=self.xy[keep],
            rowcol=self.rowcol[keep],
            tissue_fraction=self.tissue_fraction[keep],
            edge_fraction=self.edge_fraction[keep],
        )

    def read_tile(self, slide: Slide, index: int) -> np.ndarray:
        """Tile ``index`` as ``(tile_px, tile_px, 3)`` uint8 at the grid's resolution."""
        x, y = (int(v) for v in self.xy[index])
        return slide.read_region_at_mpp(x, y, self.tile_px, self.tile_px, self.mpp)

    def iter_tiles(
        self, slide: Slide, indices: Any = None, workers: int = 4, prefetch: int = 16
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(index, tile)`` in order, reading ahead in threads (at most ``prefetch``)."""
        indices = range(len(self)) if indices is None else [int(i) for i in indices]

        def read(i: int) -> tuple[int, np.ndarray]:
            return i, self.read_tile(slide, i)

        yield from read_ahead(read, indices, workers, prefetch)

    def to_dataframe(self) -> Any:
        import pandas as pd

        return pd.DataFrame(
            {
                "x": self.xy[:, 0],
                "y": self.xy[:, 1],
                "row": self.rowcol[:, 0],
                "col": self.rowcol[:, 1],
                "size_level0": self.size_level0,
                "tissue_fraction": self.tissue_fraction,
                "edge_fraction": self.edge_fraction,
            }
        )

    def _meta(self) -> dict[str, Any]:
        return {
            "format_version": GRID_FORMAT_VERSION,
            "grid_shape": self.grid_shape,
            "size_level0": self.size_level0,
            "stride_level0": self.stride_level0,
            "params": asdict(self.params),
            "slide_dimensions": self.slide_dimensions,
            "slide_mpp": self.slide_mpp,
            "slide_path": self.slide_path,
        }

    def to_geojson(
        self,
        path: str | Path,
        measurements: dict[str, np.ndarray] | None = None,
        overwrite: bool = False,
    ) -> Path:
        """Tiles as QuPath GeoJSON (level-0 px) with their tissue fraction and ``measurements``.

        See :mod:`napari_deeppt.io.geojson`.
        """
        from .io.geojson import tile_features, write_geojson

        return write_geojson(tile_features(self, measurements), path, overwrite=overwrite)

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write a CSV (one row per tile) whose first line holds the grid's parameters."""
        from .io import atomic_path

        path = Path(path)
        buffer = io.StringIO()
        buffer.write(GRID_HEADER + json.dumps(self._meta()) + "\n")
        self.to_dataframe().to_csv(buffer, index=False, float_format="%.6g")
        with atomic_path(path, overwrite=overwrite) as tmp:
            tmp.write_text(buffer.getvalue())
        return path

    @classmethod
    def load(cls, path: str | Path) -> TileGrid:
        """Read a grid written by :meth:`save`."""
        import pandas as pd

        path = Path(path)
        try:
            with open(path) as fh:
                header = fh.readline()
                if not header.startswith(GRID_HEADER):
                    raise ValueError("missing the '# napari-deeppt tile grid' header line")
                meta = json.loads(header[len(GRID_HEADER) :])
                table = pd.read_csv(fh)
        except (OSError, ValueError) as exc:
            raise DeepPTError(f"{path}: not a tile grid written by napari-deeppt ({exc})") from exc
        return cls(
            xy=table[["x", "y"]].to_numpy(np.int64),
            rowcol=table[["row", "col"]].to_numpy(np.int64),
            tissue_fraction=table["tissue_fraction"].to_numpy(np.float32),
            edge_fraction=table["edge_fraction"].to_numpy(np.float32),
            grid_shape=tuple(meta["grid_shape"]),
            size_level0=float(meta["size_level0"]),
            stride_level0=float(meta["stride_level0"]),
            params=TileGridParams(**meta["params"]),
            slide_dimensions=tuple(meta["slide_dimensions"]),
            slide_mpp=float(meta["slide_mpp"]),
            slide_path=meta["slide_path"],
        )


def sobel_edge_fraction(tile: np.ndarray, magnitude: float = 15.0) -> float:
    """Fraction of a tile's pixels whose grey-level Sobel magnitude is at least ``magnitude``.

    DeepPT keeps a tile when this is ≥ 0.5 (i.e. drops it when more than half its pixels have
    magnitude < 15): grey = 0.299 R + 0.587 G + 0.114 B, 3×3 Sobel in x and y.

    Parameters
    ----------
    tile
        RGB(A) ``(H, W, ≥ 3)``; the first three channels are used.
    magnitude
        Threshold of the gradient magnitude, in grey levels (0-255 for uint8 tiles).

    Returns
    -------
    float
        Between 0 and 1.
    """
    from scipy import ndimage

    grey = tile[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    gx = ndimage.sobel(grey, axis=1, mode="mirror")
    gy = ndimage.sobel(grey, axis=0, mode="mirror")
    return float((np.hypot(gx, gy) >= magnitude).mean())


def make_tile_grid(
    slide: Any,
    mask: TissueMask | None = None,
    tile_px: int = 512,
    mpp: float = 0.5,
    min_tissue: float = 0.5,
    *,
    stride_px: int | None = None,
    edge_filter: bool = False,
    edge_magnitude: float = 15.0,
    edge_min_fraction: float = 0.5,
    workers: int = 4,
    progress: ProgressLike = None,
    cancel: CancelLike = None,
) -> TileGrid:
    """Cut the slide into tiles at a physical resolution and keep those on tissue.

    Parameters
    ----------
    slide
        A :class:`~napari_deeppt.slide.Slide` or a path.
    mask
        Tissue mask; detected with default parameters when None.
    tile_px, mpp
        Tile side in pixels at ``mpp`` µm/px (DeepPT: 512 at 0.5, i.e. 256 µm at 20×).
    min_tissue
        Minimum tissue fraction of a kept tile.
    stride_px
        Step between tiles in pixels at ``mpp`` (default ``tile_px``: no overlap).
    edge_filter, edge_magnitude, edge_min_fraction
        DeepPT's Sobel criterion (see :func:`sobel_edge_fraction`); reads every candidate.
    workers
        Threads reading tiles for the edge filter.
    progress, cancel
        See :mod:`napari_deeppt.progress`.

    Returns
    -------
    TileGrid
        Possibly empty (with a :class:`~napari_deeppt.errors.NoTissueWarning`).
    """
    params = TileGridParams(
        tile_px=tile_px,
        mpp=mpp,
        stride_px=stride_px,
        min_tissue=min_tissue,
        edge_filter=edge_filter,
        edge_magnitude=edge_magnitude,
        edge_min_fraction=edge_min_fraction,
    )
    slide = as_slide(slide)
    if mask is None:
        mask = detect_tissue(slide, progress=progress, cancel=cancel)
    grid = _candidate_tiles(slide, mask, params)
    candidates = grid.grid_shape[0] * grid.grid_shape[1]
    grid = grid.subset(grid.tissue_fraction >= params.min_tissue)
    if params.edge_filter and len(grid):
        grid = _edge_filter(slide, grid, workers, progress, cancel)
    if len(grid) == 0:
        warnings.warn(
            NoTissueWarning(
                f"{slide.path}: no tile has at least {params.min_tissue:.0%} tissue"
                + (" and enough edges" if params.edge_filter else "")
                + f" ({candidates} candidate tiles of {params.tile_px} px at {params.mpp} µm/px)"
            ),
            stacklevel=2,
        )
    return grid


def _candidate_tiles(slide: Slide, mask: TissueMask, params: TileGridParams) -> TileGrid:
    """Every cell of the grid that fits in the slide, with its tissue fraction."""
    mpp0 = slide.require_mpp("tiling at a physical resolution")
    if tuple(mask.slide_dimensions) != slide.dimensions:
        raise TileGridError(
            f"the tissue mask was made for a {mask.slide_dimensions} px slide, "
            f"but {slide.path} is {slide.dimensions} px"
        )
    w0, h0 = slide.dimensions
    size0 = params.tile_px * params.mpp / mpp0
    stride0 = params.stride * params.mpp / mpp0
    if size0 > w0 or size0 > h0:
        raise TileGridError(
            f"{slide.path}: a tile of {params.tile_px} px at {params.mpp} µm/px "
            f"({size0 * mpp0:.0f} µm) is larger than the slide ({w0 * mpp0:.0f} × "
            f"{h0 * mpp0:.0f} µm); use a smaller tile_px or mpp"
        )
    cols = math.floor((w0 - size0) / stride0 + 1e-9) + 1
    rows = math.floor((h0 - size0) / stride0 + 1e-9) + 1
    rr, cc = (a.ravel() for a in np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij"))
    xs = np.round(cc * stride0).astype(np.int64)
    ys = np.round(rr * stride0).astype(np.int64)
    return TileGrid(
        xy=np.stack([xs, ys], axis=1),
        rowcol=np.stack([rr, cc], axis=1),
        tissue_fraction=mask.fraction(xs, ys, size0, size0).astype(np.float32),
        edge_fraction=np.full(len(xs), np.nan, np.float32),
        grid_shape=(rows, cols),
        size_level0=float(size0),
        stride_level0=float(stride0),
        params=params,
        slide_dimensions=(w0, h0),
        slide_mpp=float(mpp0),
        slide_path=str(slide.path),
    )


def _edge_filter(
    slide: Slide, grid: TileGrid, workers: int, progress: ProgressLike, cancel: CancelLike
) -> TileGrid:
    """DeepPT's Sobel criterion: read every tile, keep those with enough edges."""
    slide.require_rgb("the Sobel edge filter")
    params = grid.params
    edges = np.empty(len(grid), np.float32)
    with make_progress(progress, len(grid), "Sobel edge filter", unit="tile") as bar:
        for i, tile in grid.iter_tiles(slide, workers=workers):
            check_cancelled(cancel, "tiling")
            edges[i] = sobel_edge_fraction(tile, params.edge_magnitude)
            bar.update()
    return replace(grid, edge_fraction=edges).subset(edges >= params.edge_min_fraction)


def detect_and_tile(
    slide: Any,
    *,
    tissue: dict[str, Any] | None = None,
    roi: Any = None,
    exclude_regions: Any = None,
    roi_class: str | None = None,
    progress: ProgressLike = None,
    cancel: CancelLike = None,
    **grid_options: Any,
) -> tuple[TissueMask, TileGrid]:
    """Slide → :class:`TissueMask` → :class:`TileGrid` in one call.

    Parameters
    ----------
    slide
        A :class:`~napari_deeppt.slide.Slide` or a path.
    tissue
        :class:`~napari_deeppt.tissue.TissueParams` fields (the defaults when None).
    roi, exclude_regions
        Keep only the tissue inside regions of interest; drop the tissue inside others (a
        GeoJSON file or level-0 polygons, see :meth:`~napari_deeppt.tissue.TissueMask.restrict`).
    roi_class
        Of a GeoJSON ``roi`` file, the objects of this class only, e.g. QuPath's ``"Tumor"``
        (``exclude_regions`` always uses all its objects).
    progress, cancel
        As for :func:`~napari_deeppt.tissue.detect_tissue`.
    **grid_options
        :func:`make_tile_grid`'s keywords (``tile_px``, ``mpp``, ``min_tissue``, ...).

    Returns
    -------
    tuple of TissueMask and TileGrid
        The mask (restricted to the regions) and its tiles.
    """
    slide = as_slide(slide)
    mask = detect_tissue(slide, progress=progress, cancel=cancel, **(tissue or {}))
    if roi is not None:
        mask = mask.restrict(roi, classification=roi_class)
    if exclude_regions is not None:
        mask = mask.restrict(exclude_regions, exclude=True)
    if (roi is not None or exclude_regions is not None) and mask.is_empty:
        warnings.warn(
            f"{slide.path}: no tissue left inside the regions of interest "
            "(are they in this slide's level-0 pixels?)",
            NoTissueWarning,
            stacklevel=2,
        )
    check_cancelled(cancel, "tiling")
    with warnings.catch_warnings():
        if mask.is_empty:  # already warned once: no tissue
            warnings.simplefilter("ignore", NoTissueWarning)
        grid = make_tile_grid(slide, mask, progress=progress, cancel=cancel, **grid_options)
    return mask, grid
