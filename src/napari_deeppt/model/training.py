"""Training DeepPT models: one pipeline for bulk slides and for spatial spots.

DeepPT (Hoang et al. 2024): features → autoencoder (2048→512) → MLP applied per tile and
averaged over the slide, trained with MSE against bulk RNA-seq, Adam 1e-4, patient-level
5-fold cross-validation whose inner folds' models are ensembled. Two deliberate departures:
early stopping restores the best validation epoch (DeepPT kept the last), and the
autoencoder is fitted on the training folds only (DeepPT fitted it on every slide).

Spatial transcriptomics runs the same pipeline with a spot table (``slide, x, y`` in level-0
px, optional ``spot_id``) instead of a manifest: each spot is a sample whose one tile is
centred on it (never shifted: past the slide's edge the tile reads white, as the reader
pads; a spot centred off its slide is refused), cross-validation groups spots by section
(slide), and each gene's R is the mean of its R within each held-out section
(:func:`~.metrics.section_metrics`) instead of pooled over samples as DeepPT.

The steps: :func:`~.inputs.read_inputs` (every check that needs no pixels),
:func:`~.sample_features.sample_features`, :func:`~.crossval.cross_validate`, then the
bundle and its tables are written together.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..devices import training_device
from ..features.params import FeatureParams
from ..io import refuse_existing
from ..io.tables import describe_source
from ..progress import CancelLike, ProgressLike
from ..tiles import TileGridParams
from .crossval import CrossValidation, cross_validate
from .inputs import TrainingInputs, is_spot_table, read_inputs
from .sample_features import TileSettings, sample_features
from .settings import TrainingSettings

__all__ = ["TrainingResult", "TrainingSettings", "train"]

_TABLES = (".genes.csv", ".heldout.csv")  # written beside the bundle; spots add:
_SPOT_TABLES = (".sections.csv",)


@dataclass(repr=False)
class TrainingResult:
    """What :func:`train` made.

    Attributes
    ----------
    bundle_path
        The ``.deeppt`` file written.
    gene_metrics
        pandas.DataFrame, one row per gene (held-out R, p-values, significance).
    summary
        Headline numbers (:func:`~.metrics.summarise`).
    heldout
        pandas.DataFrame, samples × genes: the outer folds' predictions.
    sections
        Spots: pandas.DataFrame, genes × sections, the within-section R; None for slides.
    """

    bundle_path: Path
    gene_metrics: Any
    summary: dict[str, Any]
    heldout: Any
    sections: Any = None

    def __repr__(self) -> str:
        significant = self.summary.get("significant")
        return (
            f"TrainingResult({self.summary.get('genes')} genes, {significant} significant "
            f"held out; bundle {str(self.bundle_path)!r})"
        )


def train(
    manifest: str | Path | Any,
    expression: Any,
    out: str | Path,
    *,
    extractor: str = FeatureParams.extractor,
    weights: Any = None,
    tile_px: int | None = None,
    tile_mpp: float = TileGridParams.mpp,
    min_tissue: float = TileGridParams.min_tissue,
    stain: Any = FeatureParams.stain,
    roi_class: str | None = None,
    device: Any = FeatureParams.device,
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
    """Train a DeepPT bundle on slides with matched bulk expression, or on spots.

    Parameters
    ----------
    manifest
        Cohort manifest CSV (``slide, sample_id, patient_id``) or a DataFrame of it — or a
        spot table (``slide, x, y`` in level-0 px, ``spot_id``): see the module's notes.
    expression
        Expression matrix: a CSV/TSV or ``.h5ad`` path, a pandas DataFrame or an AnnData,
        samples × genes or genes × samples; for spots, the counts (spots × genes or genes ×
        spots).
    out, overwrite
        Bundle file to write (``.deeppt``), with ``<out>.genes.csv``, ``<out>.heldout.csv``
        (and ``<out>.sections.csv`` for spots) beside it; never overwritten unless
        ``overwrite`` (checked before any work).
    extractor, weights, tile_px, tile_mpp, min_tissue, stain, device, cache_dir
        Feature settings (see :func:`~napari_deeppt.features.extract_features`); ``tile_px``
        defaults to 512 (DeepPT) for slides and 224 for spots (112 µm at 0.5 µm/px).
        Training runs on ``device`` when it is a CUDA GPU (``"auto"`` with one present),
        else on the CPU (:func:`~napari_deeppt.devices.training_device`); the bundle's
        ``training["device"]`` says which.
    roi_class
        With a ``roi`` column in the manifest, only its regions of this class (``"Tumor"``).
    transform
        ``"log2p1"`` (log2(x + 1), default) or ``"none"``; stored in the bundle.
    genes, min_mean, top_n, rank_by
        Gene selection: an explicit list, or a minimum mean then the top N by variance/mean.
    demo, progress, cancel
        Mark the bundle as a demo model (synthetic data); see :mod:`napari_deeppt.progress`.
    **settings
        :class:`~.settings.TrainingSettings` fields (``outer_folds``, ``lr``, ``seed``, …);
        default fold counts shrink to fit few groups (:func:`~.folds.fit_folds`).

    Returns
    -------
    TrainingResult
        ``summary["r_scope"]``: ``"pooled"`` (slides) or ``"within-section mean"`` (spots).

    Raises
    ------
    DeepPTError
        Before any feature work, for inputs that cannot give a right answer (tables,
        slides, spots off their slide, fold counts the groups cannot fill).
    """
    out, options, spots = Path(out), TrainingSettings(**settings), is_spot_table(manifest)
    refuse_existing(_outputs(out, spots), overwrite)  # before any work
    tile_px = (224 if spots else 512) if tile_px is None else tile_px
    tiles = TileSettings(tile_px, tile_mpp, min_tissue, roi_class)
    selection = {"genes": genes, "min_mean": min_mean, "top_n": top_n, "rank_by": rank_by}
    inputs = read_inputs(manifest, expression, options, spots, selection, transform, settings)
    options = inputs.settings or options  # folds that fit the groups
    train_on = training_device(device)  # before any work: CUDA asked for but absent
    extract = _feature_options(extractor, weights, device, stain, cache_dir, options.seed)
    source, provenance = sample_features(inputs, tiles, extract, progress, cancel)
    cv = cross_validate(
        source, inputs.targets, inputs.groups, inputs.genes, options, progress, cancel, spots,
        train_on,
    )  # fmt: skip
    record = {"expression": describe_source(expression), "selection": selection}
    record["device"] = train_on.type
    record["feature_dim"] = source.dim
    bundle = _bundle(inputs, tiles, extractor, provenance, cv, options, record, transform, demo)
    return _write_outputs(out, bundle, inputs, cv, overwrite)


def _feature_options(
    extractor: str, weights: Any, device: Any, stain: Any, cache_dir: Any, seed: int
) -> dict[str, Any]:
    """The extract_features settings shared by every slide of a training run."""
    return {
        "extractor": extractor,
        "weights": weights,
        "device": device,
        "stain": stain,
        "cache_dir": cache_dir,
        "progress": False,
        "seed": seed,
    }


def _bundle(
    inputs: TrainingInputs,
    tiles: TileSettings,
    extractor: str,
    provenance: dict[str, Any],
    cv: CrossValidation,
    options: TrainingSettings,
    record: dict[str, Any],
    transform: str,
    demo: bool,
) -> Any:
    """The bundle: the final model, what its features must be and how it was trained.

    ``record`` holds what the ``expression`` was, the gene ``selection``, the
    ``feature_dim`` and the training ``device`` type; ``provenance`` is the first feature
    store's.
    Folds changed to fit the groups are said in the summary (``folds_note``).
    """
    from .bundle import ModelBundle

    if inputs.folds_note:
        cv.summary["folds_note"] = inputs.folds_note

    selection = record["selection"]
    feature = {
        "extractor": extractor,
        "weights_hash": provenance["weights_hash"],
        "feature_dim": record["feature_dim"],
        "tile_px": tiles.tile_px,
        "tile_mpp": tiles.tile_mpp,
        "min_tissue": tiles.min_tissue,
        "stain": provenance["stain"],
        **({"mode": "spots"} if inputs.spots else {}),
        # bfloat16 or int8 features: the model was fitted to them (fp32 bundles keep their
        # records)
        **_precision_record(provenance),
    }
    training = {
        **asdict(options),
        **inputs.describe(tiles.roi_class),
        "n_samples": len(inputs.ids),
        "device": record["device"],
        "expression": record["expression"],
        "precomputed_features": inputs.precomputed(),
        "gene_selection": {**selection, "genes": selection["genes"] is not None},
    }
    return ModelBundle(
        genes=inputs.genes,
        transform=transform,
        feature=feature,
        autoencoder={k: v.detach().clone() for k, v in cv.autoencoder.state_dict().items()},
        ensemble=cv.states,
        latent_dim=options.latent_dim,
        training=training,
        metrics=cv.summary,
        demo=demo,
    )


def _outputs(out: Path, spots: bool) -> list[Path]:
    """The bundle and the tables written beside it."""
    suffixes = _TABLES + (_SPOT_TABLES if spots else ())
    return [out, *(out.with_suffix(suffix) for suffix in suffixes)]


def _write_outputs(
    out: Path, bundle: Any, inputs: TrainingInputs, cv: CrossValidation, overwrite: bool
) -> TrainingResult:
    """The bundle and its tables, written together: all new, or (on a failure) all as before."""
    import pandas as pd

    from ..io import atomic_outputs

    heldout = pd.DataFrame(cv.heldout, index=inputs.ids, columns=inputs.genes)
    tables = [cv.metrics, heldout] + ([cv.per_section] if inputs.spots else [])
    with atomic_outputs(_outputs(out, inputs.spots), overwrite=overwrite) as (bundle_tmp, *tmps):
        bundle.save(bundle_tmp, overwrite=True)
        for table, tmp in zip(tables, tmps, strict=True):
            table.to_csv(tmp)
    return TrainingResult(out, cv.metrics, cv.summary, heldout, cv.per_section)


def _precision_record(provenance: dict[str, Any]) -> dict[str, Any]:
    """``precision`` when the training features were not float32, with the int8 model's
    identity when they were int8."""
    precision = provenance.get("precision", "float32")
    if precision == "float32":
        return {}
    if precision == "int8":
        return {"precision": precision, "int8": provenance.get("int8")}
    return {"precision": precision}
