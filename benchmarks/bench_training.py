"""Training time and peak memory for a cohort of a given shape (issue 13's goals).

Synthetic features — ``--slides`` samples of ``--tiles`` tiles × 2048 whose mean drives
``--genes`` genes linearly, plus noise — are written one slide at a time through the real
feature store (zarr, float16, as extraction writes them), named in a manifest's
``features`` column (no slide is read) and trained by :func:`napari_deeppt.train` with the
default settings (5 × 5 folds, 30 autoencoder epochs, early stopping). ``--spots 1006``
writes one store per section (5 sections, one row per spot) and runs the same
cross-validation ``train`` runs for spots.

    python benchmarks/bench_training.py --slides 50 --tiles 1000 [--json]
    python benchmarks/bench_training.py --spots 1006 [--json] [--device cuda]
    python benchmarks/bench_training.py --slides 1000 --tiles 300 --max-epochs 2 --ae-epochs 1

The last is a memory check: peak memory against the cohort's size, in minutes rather than
hours (what training holds does not depend on the number of epochs).

``--json`` prints one line: ``seconds`` (training only), ``peak_rss_gb`` (the process,
writing included), ``imports_rss_gb`` (the process after importing torch and the training
code, before any data), ``features_gb`` (stored, float16) and ``features_f32_gb`` (what
training once held in memory, the size issue 13's goal is measured against),
``peak_over_features_f32``, ``mean_r`` and the settings.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DIM = 2048


def _write_store(path: Path, features: np.ndarray) -> Path:
    """``features`` as a complete feature store, as extraction writes one."""
    from napari_deeppt.features.store import create_store, finish_store
    from napari_deeppt.tiles import TileGrid, TileGridParams

    n = len(features)
    side = int(np.ceil(np.sqrt(max(n, 1))))
    rowcol = np.stack(np.divmod(np.arange(n), side), 1).astype(np.int64)
    grid = TileGrid(
        xy=rowcol[:, ::-1] * 1024,
        rowcol=rowcol,
        tissue_fraction=np.ones(n, np.float32),
        edge_fraction=np.zeros(n, np.float32),
        grid_shape=(side, side),
        size_level0=1024.0,
        stride_level0=1024.0,
        params=TileGridParams(tile_px=512, mpp=0.5),
        slide_dimensions=(side * 1024, side * 1024),
        slide_mpp=0.25,
        slide_path=str(path.with_suffix(".svs")),
    )
    provenance = {"extractor": "resnet50", "weights_hash": "synthetic", "stain": "synthetic"}
    store = create_store(path, grid, DIM, np.float16, provenance)
    store["features"][:] = features.astype(np.float16)
    finish_store(store, provenance)
    return path


class _Cohort:
    """Synthetic samples: a hidden state per sample drives its tiles and its genes."""

    def __init__(self, genes: int, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.basis = self.rng.normal(size=(8, DIM)).astype(np.float32)
        self.weights = self.rng.normal(size=(8, genes))

    def sample(self, tiles: int, state: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``tiles`` tiles of one sample and its expression."""
        state = self.rng.normal(size=8) if state is None else state
        local = (state + 0.5 * self.rng.normal(size=(tiles, 8))).astype(np.float32)
        noise = self.rng.standard_normal(size=(tiles, DIM), dtype=np.float32)
        x = np.maximum(local @ self.basis + 0.5 * noise, 0)
        genes = local.mean(0) @ self.weights + 5 + 0.3 * self.rng.normal(size=self.weights.shape[1])
        return x, genes


def _slides(args: argparse.Namespace, work: Path) -> dict:
    """Write the cohort's stores, manifest and expression; train on them."""
    import pandas as pd

    from napari_deeppt import train

    cohort, rows, expression = _Cohort(args.genes), [], {}
    for i in range(args.slides):
        x, genes = cohort.sample(args.tiles)
        store = _write_store(work / "stores" / f"S{i:04d}.zarr", x)
        rows.append({"slide": f"absent/S{i:04d}.svs", "sample_id": f"S{i:04d}",
                     "patient_id": f"P{i:04d}", "features": str(store)})  # fmt: skip
        expression[f"S{i:04d}"] = genes
    pd.DataFrame(rows).to_csv(work / "manifest.csv", index=False)
    table = pd.DataFrame(expression).T
    table.columns = [f"G{i}" for i in range(args.genes)]
    table.to_csv(work / "expression.csv")
    start = time.perf_counter()
    result = train(work / "manifest.csv", work / "expression.csv", work / "model.deeppt",
                   transform="none", progress=not args.json, device=args.device,
                   **_epochs(args))  # fmt: skip
    return {"seconds": time.perf_counter() - start, "metrics": result.gene_metrics}


