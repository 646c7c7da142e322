"""DeepPT's models and the model bundle file.

- :class:`AutoEncoder`: Linear(D→512)+ReLU encoder, Linear(512→D)+ReLU decoder, MSE.
- :class:`MLPRegression`: Linear(512→512), Dropout(0.2), Linear(512→n_genes), output bias
  initialised to the training mean of each gene; applied per tile, averaged over a slide.
- :class:`ModelBundle`: the autoencoder, the ensemble of regressors and everything needed to
  use them safely (genes, target transform, the feature extractor and tile parameters they
  expect, training settings, metrics), saved as one ``weights_only``-safe torch file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BundleError

__all__ = ["AutoEncoder", "MLPRegression", "ModelBundle"]

BUNDLE_FORMAT = "napari-deeppt-bundle"
BUNDLE_VERSION = 1


def _torch_nn() -> Any:
    import torch

    return torch.nn


class AutoEncoder(_torch_nn().Module):  # type: ignore[misc]
    """DeepPT's feature autoencoder (D → latent → D, ReLU after each layer)."""

    def __init__(self, in_dim: int = 2048, latent_dim: int = 512) -> None:
        nn = _torch_nn()
        super().__init__()
        self.in_dim, self.latent_dim = in_dim, latent_dim
        self.encoder = nn.Sequential(nn.Linear(in_dim, latent_dim), nn.ReLU())
        self.decoder = nn.Sequential(nn.Linear(latent_dim, in_dim), nn.ReLU())

    def encode(self, x: Any) -> Any:
        return self.encoder(x)

    def forward(self, x: Any) -> Any:
        return self.decoder(self.encoder(x))


class MLPRegression(_torch_nn().Module):  # type: ignore[misc]
    """DeepPT's regressor: Linear(512→512), Dropout(0.2), Linear(512→n_genes)."""

    def __init__(
        self,
        n_genes: int,
        in_dim: int = 512,
        hidden: int = 512,
        dropout: float = 0.2,
        output_bias: Any = None,
    ) -> None:
        import torch

        nn = _torch_nn()
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.Dropout(dropout), nn.Linear(hidden, n_genes)
        )
        if output_bias is not None:
            with torch.no_grad():
                self.net[2].bias.copy_(torch.as_tensor(output_bias, dtype=torch.float32))

    def forward(self, x: Any) -> Any:
        return self.net(x)


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

    @property
    def n_genes(self) -> int:
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
        """Write one file (torch, ``weights_only``-safe: tensors, lists and a JSON string)."""
        import torch

        from .io import atomic_path

        payload = {
            "format": BUNDLE_FORMAT,
            "metadata_json": json.dumps(self.metadata(), default=str),
            "autoencoder": self.autoencoder,
            "ensemble": self.ensemble,
        }
        with atomic_path(path, overwrite=overwrite) as tmp:
            torch.save(payload, tmp)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> ModelBundle:
        """Read a bundle; a corrupt or foreign file raises :class:`BundleError`."""
        import torch

        path = Path(path)
        if not path.exists():
            raise BundleError(f"{path}: no such model bundle")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(payload, dict) or payload.get("format") != BUNDLE_FORMAT:
                raise ValueError("not a napari-deeppt model bundle")
            meta = json.loads(payload["metadata_json"])
            bundle = cls(
                genes=list(meta["genes"]),
                transform=meta["transform"],
                feature=meta["feature"],
                autoencoder=payload["autoencoder"],
                ensemble=list(payload["ensemble"]),
                latent_dim=int(meta["latent_dim"]),
                training=meta.get("training", {}),
                metrics=meta.get("metrics", {}),
                demo=bool(meta.get("demo", False)),
            )
            bundle.build()  # the tensors must fit the architecture
        except BundleError:
            raise
        except Exception as exc:
            raise BundleError(
                f"{path}: not a readable napari-deeppt model bundle ({type(exc).__name__}: {exc})"
            ) from exc
        return bundle

    def build(self) -> tuple[Any, list[Any]]:
        """The autoencoder and the ensemble as eval-mode torch modules (CPU)."""
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
        """Per-tile predictions ``(n_tiles, n_genes)``, the mean over the ensemble."""
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
