"""HEST-1k samples: ``st/<id>.h5ad`` with its pyramidal ``wsis/<id>.tif``."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExpressionTableError
from .data import SpatialData, existing_image, make_section, optional_import, unique_names

__all__ = ["read_hest"]


def read_hest(
    h5ad: str | os.PathLike[str],
    image: str | os.PathLike[str] | None = None,
    sample: str | None = None,
) -> SpatialData:
    """A HEST-1k sample: its ``.h5ad`` and its pyramidal full-resolution ``.tif``.

    Parameters
    ----------
    h5ad
        The sample's AnnData (``st/<id>.h5ad``): ``obsm["spatial"]`` holds each spot's
        (x, y) in level-0 pixels of the image, ``X`` the counts (sparse or dense),
        ``var_names`` the genes and ``obs_names`` the spot ids.
    image
        The image; by default ``<id>.tif`` (or ``.tiff``) beside the ``.h5ad`` or in a
        sibling ``wsis/`` folder, as HEST-1k lays a download out.
    sample
        Prefix of the spot ids (``<sample>_<id>``), to keep them unique across sections.

    Returns
    -------
    SpatialData
        Every spot (those with ``in_tissue == 1`` when ``obs`` has that column); repeated
        gene names suffixed ``-1``, ``-2`` …; ``spot_diameter_px`` from
        ``uns["spatial"][…]["scalefactors"]["spot_diameter_fullres"]``, or from HEST's
        ``metadata/<id>.json`` (``spot_diameter`` µm / ``pixel_size_um_estimated``).

    Raises
    ------
    ExpressionTableError
        The file missing or unreadable, no ``obsm["spatial"]``, no spot, spots off the image,
        no image found beside it.
    SlideNotFoundError
        The image given does not exist.
    """
    import pandas as pd

    path = Path(h5ad).expanduser()
    if not path.is_file():
        raise ExpressionTableError(f"{path}: no such .h5ad file")
    image = _hest_image(path) if image is None else existing_image(image, path)
    anndata = optional_import(path, "anndata")
    try:
        with warnings.catch_warnings():  # repeated gene names are made unique below
            warnings.filterwarnings("ignore", "Variable names are not unique")
            adata = anndata.read_h5ad(path)
    except Exception as exc:
        raise ExpressionTableError(f"{path}: not a readable .h5ad file ({exc})") from exc
    if "spatial" not in adata.obsm:
        raise ExpressionTableError(
            f"{path}: has no obsm['spatial'] (each spot's x, y in full-resolution pixels); "
            "it is not a HEST-1k or Visium AnnData"
        )
    xy = np.asarray(adata.obsm["spatial"], dtype=float)
    keep = np.ones(adata.n_obs, bool)
    if "in_tissue" in adata.obs:
        keep = (pd.to_numeric(adata.obs["in_tissue"], errors="coerce") == 1).to_numpy()
    if xy.ndim != 2 or xy.shape[1] < 2 or not keep.any():
        raise ExpressionTableError(
            f"{path}: no spot to read (obsm['spatial'] of shape {xy.shape}, "
            f"{int(keep.sum())} spots under tissue)"
        )
    values = adata.X[np.flatnonzero(keep)]
    values = values.toarray() if hasattr(values, "toarray") else np.asarray(values)
    genes = unique_names([str(g) for g in adata.var_names])
    ids = [str(i) for i in adata.obs_names[keep]]
    diameter = _hest_spot_diameter(path, adata.uns)
    spots = {"x": xy[keep, 0], "y": xy[keep, 1]}
    return make_section(ids, spots, (values, genes), image, sample, str(path), diameter)


def _hest_image(h5ad: Path) -> Path:
    """``<id>.tif`` beside the ``.h5ad`` or in a sibling ``wsis/`` folder."""
    places = [h5ad.parent, h5ad.parent.parent / "wsis"]
    found = [p / f"{h5ad.stem}{s}" for p in places for s in (".tif", ".tiff")]
    for candidate in found:
        if candidate.is_file():
            return candidate
    raise ExpressionTableError(
        f"{h5ad}: no image {found[0].name} beside it or in {places[1]}; give the "
        "full-resolution image (image=..., --image)"
    )


def _hest_spot_diameter(h5ad: Path, uns: Any) -> float | None:
    """The spot diameter in px from scanpy's scale factors or HEST's metadata JSON."""
    for library in dict(uns.get("spatial", {}) or {}).values():
        scale = dict(library.get("scalefactors", {}) if isinstance(library, dict) else {})
        if scale.get("spot_diameter_fullres"):
            return float(scale["spot_diameter_fullres"])
    meta = h5ad.parent.parent / "metadata" / f"{h5ad.stem}.json"
    if not meta.is_file():
        return None
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
        um, mpp = info.get("spot_diameter"), info.get("pixel_size_um_estimated")
    except Exception as exc:
        raise ExpressionTableError(f"{meta}: not a readable HEST metadata JSON ({exc})") from exc
    return float(um) / float(mpp) if um and mpp else None
