"""The model bundle: a trained DeepPT model and everything needed to use it safely.

:class:`ModelBundle` holds the autoencoder, the ensemble of regressors, the genes, the target
transform, the feature extractor and tile parameters they expect, the training settings and
metrics, saved as one ``weights_only``-safe torch file. A corrupt, foreign or newer file is
refused in one line (:class:`~napari_deeppt.errors.BundleError`).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BundleError

__all__ = ["BUNDLE_FORMAT", "BUNDLE_VERSION", "ModelBundle", "bundle_digest"]

BUNDLE_FORMAT = "napari-deeppt-bundle"
BUNDLE_VERSION = 1


def bundle_digest(path: str | Path) -> str:
    """The sha256 (hex) of a bundle file's bytes, as :attr:`ModelBundle.sha256` records it.

    Parameters
    ----------
    path
        The ``.deeppt`` file.

    Returns
    -------
    str
        64 hex digits.
    """
    from ..io import file_sha256

    return file_sha256(path)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = " ".join(lines[:2]) if lines and lines[0].endswith(":") else (lines or [""])[0]
    if not text or "weights_only" in text:
        return type(exc).__name__
    return text[:200]


def _read_payload(path: Path, data: bytes) -> dict[str, Any]:
    """The torch payload of a bundle file, or one line saying why it is none."""

    from ..io.torchfile import load_weights_only

    stream = io.BytesIO(data)
    try:
        payload = load_weights_only(stream)
    except Exception as exc:
        from ..io.torchfile import why_unreadable

        reason = (
            why_unreadable(stream, exc) or "not a readable torch file: corrupt, or another format"
        )
        raise BundleError(f"{path}: not a napari-deeppt model bundle ({reason})") from exc
    if not isinstance(payload, dict) or payload.get("format") != BUNDLE_FORMAT:
        what = (
            f"a dict with keys {', '.join(map(str, list(payload)[:3]))}"
            if isinstance(payload, dict)
            else f"a {type(payload).__name__}"
        )
        raise BundleError(f"{path}: not a napari-deeppt model bundle (a torch file of {what})")
    return payload


def _read_metadata(path: Path, payload: dict[str, Any]) -> dict[str, Any]:
    """The bundle's metadata; a newer format version says to upgrade."""
    try:
        meta = json.loads(payload["metadata_json"])
        version = int(meta.get("version", 1))
    except Exception as exc:
        raise BundleError(
            f"{path}: not a napari-deeppt model bundle (its metadata is unreadable: "
            f"{_first_line(exc)})"
        ) from exc
    if version > BUNDLE_VERSION:
        from .._version import __version__

        raise BundleError(
            f"{path}: was written by a newer napari-deeppt (bundle format {version}; "
            f"napari-deeppt {__version__} reads up to {BUNDLE_VERSION}); upgrade napari-deeppt "
            "(pip install -U napari-deeppt)"
        )
    return meta


