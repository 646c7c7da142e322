"""Prediction: a slide (or its features) and a model bundle → slide- and tile-level expression."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BundleMismatchError, DeepPTError
from .features.params import FeatureParams
from .progress import CancelLike, ProgressLike
from .slide import as_slide

__all__ = [
    "Prediction",
    "grid_misfit",
    "precision_for",
    "predict",
    "predict_from_features",
    "tiles_described",
]


@dataclass(eq=False)
class Prediction:
    """Predicted expression of one slide.

    Attributes
    ----------
    slide_expression
        pandas Series, genes → slide-level prediction (the mean over tiles), on the bundle's
        scale (``transform``).
    tile_expression
        ``(n_tiles, n_genes)`` float32: the per-tile outputs (spatial expression maps).
    grid
        The tiles (``grid.xy[i]`` is row ``i``).
    genes, transform
        Output genes and the scale they are on (``"log2p1"`` = log2(x + 1)).
    """

    slide_expression: Any
    tile_expression: np.ndarray
    grid: Any
    genes: list[str]
    transform: str
    slide_name: str = ""
    bundle_path: str = ""
    demo: bool = False
    provenance: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"Prediction({self.slide_name!r}: {len(self.genes)} genes × "
            f"{len(self.grid)} tiles, {self.transform}{', DEMO MODEL' if self.demo else ''})"
        )

    def gene_index(self, gene: str) -> int:
        try:
            return self.genes.index(gene)
        except ValueError:
            raise BundleMismatchError(
                f"gene {gene!r} is not predicted by this model "
                f"({len(self.genes)} genes, e.g. {self.genes[:5]})"
            ) from None

    def tile_map(self, gene: str) -> np.ndarray:
        """``(rows, cols)`` raster at tile stride of a gene's tile predictions, NaN off tissue."""
        return self.grid.raster(self.tile_expression[:, self.gene_index(gene)], fill=np.nan)

    def top_genes(self, n: int = 20) -> Any:
        return self.slide_expression.sort_values(ascending=False).head(n)

    def signature(self, genes: list[str]) -> tuple[np.ndarray, float]:
        """A gene signature: the mean of ``genes``' predictions per tile, and for the slide.

        Returns
        -------
        tiles, slide
            ``(n_tiles,)`` per-tile means and the mean of the genes' slide-level values, on
            the bundle's scale (e.g. mean log2(x + 1)).
        """
        genes = list(dict.fromkeys([genes] if isinstance(genes, str) else genes))
        if not genes:
            raise ValueError("a signature needs at least one gene")
        missing = [g for g in genes if g not in self.genes]
        if missing:
            raise BundleMismatchError(
                f"gene(s) {missing[:5]} are not predicted by this model "
                f"({len(self.genes)} genes, e.g. {self.genes[:5]})"
            )
        columns = [self.gene_index(g) for g in genes]
        tiles = np.asarray(self.tile_expression[:, columns], np.float64).mean(axis=1)
        return tiles.astype(np.float32), float(self.slide_expression[genes].mean())

    def to_csv(self, path: str | Path, overwrite: bool = False) -> Path:
        """Slide-level expression: one row per gene (gene, value, transform)."""
        import pandas as pd

        from .io import atomic_path

        table = pd.DataFrame(
            {
                "gene": self.genes,
                "expression": self.slide_expression.values,
                "transform": self.transform,
            }
        )
        with atomic_path(path, overwrite=overwrite) as tmp:
            table.to_csv(tmp, index=False)
        return Path(path)

    def to_anndata(self) -> Any:
        """Tile-level AnnData: tiles × genes, ``obsm["spatial"]`` tile centres in µm."""
        import anndata
        import pandas as pd

        grid = self.grid
        obs = grid.obs_table()
        adata = anndata.AnnData(
            X=self.tile_expression.astype(np.float32),
            obs=obs,
            var=pd.DataFrame(index=list(self.genes)),
        )
        adata.obsm["spatial"] = grid.centres_um()
        adata.uns["deeppt"] = {
            "transform": self.transform,
            "slide": self.slide_name,
            "bundle": self.bundle_path,
            "demo_model": self.demo,
            "spatial_units": "micrometer",
            # the extractor's arithmetic (float32, bfloat16 or int8): results differ by it
            "precision": str(self.provenance.get("features", {}).get("precision", "float32")),
        }
        if "regions_of_interest" in self.provenance:
            import json

            adata.uns["deeppt"]["regions_of_interest"] = json.dumps(
                self.provenance["regions_of_interest"], default=str
            )
        return adata

    def to_h5ad(self, path: str | Path, overwrite: bool = False) -> Path:
        from .io import atomic_path

        with atomic_path(path, overwrite=overwrite) as tmp:
            self.to_anndata().write_h5ad(tmp)
        return Path(path)

    def to_geojson(
        self, path: str | Path, genes: list[str] | None = None, overwrite: bool = False
    ) -> Path:
        """Tiles as QuPath GeoJSON with each gene's prediction as a measurement.

        Parameters
        ----------
        path
            Output ``.geojson``; import it into QuPath with the same slide open.
        genes
            Genes to include (default: all the model predicts).
        overwrite
            Replace an existing file.
        """
        genes = list(self.genes) if genes is None else list(genes)
        columns = {gene: self.tile_expression[:, self.gene_index(gene)] for gene in genes}
        return self.grid.to_geojson(path, columns, overwrite=overwrite)


