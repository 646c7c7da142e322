"""Training DeepPT models: inputs, patient-level cross-validation, metrics, the bundle.

DeepPT (Hoang et al. 2024): features → autoencoder (2048→512) → MLP applied per tile and
averaged over the slide, trained with MSE against bulk RNA-seq, Adam 1e-4, patient-level
5-fold cross-validation whose inner folds' models are ensembled. Two deliberate departures:
early stopping restores the best validation epoch (DeepPT kept the last), and the
autoencoder is fitted on the training folds only (DeepPT fitted it on every slide).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DeepPTError, ExpressionTableError
from .progress import CancelLike, ProgressLike, check_cancelled, make_progress

__all__ = [
    "TrainingResult",
    "TrainingSettings",
    "gene_metrics",
    "holm_sidak",
    "read_expression",
    "read_manifest",
    "read_spots",
    "spot_grid",
    "train",
]

TRANSFORMS = ("log2p1", "none")


@dataclass(frozen=True)
class TrainingSettings:
    """Cross-validation and optimisation settings (DeepPT's defaults)."""

    outer_folds: int = 5
    inner_folds: int = 5
    max_epochs: int = 200
    patience: int = 20
    lr: float = 1e-4
    batch_slides: int = 16
    ae_epochs: int = 30
    ae_batch: int = 256
    latent_dim: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        if self.outer_folds < 2 or self.inner_folds < 2:
            raise ValueError("outer_folds and inner_folds must be ≥ 2")
        if self.max_epochs < 1 or self.patience < 1 or not self.lr > 0:
            raise ValueError("max_epochs and patience must be ≥ 1 and lr > 0")


@dataclass(repr=False)
class TrainingResult:
    """What :func:`train` made."""

    bundle_path: Path
    gene_metrics: Any  # pandas.DataFrame, one row per gene
    summary: dict[str, Any]
    heldout: Any  # pandas.DataFrame, samples × genes, outer-fold predictions

    def __repr__(self) -> str:
        significant = self.summary.get("significant")
        return (
            f"TrainingResult({self.summary.get('genes')} genes, {significant} significant "
            f"held out; bundle {str(self.bundle_path)!r})"
        )


# -- inputs ---------------------------------------------------------------------------------
def read_manifest(path: str | Path, require_patient: bool = True) -> Any:
    """A cohort manifest CSV: ``slide``, ``sample_id``, ``patient_id`` (+ optional columns).

    Relative slide paths are resolved against the manifest's folder. With
    ``require_patient=False`` (prediction runs) a missing ``patient_id`` is the sample id.
    An optional ``roi`` column names a GeoJSON of regions of interest per slide (QuPath
    annotations; empty = the whole tissue), resolved the same way.
    """
    import pandas as pd

    path = Path(path)
    try:
        table = pd.read_csv(path, sep=None, engine="python", dtype=str)
    except Exception as exc:
        raise ExpressionTableError(f"{path}: not a readable manifest CSV ({exc})") from exc
    if not require_patient and "patient_id" not in table.columns and "sample_id" in table:
        table["patient_id"] = table["sample_id"]
    missing = [c for c in ("slide", "sample_id", "patient_id") if c not in table.columns]
    if missing:
        raise ExpressionTableError(
            f"{path}: the manifest lacks column(s) {missing}; it needs slide, sample_id, patient_id"
        )
    duplicated = table["sample_id"][table["sample_id"].duplicated()].tolist()
    if duplicated:
        raise ExpressionTableError(f"{path}: duplicated sample_id(s) {duplicated[:5]}")
    table["slide"] = _relative_to(path, table["slide"])
    _require_slides(path, table)
    if "roi" in table.columns:
        table["roi"] = _relative_to(path, table["roi"])
        absent = [p for p in table["roi"] if p is not None and not Path(p).is_file()]
        if absent:
            raise ExpressionTableError(f"{path}: roi file(s) not found: {absent[:5]}")
    return table.reset_index(drop=True)


def _require_slides(path: Path, table: Any) -> None:
    empty = [i + 2 for i, slide in enumerate(table["slide"]) if slide is None]  # + header
    if empty:
        raise ExpressionTableError(f"{path}: line(s) {empty[:5]} name no slide")


def _relative_to(table_path: Path, paths: Any) -> list[str | None]:
    """Paths in a table, relative ones resolved against its folder; empty cells → None."""
    return [
        None
        if not isinstance(p, str) or not p.strip()
        else str(p if Path(p).is_absolute() else (table_path.parent / p))
        for p in paths
    ]


def read_expression(path: str | Path, sample_ids: list[str]) -> Any:
    """Expression matrix (CSV/TSV in either orientation, or ``.h5ad``) as samples × genes.

    The orientation is the one whose labels match ``sample_ids``; every sample must be
    present, genes unique and values numeric.
    """
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise ExpressionTableError(f"{path}: no such expression file")
    try:
        if path.suffix == ".h5ad":
            import anndata

            adata = anndata.read_h5ad(path)
            table = pd.DataFrame(
                np.asarray(adata.X.todense() if hasattr(adata.X, "todense") else adata.X),
                index=adata.obs_names,
                columns=adata.var_names,
            )
        else:
            table = pd.read_csv(path, sep=None, engine="python", index_col=0)
    except Exception as exc:
        raise ExpressionTableError(f"{path}: not a readable expression table ({exc})") from exc
    table.index = table.index.astype(str)
    table.columns = table.columns.astype(str)
    wanted = set(sample_ids)
    if len(wanted & set(table.columns)) > len(wanted & set(table.index)):
        table = table.T  # genes × samples → samples × genes
    absent = [s for s in sample_ids if s not in table.index]
    if absent:
        raise ExpressionTableError(
            f"{path}: {len(absent)} manifest sample(s) have no expression: {absent[:8]}"
            + (" …" if len(absent) > 8 else "")
            + f" (the table's samples look like {list(table.index[:3])})"
        )
    duplicated = table.columns[table.columns.duplicated()].unique().tolist()
    if duplicated:
        raise ExpressionTableError(f"{path}: duplicated gene(s) {duplicated[:8]}")
    table = table.loc[list(sample_ids)]
    numeric = table.apply(pd.to_numeric, errors="coerce")
    bad = numeric.isna() & ~table.isna()
    if bad.any().any():
        gene = bad.any()[bad.any()].index[0]
        sample = bad[gene][bad[gene]].index[0]
        raise ExpressionTableError(
            f"{path}: non-numeric value {table.at[sample, gene]!r} "
            f"for gene {gene!r}, sample {sample!r}"
        )
    if numeric.isna().any().any():
        gene = numeric.columns[numeric.isna().any()][0]
        raise ExpressionTableError(f"{path}: missing values, e.g. gene {gene!r}")
    return numeric.astype(np.float64)


def select_genes(
    expression: Any,
    genes: list[str] | None = None,
    min_mean: float | None = None,
    top_n: int | None = None,
    rank_by: str = "variance",
) -> list[str]:
    """Genes to model: an explicit list, or filtered by mean and ranked by variance/mean."""
    if genes is not None:
        unknown = [g for g in genes if g not in expression.columns]
        if unknown:
            raise ExpressionTableError(f"gene(s) not in the expression table: {unknown[:8]}")
        return list(dict.fromkeys(genes))
    table = expression
    if min_mean is not None:
        table = table.loc[:, table.mean() >= min_mean]
    if top_n is not None:
        if rank_by not in ("variance", "mean"):
            raise ValueError("rank_by must be 'variance' or 'mean'")
        score = table.var() if rank_by == "variance" else table.mean()
        table = table[score.sort_values(ascending=False).index[:top_n]]
    if table.shape[1] == 0:
        raise ExpressionTableError("no gene passes the selection (min_mean/top_n)")
    return list(table.columns)


def apply_transform(values: np.ndarray, transform: str, where: str = "the expression") -> Any:
    if transform == "log2p1":
        if (values < 0).any():
            raise ExpressionTableError(
                f"{where} has negative values; log2(x + 1) needs counts "
                "or TPM ≥ 0 (pass transform='none' for values already "
                "on a log scale)"
            )
        return np.log2(values + 1.0)
    if transform == "none":
        return values
    raise ValueError(f"unknown transform {transform!r}; use one of {TRANSFORMS}")


# -- metrics --------------------------------------------------------------------------------
def pearson_columns(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Pearson R of each column (gene) across rows (samples); NaN for constant columns."""
    p = pred - pred.mean(axis=0)
    t = truth - truth.mean(axis=0)
    denom = np.sqrt((p**2).sum(axis=0) * (t**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (p * t).sum(axis=0) / denom, np.nan)


def holm_sidak(pvalues: np.ndarray) -> np.ndarray:
    """Holm–Šidák step-down adjusted p-values (NaN stay NaN)."""
    p = np.asarray(pvalues, float)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    values = p[ok]
    m = len(values)
    order = np.argsort(values)
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, 1.0 - (1.0 - values[index]) ** (m - rank))
        adjusted[index] = min(running, 1.0)
    out[ok] = adjusted
    return out


def gene_metrics(pred: np.ndarray, truth: np.ndarray, genes: list[str], alpha: float = 0.05) -> Any:
    """Per-gene Pearson R, two-sided p, Holm–Šidák adjusted p, significance."""
    import pandas as pd
    from scipy import stats

    r = pearson_columns(pred, truth)
    n = pred.shape[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        t = r * np.sqrt((n - 2) / np.clip(1 - r**2, 1e-12, None))
    p = 2 * stats.t.sf(np.abs(t), df=max(n - 2, 1))
    p = np.where(np.isnan(r), np.nan, p)
    adjusted = holm_sidak(p)
    return pd.DataFrame(
        {
            "gene": genes,
            "pearson_r": r,
            "p_value": p,
            "p_holm_sidak": adjusted,
            "significant": (adjusted < alpha) & (r > 0),
        }
    ).set_index("gene")


def summarise(metrics: Any) -> dict[str, Any]:
    r = metrics["pearson_r"].dropna().sort_values(ascending=False)
    return {
        "genes": len(metrics),
        "significant": int(metrics["significant"].sum()),
        "r_above_0.4": int((r > 0.4).sum()),
        "median_r_top_1000": float(r.iloc[:1000].median()) if len(r) else float("nan"),
        "median_r": float(r.median()) if len(r) else float("nan"),
    }


# -- training -------------------------------------------------------------------------------
def _group_folds(groups: np.ndarray, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Indices of each fold, whole groups (patients) per fold."""
    unique = np.array(sorted(set(groups)))
    if len(unique) < k:
        raise DeepPTError(
            f"{k}-fold cross-validation needs at least {k} patients, got {len(unique)}"
        )
    rng.shuffle(unique)
    folds = np.array_split(unique, k)
    return [np.flatnonzero(np.isin(groups, fold)) for fold in folds]


def _fit_autoencoder(tiles: Any, settings: TrainingSettings, seed: int, cancel: CancelLike) -> Any:
    import torch

    from .models import AutoEncoder

    gen = torch.Generator().manual_seed(seed)
    torch.default_generator.manual_seed(seed)
    model = AutoEncoder(tiles.shape[1], settings.latent_dim)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr)
    for _ in range(settings.ae_epochs):
        check_cancelled(cancel, "training")
        order = torch.randperm(tiles.shape[0], generator=gen)
        for start in range(0, tiles.shape[0], settings.ae_batch):
            x = tiles[order[start : start + settings.ae_batch]]
            loss = torch.nn.functional.mse_loss(model(x), x)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval()


def _slide_predictions(model: Any, latents: list[Any], indices: np.ndarray) -> Any:
    import torch

    with torch.no_grad():
        return torch.stack([model(latents[i]).mean(dim=0) for i in indices])


def _fit_regressor(
    latents: list[Any],
    targets: Any,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    settings: TrainingSettings,
    seed: int,
    cancel: CancelLike,
) -> tuple[dict[str, Any], float, int]:
    import torch

    from .models import MLPRegression

    torch.default_generator.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = MLPRegression(
        targets.shape[1], in_dim=settings.latent_dim, output_bias=targets[train_idx].mean(dim=0)
    )
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr)
    truth_val = targets[val_idx].numpy()
    best_r, best_state, best_epoch, waited = -np.inf, None, 0, 0
    for epoch in range(settings.max_epochs):
        check_cancelled(cancel, "training")
        model.train()
        order = rng.permutation(train_idx)
        for start in range(0, len(order), settings.batch_slides):
            batch = order[start : start + settings.batch_slides]
            counts = torch.tensor([latents[i].shape[0] for i in batch])
            x = torch.cat([latents[i] for i in batch])
            segment = torch.repeat_interleave(torch.arange(len(batch)), counts)
            tile_pred = model(x)
            slide_pred = (
                torch.zeros(len(batch), tile_pred.shape[1]).index_add_(0, segment, tile_pred)
                / counts[:, None]
            )
            loss = torch.nn.functional.mse_loss(slide_pred, targets[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        model.eval()
        r = (
            np.nanmean(
                pearson_columns(_slide_predictions(model, latents, val_idx).numpy(), truth_val)
            )
            if len(val_idx) > 2
            else -float(loss)
        )
        r = -np.inf if np.isnan(r) else float(r)
        if r > best_r or best_state is None:
            best_r, best_epoch, waited = r, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            waited += 1
            if waited >= settings.patience:
                break
    return best_state, best_r, best_epoch


def _ensemble(
    latents: list[Any],
    targets: Any,
    pool: np.ndarray,
    groups: np.ndarray,
    settings: TrainingSettings,
    seed: int,
    cancel: CancelLike,
) -> list[dict]:
    """Inner-fold models over ``pool`` (each early-stopped on its own held-out patients)."""
    rng = np.random.default_rng(seed)
    folds = _group_folds(groups[pool], settings.inner_folds, rng)
    states = []
    for k, fold in enumerate(folds):
        val_idx = pool[fold]
        train_idx = np.setdiff1d(pool, val_idx)
        state, _, _ = _fit_regressor(
            latents, targets, train_idx, val_idx, settings, seed * 100 + k, cancel
        )
        states.append(state)
    return states


def _encode(autoencoder: Any, features: list[Any]) -> list[Any]:
    import torch

    with torch.no_grad():
        return [autoencoder.encode(f) for f in features]


def _ensemble_predict(
    states: list[dict], latents: list[Any], indices: np.ndarray, n_genes: int, latent_dim: int
) -> np.ndarray:
    from .models import MLPRegression

    preds = []
    for state in states:
        model = MLPRegression(n_genes, in_dim=latent_dim)
        model.load_state_dict(state)
        preds.append(_slide_predictions(model.eval(), latents, indices).numpy())
    return np.mean(preds, axis=0)


def _cross_validate(
    features: list[Any],
    targets: Any,
    groups: np.ndarray,
    genes: list[str],
    options: TrainingSettings,
    progress: ProgressLike,
    cancel: CancelLike,
) -> tuple[np.ndarray, Any, dict[str, Any], Any, list[dict]]:
    """Outer folds by group (held-out predictions, metrics), then the final model on all.

    ``features[i]`` is the ``(n_tiles, D)`` tensor of sample ``i`` (one tile for a spot).
    """
    import torch

    n = len(features)
    rng = np.random.default_rng(options.seed)
    outer = _group_folds(groups, options.outer_folds, rng)
    heldout = np.zeros(tuple(targets.shape), np.float32)
    with make_progress(progress, options.outer_folds + 1, "cross-validation", unit="fold") as bar:
        for k, test_idx in enumerate(outer):
            train_idx = np.setdiff1d(np.arange(n), test_idx)
            autoencoder = _fit_autoencoder(
                torch.cat([features[i] for i in train_idx]), options, options.seed + k, cancel
            )
            latents = _encode(autoencoder, features)
            states = _ensemble(
                latents, targets, train_idx, groups, options, options.seed + 17 * (k + 1), cancel
            )
            heldout[test_idx] = _ensemble_predict(
                states, latents, test_idx, len(genes), options.latent_dim
            )
            bar.update()
        metrics = gene_metrics(heldout, targets.numpy(), genes)
        autoencoder = _fit_autoencoder(torch.cat(features), options, options.seed, cancel)
        latents = _encode(autoencoder, features)
        states = _ensemble(latents, targets, np.arange(n), groups, options, options.seed, cancel)
        bar.update()
    return heldout, metrics, summarise(metrics), autoencoder, states


def _write_outputs(out: Path, bundle: Any, metrics: Any, heldout: Any, overwrite: bool) -> None:
    from .io import atomic_path

    bundle.save(out, overwrite=overwrite)
    with atomic_path(out.with_suffix(".genes.csv"), overwrite=overwrite) as tmp:
        metrics.to_csv(tmp)
    with atomic_path(out.with_suffix(".heldout.csv"), overwrite=overwrite) as tmp:
        heldout.to_csv(tmp)


def _refuse_existing(out: Path, overwrite: bool) -> None:
    for target in (out, out.with_suffix(".genes.csv"), out.with_suffix(".heldout.csv")):
        if target.exists() and not overwrite:
            raise FileExistsError(
                f"{target}: already exists; pass overwrite=True (--overwrite) to replace it"
            )


def read_spots(path: str | Path) -> Any:
    """A spot table CSV: ``slide``, ``x``, ``y`` (level-0 px), optional ``spot_id``,
    ``spot_diameter_um``. Relative slide paths are resolved against the table's folder."""
    import pandas as pd

    path = Path(path)
    try:
        table = pd.read_csv(path, sep=None, engine="python")
    except Exception as exc:
        raise ExpressionTableError(f"{path}: not a readable spot table ({exc})") from exc
    missing = [c for c in ("slide", "x", "y") if c not in table.columns]
    if missing:
        raise ExpressionTableError(
            f"{path}: the spot table lacks column(s) {missing}; it "
            "needs slide, x, y (level-0 pixels) and optionally spot_id"
        )
    if "spot_id" not in table.columns:
        table["spot_id"] = [f"{Path(s).stem}_{i}" for i, s in enumerate(table["slide"])]
    table["spot_id"] = table["spot_id"].astype(str)
    duplicated = table["spot_id"][table["spot_id"].duplicated()].tolist()
    if duplicated:
        raise ExpressionTableError(f"{path}: duplicated spot_id(s) {duplicated[:5]}")
    table["slide"] = _relative_to(path, table["slide"])
    _require_slides(path, table)
    return table.reset_index(drop=True)


def spot_grid(slide: Any, x: np.ndarray, y: np.ndarray, tile_px: int, tile_mpp: float) -> Any:
    """A tile grid with one tile of ``tile_px`` at ``tile_mpp`` centred on each spot."""
    from .tiles import TileGrid, TileGridParams

    mpp0 = slide.require_mpp("spot tiles")
    size0 = tile_px * tile_mpp / mpp0
    n = len(x)
    xy = np.round(np.stack([np.asarray(x, float), np.asarray(y, float)], 1) - size0 / 2)
    return TileGrid(
        xy=xy.astype(np.int64),
        rowcol=np.stack([np.zeros(n, np.int64), np.arange(n)], 1),
        tissue_fraction=np.ones(n, np.float32),
        edge_fraction=np.full(n, np.nan, np.float32),
        grid_shape=(1, max(n, 1)),
        size_level0=float(size0),
        stride_level0=float(size0),
        params=TileGridParams(tile_px=tile_px, mpp=tile_mpp, min_tissue=0.0),
        slide_dimensions=slide.dimensions,
        slide_mpp=float(mpp0),
        slide_path=str(slide.path),
    )


def train(
    manifest: str | Path | Any,
    expression: str | Path,
    out: str | Path,
    *,
    extractor: str = "resnet50",
    weights: Any = None,
    tile_px: int | None = None,
    tile_mpp: float = 0.5,
    min_tissue: float = 0.5,
    stain: Any = "macenko",
    roi_class: str | None = None,
    device: Any = "auto",
    cache_dir: str | Path | None = None,
    transform: str = "log2p1",
    genes: list[str] | None = None,
    min_mean: float | None = None,
    top_n: int | None = None,
    rank_by: str = "variance",
    demo: bool = False,
    overwrite: bool = False,
    progress: ProgressLike = True,
    cancel: CancelLike = None,
    **settings: Any,
) -> TrainingResult:
    """Train a DeepPT bundle on slides with matched bulk expression.

    Parameters
    ----------
    manifest
        Cohort manifest CSV (``slide, sample_id, patient_id``) or a DataFrame of it — or a
        spot table (``slide, x, y`` in level-0 px, ``spot_id``) for spatial
        transcriptomics: each spot is a sample whose one tile is centred on it, and
        cross-validation groups spots by slide.
    expression
        Expression matrix (CSV/TSV, samples × genes or genes × samples, or ``.h5ad``); for
        spots, the counts (spots × genes or genes × spots).
    out
        Bundle file to write (``.deeppt``); ``<out>.genes.csv`` and ``<out>.heldout.csv``
        are written beside it. Never overwritten unless ``overwrite``.
    extractor, weights, tile_px, tile_mpp, min_tissue, stain, device, cache_dir
        Feature settings (see :func:`~napari_deeppt.features.extract_features`); ``tile_px``
        defaults to 512 (DeepPT) for slides and 224 for spots (112 µm at 0.5 µm/px).
    roi_class
        With a ``roi`` column in the manifest: only its regions of this class (``"Tumor"``).
    transform
        ``"log2p1"`` (log2(x + 1), default) or ``"none"``; stored in the bundle.
    genes, min_mean, top_n, rank_by
        Gene selection: an explicit list, or a minimum mean then the top N by variance/mean.
    demo
        Mark the bundle as a demo model (synthetic data).
    progress, cancel
        See :mod:`napari_deeppt.progress`.
    **settings
        :class:`TrainingSettings` fields (``outer_folds``, ``inner_folds``, ``max_epochs``,
        ``patience``, ``lr``, ``batch_slides``, ``ae_epochs``, ``latent_dim``, ``seed``).

    Returns
    -------
    TrainingResult
    """
    import pandas as pd
    import torch

    from .features import extract_features
    from .models import ModelBundle
    from .tiles import detect_and_tile

    out = Path(out)
    _refuse_existing(out, overwrite)
    options = TrainingSettings(**settings)
    if _is_spot_table(manifest):
        return _train_spots(
            manifest,
            expression,
            out,
            options,
            extractor=extractor,
            weights=weights,
            tile_px=tile_px or 224,
            tile_mpp=tile_mpp,
            stain=stain,
            device=device,
            cache_dir=cache_dir,
            transform=transform,
            genes=genes,
            min_mean=min_mean,
            top_n=top_n,
            rank_by=rank_by,
            demo=demo,
            overwrite=overwrite,
            progress=progress,
            cancel=cancel,
        )
    tile_px = tile_px or 512
    table = manifest if isinstance(manifest, pd.DataFrame) else read_manifest(manifest)
    samples = list(table["sample_id"])
    expr = read_expression(expression, samples)
    chosen = select_genes(expr, genes, min_mean, top_n, rank_by)
    values = apply_transform(expr[chosen].to_numpy(), transform, f"{expression}")
    targets = torch.tensor(values, dtype=torch.float32)
    groups = table["patient_id"].to_numpy()

    feature_options = _feature_options(
        extractor, weights, device, stain, cache_dir, cancel, options.seed
    )
    feature_sets = []
    with make_progress(progress, len(table), "features per slide", unit="slide") as bar:
        rois = table["roi"] if "roi" in table.columns else [None] * len(table)
        for path, roi in zip(table["slide"], rois, strict=True):
            check_cancelled(cancel, "training")
            _, grid = detect_and_tile(
                path,
                tile_px=tile_px,
                mpp=tile_mpp,
                min_tissue=min_tissue,
                roi=roi,
                roi_class=roi_class if roi else None,
            )
            if len(grid) == 0:
                where = f" inside {roi}" if roi else ""
                raise DeepPTError(
                    f"{path}: no tissue tiles{where}; remove it from the manifest or adjust "
                    "min_tissue"
                )
            feature_sets.append(extract_features(path, grid, **feature_options))
            bar.update()
    features = [torch.tensor(fs.features, dtype=torch.float32) for fs in feature_sets]

    heldout, metrics, summary, autoencoder, states = _cross_validate(
        features, targets, groups, chosen, options, progress, cancel
    )

    first = feature_sets[0]
    bundle = ModelBundle(
        genes=chosen,
        transform=transform,
        feature={
            "extractor": extractor,
            "weights_hash": first.provenance["weights_hash"],
            "feature_dim": first.feature_dim,
            "tile_px": tile_px,
            "tile_mpp": tile_mpp,
            "min_tissue": min_tissue,
            "stain": first.provenance["stain"],
        },
        autoencoder={k: v.detach().clone() for k, v in autoencoder.state_dict().items()},
        ensemble=states,
        latent_dim=options.latent_dim,
        training={
            **asdict(options),
            "n_samples": len(samples),
            "n_patients": len(set(groups)),
            "expression": str(expression),
            "regions_of_interest": {
                "slides_with_roi": int(sum(r is not None for r in rois)),
                "roi_class": roi_class,
            },
            "gene_selection": {
                "genes": genes is not None,
                "min_mean": min_mean,
                "top_n": top_n,
                "rank_by": rank_by,
            },
        },
        metrics=summary,
        demo=demo,
    )
    heldout_table = pd.DataFrame(heldout, index=samples, columns=chosen)
    _write_outputs(out, bundle, metrics, heldout_table, overwrite)
    return TrainingResult(out, metrics, summary, heldout_table)


def _feature_options(
    extractor: str, weights: Any, device: Any, stain: Any, cache_dir: Any, cancel: Any, seed: int
) -> dict[str, Any]:
    """The extract_features settings shared by every slide of a training run."""
    return {
        "extractor": extractor,
        "weights": weights,
        "device": device,
        "stain": stain,
        "cache_dir": cache_dir,
        "progress": False,
        "cancel": cancel,
        "seed": seed,
    }


def _is_spot_table(table: Any) -> bool:
    import pandas as pd

    if isinstance(table, pd.DataFrame):
        columns = set(table.columns)
    else:
        try:
            columns = set(pd.read_csv(table, sep=None, engine="python", nrows=1).columns)
        except Exception:
            return False
    return {"x", "y"} <= columns and "patient_id" not in columns


def _train_spots(
    spots: Any,
    counts: Any,
    out: Path,
    options: TrainingSettings,
    *,
    extractor: str,
    weights: Any,
    tile_px: int,
    tile_mpp: float,
    stain: Any,
    device: Any,
    cache_dir: Any,
    transform: str,
    genes: list[str] | None,
    min_mean: float | None,
    top_n: int | None,
    rank_by: str,
    demo: bool,
    overwrite: bool,
    progress: ProgressLike,
    cancel: CancelLike,
) -> TrainingResult:
    """Spatial transcriptomics: one sample per spot, CV grouped by slide."""
    import pandas as pd
    import torch

    from .features import extract_features
    from .models import ModelBundle
    from .slide import open_slide

    table = spots if isinstance(spots, pd.DataFrame) else read_spots(spots)
    spot_ids = list(table["spot_id"])
    expr = read_expression(counts, spot_ids)
    chosen = select_genes(expr, genes, min_mean, top_n, rank_by)
    values = apply_transform(expr[chosen].to_numpy(), transform, f"{counts}")
    targets = torch.tensor(values, dtype=torch.float32)
    groups = table["slide"].to_numpy()
    features: list[Any] = [None] * len(table)
    provenance: dict[str, Any] = {}
    slides = list(dict.fromkeys(table["slide"]))
    feature_options = _feature_options(
        extractor, weights, device, stain, cache_dir, cancel, options.seed
    )
    with make_progress(progress, len(slides), "spot features per slide", unit="slide") as bar:
        for path in slides:
            check_cancelled(cancel, "training")
            rows = np.flatnonzero(table["slide"].to_numpy() == path)
            slide = open_slide(path)
            grid = spot_grid(
                slide, table["x"].to_numpy()[rows], table["y"].to_numpy()[rows], tile_px, tile_mpp
            )
            fs = extract_features(slide, grid, **feature_options)
            provenance = fs.provenance
            for j, row in enumerate(rows):
                features[row] = torch.tensor(fs.features[j : j + 1], dtype=torch.float32)
            bar.update()
    heldout, metrics, summary, autoencoder, states = _cross_validate(
        features, targets, groups, chosen, options, progress, cancel
    )
    bundle = ModelBundle(
        genes=chosen,
        transform=transform,
        feature={
            "extractor": extractor,
            "weights_hash": provenance["weights_hash"],
            "feature_dim": int(features[0].shape[1]),
            "tile_px": tile_px,
            "tile_mpp": tile_mpp,
            "min_tissue": 0.5,
            "stain": provenance["stain"],
            "mode": "spots",
        },
        autoencoder={k: v.detach().clone() for k, v in autoencoder.state_dict().items()},
        ensemble=states,
        latent_dim=options.latent_dim,
        training={
            **asdict(options),
            "mode": "spots",
            "n_samples": len(spot_ids),
            "n_slides": len(slides),
            "expression": str(counts),
        },
        metrics=summary,
        demo=demo,
    )
    _write_outputs(
        out, bundle, metrics, pd.DataFrame(heldout, index=spot_ids, columns=chosen), overwrite
    )
    return TrainingResult(
        out, metrics, summary, pd.DataFrame(heldout, index=spot_ids, columns=chosen)
    )