@dataclass(repr=False)
class ModelBundle:
    """A trained DeepPT model with its metadata.

    Attributes
    ----------
    genes
        Output genes, in order.
    transform
        Target transform the outputs are on (``"log2p1"``: log2(x + 1), or ``"none"``).
    feature
        What the features must be: extractor, weights hash, feature_dim, tile and stain
        parameters. :func:`~napari_deeppt.prediction.predict` checks it.
    autoencoder, ensemble
        State dicts.
    training, metrics
        Settings and summary metrics of the run that made it.
    demo
        True for bundles trained on synthetic data (the demo): never for real use.
    sha256
        Hash of the file's bytes when the bundle was loaded or saved (None before): what a
        result can record to name the exact model that made it.
    """

    genes: list[str]
    transform: str
    feature: dict[str, Any]
    autoencoder: dict[str, Any]
    ensemble: list[dict[str, Any]]
    latent_dim: int = 512
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    demo: bool = False
    sha256: str | None = field(default=None, compare=False)

    @property
    def n_genes(self) -> int:
        """How many genes the model predicts."""
        return len(self.genes)

    def __repr__(self) -> str:
        demo = ", DEMO MODEL" if self.demo else ""
        return (
            f"ModelBundle({self.n_genes} genes on {self.transform}, "
            f"{self.feature.get('extractor')} features, {len(self.ensemble)} models{demo})"
        )

    def describe(self) -> str:
        """A few lines for people: what the model predicts, from what, and how well."""
        feature, training, metrics = self.feature, self.training, self.metrics
        stain = (feature.get("stain") or {}).get("method") or "none"
        shown = ", ".join(self.genes[:8]) + (", …" if self.n_genes > 8 else "")
        lines = [
            "DEMO MODEL (synthetic data: not for real use)" if self.demo else "DeepPT model",
            f"  genes        {self.n_genes} ({shown}), on {self.transform}",
            f"  features     {feature.get('extractor')} (weights {feature.get('weights_hash')}, "
            f"{feature.get('feature_dim')} dims), {feature.get('tile_px')} px tiles at "
            f"{feature.get('tile_mpp')} µm/px, stain {stain}",
            f"  models       {len(self.ensemble)} (ensemble), latent {self.latent_dim}",
        ]
        if training:
            unit = "spots" if training.get("mode") == "spots" else "slides"
            lines.append(
                f"  trained on   {training.get('n_samples')} {unit}"
                + (f" of {training['n_patients']} patients" if "n_patients" in training else "")
                + f", {training.get('outer_folds')}×{training.get('inner_folds')} folds, "
                f"seed {training.get('seed')}"
            )
            regions = training.get("regions_of_interest") or {}
            if regions.get("slides_with_roi"):
                cls = f" (class {regions['roi_class']})" if regions.get("roi_class") else ""
                lines.append(f"  regions      {regions['slides_with_roi']} slides{cls}")
        if metrics:
            median = metrics.get("median_r")
            lines.append(
                f"  held out     {metrics.get('significant')} of {metrics.get('genes')} genes "
                "significant (Holm–Šidák)"
                + (f", median R {median:.2f}" if isinstance(median, float) else "")
            )
        return "\n".join(lines)

    def metadata(self) -> dict[str, Any]:
        """Everything but the tensors, as stored (JSON) in the file's ``metadata_json``."""
        return {
            "format": BUNDLE_FORMAT,
            "version": BUNDLE_VERSION,
            "genes": self.genes,
            "transform": self.transform,
            "feature": self.feature,
            "latent_dim": self.latent_dim,
            "training": self.training,
            "metrics": self.metrics,
            "demo": self.demo,
            "n_models": len(self.ensemble),
        }

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write one file (torch, ``weights_only``-safe: tensors, lists and a JSON string).

        The file is written under a temporary name and renamed when complete; an existing
        ``path`` is refused (``FileExistsError``) unless ``overwrite``. Sets :attr:`sha256`.
        """
        import torch

        from ..io import atomic_path

        payload = {
            "format": BUNDLE_FORMAT,
            "metadata_json": json.dumps(self.metadata(), default=str),
            "autoencoder": self.autoencoder,
            "ensemble": self.ensemble,
        }
        with atomic_path(path, overwrite=overwrite) as tmp:
            torch.save(payload, tmp)
            digest = bundle_digest(tmp)
        self.sha256 = digest
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> ModelBundle:
        """Read a bundle; a corrupt or foreign file raises :class:`BundleError` in one line.

        The bundle's :attr:`sha256` is the hash of the file's bytes (read once).
        """
        from ..io import as_path

        path = as_path(path, "the model bundle must be a .deeppt file path or a ModelBundle")
        if not path.exists():
            raise BundleError(f"{path}: no such model bundle")
        if path.is_dir():
            raise BundleError(
                f"{path}: is a directory, not a napari-deeppt model bundle (a .deeppt file)"
            )
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise BundleError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
        payload = _read_payload(path, data)
        meta = _read_metadata(path, payload)
        try:
            bundle = cls(
                genes=list(meta["genes"]),
                transform=str(meta["transform"]),
                feature=dict(meta["feature"]),
                autoencoder=payload["autoencoder"],
                ensemble=list(payload["ensemble"]),
                latent_dim=int(meta["latent_dim"]),
                training=meta.get("training", {}),
                metrics=meta.get("metrics", {}),
                demo=bool(meta.get("demo", False)),
            )
            bundle.build()  # the tensors must fit the architecture
        except Exception as exc:
            raise BundleError(
                f"{path}: not a napari-deeppt model bundle (its contents are incomplete or do "
                f"not fit together: {_first_line(exc)}); train or copy the model again"
            ) from exc
        bundle.sha256 = hashlib.sha256(data).hexdigest()
        return bundle

    def build(self) -> tuple[Any, list[Any]]:
        """The autoencoder and the ensemble as eval-mode torch modules (CPU)."""
        from .nn import AutoEncoder, MLPRegression

        in_dim = int(self.feature["feature_dim"])
        autoencoder = AutoEncoder(in_dim, self.latent_dim)
        autoencoder.load_state_dict(self.autoencoder)
        models = []
        for state in self.ensemble:
            model = MLPRegression(self.n_genes, in_dim=self.latent_dim)
            model.load_state_dict(state)
            models.append(model.eval())
        return autoencoder.eval(), models

    def predict_tiles(
        self, features: np.ndarray, device: Any = "cpu", batch_size: int = 4096
    ) -> np.ndarray:
        """Per-tile predictions, the mean over the ensemble.

        Parameters
        ----------
        features
            ``(n_tiles, feature_dim)`` tile features, as :attr:`feature` describes them.
        device
            Torch device to run on.
        batch_size
            Tiles per forward pass.

        Returns
        -------
        numpy.ndarray
            ``(n_tiles, n_genes)`` float32, on the bundle's :attr:`transform` scale.
        """
        import torch

        autoencoder, models = self.build()
        autoencoder.to(device)
        for model in models:
            model.to(device)
        out = np.empty((features.shape[0], self.n_genes), np.float32)
        with torch.inference_mode():
            for start in range(0, features.shape[0], batch_size):
                x = torch.as_tensor(
                    np.asarray(features[start : start + batch_size], np.float32), device=device
                )
                z = autoencoder.encode(x)
                preds = torch.stack([m(z) for m in models]).mean(dim=0)
                out[start : start + len(x)] = preds.cpu().numpy()
        return out