def _load_bundle(bundle: Any) -> tuple[Any, str]:
    from .model.bundle import ModelBundle

    if isinstance(bundle, ModelBundle):
        return bundle, ""
    return ModelBundle.load(bundle), str(bundle)


def _plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples → lists), to compare settings."""
    import json

    return json.loads(json.dumps(value, default=str))


def _grid_settings(features: Any) -> dict[str, Any]:
    """Tile size and resolution of the features' grid: the grid itself, else its provenance."""
    params = getattr(features.grid, "params", None)
    if params is not None:
        return {"tile_px": params.tile_px, "mpp": params.mpp}
    return features.provenance.get("grid", {}).get("params", {})


def _fit_problems(expected: dict[str, Any], features: Any) -> list[str]:
    """What in ``features`` differs from what a bundle's ``feature`` settings need."""
    got = features.provenance
    problems = []
    for key, label in (("extractor", "extractor"), ("weights_hash", "weights")):
        if got.get(key) != expected.get(key):
            problems.append(f"{label} {got.get(key)!r} (the model needs {expected.get(key)!r})")
    if features.feature_dim != int(expected["feature_dim"]):
        problems.append(
            f"{features.feature_dim} features per tile (the model needs {expected['feature_dim']})"
        )
    grid = _grid_settings(features)
    for key, name in (("tile_px", "tile_px"), ("tile_mpp", "mpp")):
        if key in expected and (
            grid.get(name) is None or float(grid[name]) != float(expected[key])
        ):
            problems.append(f"{name}={grid.get(name)} (the model needs {expected[key]})")
    stain, needed = _plain(got.get("stain") or {}), _plain(expected.get("stain") or {})
    if stain.get("method") != needed.get("method"):
        problems.append(f"stain {stain.get('method')!r} (the model needs {needed.get('method')!r})")
    elif stain != needed:
        differ = sorted(k for k in set(stain) | set(needed) if stain.get(k) != needed.get(k))
        problems.append(
            f"stain {stain.get('method')!r} with other settings ({', '.join(differ)} differ "
            "from the model's)"
        )
    return problems


def tiles_described(tile_px: float, mpp: float) -> str:
    """Tiles as a user reads them: ``"256 µm tiles (512 px at 0.5 µm/px)"``.

    Parameters
    ----------
    tile_px, mpp
        The tile side in pixels and its resolution in µm/px.

    Returns
    -------
    str
    """
    return f"{tile_px * mpp:g} µm tiles ({tile_px:g} px at {mpp:g} µm/px)"


def grid_misfit(grid: Any, bundle: Any) -> str | None:
    """Why ``grid``'s tiles are not the ones a model was trained on, or None when they are.

    A model applied to tiles of another size or resolution gives numbers that mean nothing,
    so :func:`predict` refuses such a grid before any feature work.

    Parameters
    ----------
    grid
        A :class:`~napari_deeppt.tiles.TileGrid` (its ``tile_px`` and ``mpp``).
    bundle
        A ``.deeppt`` file or a :class:`~napari_deeppt.model.bundle.ModelBundle`.

    Returns
    -------
    str or None
        Both tile sizes in words (:func:`tiles_described`) when they differ.

    Raises
    ------
    BundleError
        ``bundle`` is a file that cannot be loaded.
    """
    model, _ = _load_bundle(bundle)
    feature = model.feature
    need_px, need_mpp = float(feature["tile_px"]), float(feature["tile_mpp"])
    if float(grid.tile_px) == need_px and float(grid.mpp) == need_mpp:
        return None
    return (
        f"these are {tiles_described(float(grid.tile_px), float(grid.mpp))}, but the model was "
        f"trained on {tiles_described(need_px, need_mpp)}"
    )