def _epochs(args: argparse.Namespace) -> dict:
    """The epoch settings given on the command line (the defaults otherwise)."""
    chosen = {"max_epochs": args.max_epochs, "ae_epochs": args.ae_epochs}
    return {name: value for name, value in chosen.items() if value is not None}


def _spots(args: argparse.Namespace, work: Path) -> dict:
    """One store per section (a row per spot); the cross-validation train runs for spots."""
    import torch

    from napari_deeppt.devices import training_device
    from napari_deeppt.features.store import open_features
    from napari_deeppt.model.crossval import cross_validate
    from napari_deeppt.model.feature_source import FeatureSource
    from napari_deeppt.model.folds import fit_folds
    from napari_deeppt.model.settings import TrainingSettings

    cohort, arrays, parts, targets = _Cohort(args.genes), [], [], []
    sections = np.arange(args.spots) * 5 // args.spots
    for s in range(5):
        spots = [cohort.sample(1) for _ in range(int((sections == s).sum()))]
        store = _write_store(work / f"section{s}.zarr", np.concatenate([x for x, _ in spots]))
        arrays.append(open_features(store)[0])
        parts += [(s, j, j + 1) for j in range(len(spots))]
        targets += [genes for _, genes in spots]
    chosen = {"batch_slides": args.batch} if args.batch else {}
    chosen.update(_epochs(args))
    settings, _ = fit_folds(5, TrainingSettings(**chosen), False, "sections")
    start = time.perf_counter()
    cv = cross_validate(
        FeatureSource.from_parts(arrays, parts),
        torch.tensor(np.array(targets), dtype=torch.float32),
        sections.astype(str),
        [f"G{i}" for i in range(args.genes)],
        settings,
        not args.json,
        None,
        True,
        training_device(args.device),
    )
    return {"seconds": time.perf_counter() - start, "metrics": cv.metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=50)
    parser.add_argument("--tiles", type=int, default=1000)
    parser.add_argument("--spots", type=int, default=0, help="one-tile samples in 5 sections")
    parser.add_argument("--genes", type=int, default=50)
    parser.add_argument("--batch", type=int, default=None,
                        help="samples per regressor batch (spots only)")  # fmt: skip
    parser.add_argument("--max-epochs", type=int, default=None,
                        help="regressor epochs at most (memory checks: peak memory does not "
                             "depend on it; default: the training default)")  # fmt: skip
    parser.add_argument(
        "--ae-epochs",
        type=int,
        default=None,
        help="autoencoder epochs (default: the training default)",
    )
    parser.add_argument("--device", default="cpu",
                        help="where training runs: cpu (default), cuda or auto")  # fmt: skip
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    import napari_deeppt.model.training  # noqa: F401  (what training imports, counted apart)
    from napari_deeppt.devices import training_device
    from napari_deeppt.model.settings import TrainingSettings

    imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    n, tiles = (args.spots, 1) if args.spots else (args.slides, args.tiles)
    with tempfile.TemporaryDirectory(prefix="bench-training-") as scratch:
        run = (_spots if args.spots else _slides)(args, Path(scratch))
    stored = n * tiles * DIM * 2 / 1e9
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    defaults = TrainingSettings()
    result = {
        "samples": n,
        "tiles_per_sample": tiles,
        "features_gb": round(stored, 3),
        "features_f32_gb": round(2 * stored, 3),
        "peak_rss_gb": round(peak, 3),
        "imports_rss_gb": round(imports, 3),
        "peak_over_features_f32": round(peak / (2 * stored), 3),
        "seconds": round(run["seconds"], 1),
        "mean_r": round(float(run["metrics"]["pearson_r"].mean()), 4),
        "max_epochs": args.max_epochs or defaults.max_epochs,
        "ae_epochs": defaults.ae_epochs if args.ae_epochs is None else args.ae_epochs,
        "ae_tiles": defaults.ae_tiles,
        "regressor_tiles": defaults.regressor_tiles,
        "torch_threads": torch.get_num_threads(),
        "device": training_device(args.device).type,
    }
    if torch.cuda.is_available():
        result["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 3)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>18}: {value}", file=sys.stdout)


if __name__ == "__main__":
    main()
