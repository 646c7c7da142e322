"""Feature stores: :class:`FeatureSet` (features + tiles + provenance), its zarr files and
exports, and the cache those files make up.

A cache entry is named by :func:`cache_key`, a digest of everything that determines the
features: the stored bytes the tiles read, the tiles, the extractor and its weights, the
input normalisation, the stain normalisation, the dtype, the reader and the format versions.
The engine writes an entry under a temporary name and marks it complete last, so a cancelled
or crashed run never leaves an entry that looks complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import DeepPTError
from ..tiles import GRID_FORMAT_VERSION, TileGrid, TileGridParams
from .preprocess import RESIZE

__all__ = [
    "FEATURE_FORMAT_VERSION",
    "FeatureSet",
    "cache_entry",
    "cache_key",
    "create_store",
    "finish_store",
    "load_cached",
    "open_features",
]

FEATURE_FORMAT_VERSION = 1


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
        """The number of features per tile."""
        return int(self.features.shape[1])

    # -- files --------------------------------------------------------------------------------
    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write a zarr directory (features, tile table, provenance), atomically."""
        from ..io import atomic_path

        path = Path(path)
        with atomic_path(path, overwrite=overwrite, folder=True) as tmp:
            store = create_store(
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
        """A pandas table: level-0 x, y, tissue fraction, then ``f0``, ``f1``… per tile."""
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
        """:meth:`to_anndata` written as ``.h5ad``, atomically."""
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


def create_store(
    path: Path, grid: TileGrid, dim: int, dtype: Any, provenance: dict[str, Any]
) -> Any:
    """A zarr v2 group at ``path``: an empty ``features`` array, the tiles, ``complete=False``.

    Parameters
    ----------
    path
        The (temporary) directory to write.
    grid
        The tiles (their table and metadata are written now).
    dim, dtype
        The feature dimension and storage dtype.
    provenance
        Written as JSON (anything else as its ``str``).

    Returns
    -------
    zarr.Group
    """
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


def open_features(path: str | Path) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """A complete feature store's features, read lazily, with its provenance and tiles.

    Parameters
    ----------
    path
        A zarr store written by :meth:`FeatureSet.save`, the cache or a cohort run.

    Returns
    -------
    features : zarr.Array
        ``(n_tiles, feature_dim)``; slicing it reads only the chunks asked for.
    provenance, grid
        The store's provenance and its tile grid's metadata (``params``: tile size, µm/px).

    Raises
    ------
    DeepPTError
        Not a feature store, or an incomplete one (an interrupted run).
    """
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r")
        attrs = dict(group.attrs)
        if not attrs.get("complete"):
            raise ValueError("the store is incomplete (an interrupted run)")
        features, grid, provenance = group["features"], attrs["grid"], attrs["provenance"]
        if features.ndim != 2 or features.shape[0] != group["xy"].shape[0]:
            raise ValueError(f"features of shape {features.shape} do not match its tiles")
    except Exception as exc:
        raise DeepPTError(
            f"{path}: not a complete napari-deeppt feature store ({exc}); extract it again "
            "with `deeppt features --formats zarr`"
        ) from exc
    return features, provenance, grid


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


def cache_key(
    slide: Any,
    grid: TileGrid,
    extractor: str,
    weights_hash: str,
    spec: Any,
    stain: dict[str, Any],
    dtype: str,
    reader: str = "tiles",
    int8: dict[str, Any] | None = None,
    precision: str = "float32",
) -> tuple[str, dict[str, Any]]:
    """The cache key of a feature run and the fields it digests.

    Parameters
    ----------
    slide, grid
        The slide (its stored bytes under the tiles are digested) and the tiles.
    extractor, weights_hash, spec
        The extractor's registry name, its weights' hash and its spec (input size, mean, std).
    stain
        The stain configuration (:func:`~napari_deeppt.features.preprocess.stain_config`).
    dtype
        The storage dtype of the features.
    reader
        ``"tiles"`` (the slide's reader) or ``"torchvision-jpeg"`` (decoded on a device).
    int8
        For an int8 model, what makes it besides the weights
        (:func:`~napari_deeppt.features.quantized.int8_identity`: recipe, engine,
        calibration, versions): digested with ``precision: "int8"``.
    precision
        ``"float32"`` or ``"bfloat16"`` (digested as such); ignored with ``int8``. float32
        runs keep the keys they had before the choice existed.

    Returns
    -------
    key, fields
        24 hex digits, and the fields (they open the features' provenance).
    """
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
    if int8 is not None:
        fields["precision"] = "int8"
        fields["int8"] = int8
    elif precision != "float32":
        fields["precision"] = str(precision)
    key = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()
    return key[:24], fields


def cache_entry(cache_dir: str | Path | None, key: str) -> Path:
    """Where the entry ``key`` lives: ``<cache_dir>/<key>.zarr`` (default cache: see io).

    Parameters
    ----------
    cache_dir
        The feature cache folder; None: ``features`` under
        :func:`~napari_deeppt.io.cache_root`.
    key
        The entry's :func:`cache_key`.

    Returns
    -------
    pathlib.Path
        The entry's path, whether it exists or not.
    """
    from ..io import cache_root

    return Path(cache_dir or cache_root() / "features") / f"{key}.zarr"


def load_cached(path: Path) -> FeatureSet | None:
    """The complete entry at ``path`` (``from_cache=True``), or None to compute it again.

    An unreadable or incomplete entry counts as missing: the run replaces it.

    Parameters
    ----------
    path
        The entry (:func:`cache_entry`).

    Returns
    -------
    FeatureSet or None
    """
    if not path.exists():
        return None
    try:
        cached = FeatureSet.load(path)
    except DeepPTError:
        return None
    return dataclasses.replace(cached, from_cache=True)


def finish_store(store: Any, provenance: dict[str, Any]) -> None:
    """Write the final provenance and mark a store made by :func:`create_store` complete.

    Parameters
    ----------
    store
        The zarr group :func:`create_store` returned, its features written.
    provenance
        Written as JSON (anything else as its ``str``), replacing the first one.
    """
    store.attrs["provenance"] = json.loads(json.dumps(provenance, default=str))
    store.attrs["complete"] = True