def _fitting(grid: Any, model: Any, slide: Any) -> Any:
    """``grid`` when it is None or has the model's tiles; else the one-line refusal."""
    if grid is not None and (misfit := grid_misfit(grid, model)) is not None:
        raise BundleMismatchError(
            f"{slide.path}: {misfit}; cut tiles of the model's size, or leave grid=None and "
            "predict() cuts them"
        )
    return grid


def _check_weights_file(feature: dict[str, Any], weights: Any, bundle_path: str) -> None:
    """Refuse a weights file that is not the one the bundle's features came from, up front."""
    import os

    from .features.extractors import weights_file_hash

    if not isinstance(weights, (str, os.PathLike)) or str(weights) == "random":
        return
    path = Path(weights).expanduser()
    expected = feature.get("weights_hash")
    if not path.is_file() or expected is None:
        return  # a missing file is load_extractor's to report
    found = weights_file_hash(path)
    if found != expected:
        raise BundleMismatchError(
            f"{path}: these weights (hash {found}) are not the ones "
            f"{bundle_path or 'the model'} was trained with (hash {expected}); pass the "
            "weights file the model was trained with"
        )


def precision_for(feature: dict[str, Any], precision: str | None) -> str:
    """The extractor precision a prediction runs at.

    Parameters
    ----------
    feature
        A bundle's feature settings (``ModelBundle.feature``).
    precision
        What was asked for; None: the bundle's own (``float32`` for bundles that name none).

    Returns
    -------
    str
        ``"float32"``, ``"bfloat16"`` or ``"int8"``.

    Raises
    ------
    ValueError
        An unknown precision (refused by :class:`~napari_deeppt.features.FeatureParams`).
    """
    from .features.params import FeatureParams

    chosen = feature.get("precision", "float32") if precision is None else precision
    return str(FeatureParams(precision=chosen).precision)


def _stain_for(config: dict[str, Any]) -> Any:
    from .stain import MacenkoTarget, ReinhardTarget, StainMethod

    method = config.get("method")
    if method is None:
        return None
    if method == StainMethod.MACENKO:
        return MacenkoTarget.from_dict(config)
    if method == StainMethod.REINHARD:
        return ReinhardTarget.from_dict(config)
    raise BundleMismatchError(f"the bundle names an unknown stain method {method!r}")


def predict_from_features(features: Any, bundle: Any, device: Any = "cpu") -> Prediction:
    """Predict from a :class:`~napari_deeppt.features.FeatureSet`, after checking it fits.

    Parameters
    ----------
    features
        Features of a slide's tiles, extracted with the bundle's settings.
    bundle
        A ``.deeppt`` file or a :class:`~napari_deeppt.model.bundle.ModelBundle`.
    device
        Where the model runs (a torch device or its name).

    Returns
    -------
    Prediction
        Per-tile expression, and the slide's as their mean (NaN without tiles).

    Raises
    ------
    BundleError
        ``bundle`` is a file that cannot be loaded.
    BundleMismatchError
        The features' extractor, weights, dimension, tiles or stain are not the model's.
    """
    import pandas as pd

    model, bundle_path = _load_bundle(bundle)
    got = features.provenance
    problems = _fit_problems(model.feature, features)
    if problems:
        raise BundleMismatchError(
            f"{bundle_path or 'the model'} does not fit these features: "
            + "; ".join(problems)
            + ". Extract features with the model's settings (predict() does this for you)."
        )
    tiles = model.predict_tiles(features.features, device=device)
    slide_values = tiles.mean(axis=0) if len(tiles) else np.full(model.n_genes, np.nan)
    name = Path(features.grid.slide_path).name
    return Prediction(
        slide_expression=pd.Series(slide_values, index=model.genes, name=name),
        tile_expression=tiles,
        grid=features.grid,
        genes=list(model.genes),
        transform=model.transform,
        slide_name=name,
        bundle_path=bundle_path,
        demo=model.demo,
        provenance={"features": got, "bundle": model.metadata(), "bundle_sha256": model.sha256},
    )


def _describe_regions(roi: Any, roi_class: str | None) -> dict[str, Any]:
    """What the prediction was restricted to, for its provenance."""
    import os

    if isinstance(roi, (str, os.PathLike)):
        return {"file": str(roi), "classification": roi_class}
    count = len(roi) if isinstance(roi, (list, tuple)) else 1
    return {"regions": count, "classification": roi_class}


def predict(
    slide: Any,
    bundle: Any,
    *,
    grid: Any = None,
    roi: Any = None,
    roi_class: str | None = None,
    weights: Any = None,
    device: Any = "auto",
    cache_dir: str | Path | None = None,
    progress: ProgressLike = True,
    cancel: CancelLike = None,
    precision: str | None = None,
    compile: Any = FeatureParams.compile,
) -> Prediction:
    """Predict a slide's expression with a model bundle.

    Tissue, tiles and features are made with the bundle's own settings (extractor, weights,
    tile size and resolution, stain), from the feature cache when possible.

    Parameters
    ----------
    slide
        A :class:`~napari_deeppt.slide.Slide` or a path.
    bundle
        A ``.deeppt`` file or a :class:`~napari_deeppt.model.bundle.ModelBundle`.
    grid
        Tiles to use; must have the bundle's tile size and resolution.
    roi, roi_class
        Predict from the tissue inside regions of interest only (a GeoJSON file such as
        QuPath's annotations, or level-0 polygons; see
        :meth:`~napari_deeppt.tissue.TissueMask.restrict`), e.g. the tumour a pathologist
        outlined. Ignored when ``grid`` is given.
    weights
        Weights file of the extractor, if not in torchvision's cache.
    device, cache_dir, progress, cancel
        As for :func:`~napari_deeppt.features.extract_features`.
    precision
        The model's arithmetic for the features: None (default) for the one the bundle was
        trained with (float32 unless it was trained on bfloat16 or int8 features);
        ``"bfloat16"`` runs the extractor in bfloat16 where the hardware has it natively
        (CPUs with AVX-512 BF16 or AMX: about twice as fast, features within bfloat16's
        rounding of float32's); ``"int8"`` runs the bundle's ResNet in int8 on the CPU,
        about twice as fast, for features that differ from float32 ones by the quantization
        error. Recorded in the provenance.
    compile
        As for :class:`~napari_deeppt.features.params.FeatureParams`: ``"auto"`` (default)
        compiles the CPU model for large slides and keeps it on disk, ``"cached"`` only uses
        one built earlier (what napari uses), True or False.
    """
    from .features import extract_features
    from .features.engine import require_precision
    from .tiles import detect_and_tile

    slide = as_slide(slide)
    model, bundle_path = _load_bundle(bundle)
    feature = model.feature
    precision = precision_for(feature, precision)  # checked before any slide work
    require_precision(precision, str(feature.get("extractor")), device)
    if weights is None and feature.get("weights_hash") == "random-0":
        weights = "random"
    _check_weights_file(feature, weights, bundle_path)
    grid_given = _fitting(grid, model, slide)
    if grid is None:
        _, grid = detect_and_tile(
            slide,
            tile_px=int(feature["tile_px"]),
            mpp=float(feature["tile_mpp"]),
            min_tissue=float(feature.get("min_tissue", 0.5)),
            roi=roi,
            roi_class=roi_class,
            progress=progress,
            cancel=cancel,
        )
    if len(grid) == 0:
        where = " inside the regions of interest" if roi is not None else ""
        raise DeepPTError(f"{slide.path}: no tissue tiles{where} to predict from")
    features = extract_features(
        slide,
        grid,
        extractor=feature["extractor"],
        weights=weights,
        device=device,
        stain=_stain_for(feature.get("stain") or {}),
        cache_dir=cache_dir,
        progress=progress,
        cancel=cancel,
        precision=precision,
        compile=compile,
    )
    prediction = predict_from_features(features, model)
    prediction.bundle_path = bundle_path or prediction.bundle_path
    if roi is not None and grid_given is None:
        prediction.provenance["regions_of_interest"] = _describe_regions(roi, roi_class)
    return prediction
