"""Training time and peak memory for a cohort of a given shape (issue 13's goals).

Synthetic features — ``--slides`` samples of ``--tiles`` tiles × 2048 features whose mean
drives 50 genes linearly, plus noise — are trained with the default settings (5 × 5 folds,
or those that fit; 30 autoencoder epochs; early stopping) through the same cross-validation
``train`` runs. ``--spots`` makes one-tile samples in 5 sections instead (1,006 spots is the
issue's spatial transcriptomics case).

    python benchmarks/bench_training.py --slides 50 --tiles 1000 [--json]
    python benchmarks/bench_training.py --spots 1006 [--json]

``--json`` prints one line ``{"peak_rss_gb", "features_gb", "seconds", "mean_r", ...}``.
Features are held in memory here, as training holds them today: streaming them from the
feature store (issue 13, item 1) is not built yet, so peak RSS grows with the cohort.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np


def _synthetic(n: int, tiles: int, genes: int, seed: int = 0) -> tuple[list, np.ndarray]:
    """``n`` samples of ``tiles`` ReLU-like 2048-d features; targets linear in their mean."""
    import torch

    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(8, 2048)).astype(np.float32)
    weights = rng.normal(size=(8, genes))
    features, targets = [], []
    for _ in range(n):
        state = rng.normal(size=8)
        local = state + 0.5 * rng.normal(size=(tiles, 8))
        noise = rng.normal(size=(tiles, 2048)).astype(np.float32)
        x = np.maximum(local.astype(np.float32) @ basis + 0.5 * noise, 0)
        features.append(torch.from_numpy(x))
        targets.append(local.mean(0) @ weights + 5 + 0.3 * rng.normal(size=genes))
    return features, np.asarray(targets, np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=50)
    parser.add_argument("--tiles", type=int, default=1000)
    parser.add_argument("--spots", type=int, default=0, help="one-tile samples in 5 sections")
    parser.add_argument("--genes", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    from napari_deeppt.model.crossval import cross_validate
    from napari_deeppt.model.folds import fit_folds
    from napari_deeppt.model.settings import TrainingSettings

    n, tiles = (args.spots, 1) if args.spots else (args.slides, args.tiles)
    features, targets = _synthetic(n, tiles, args.genes)
    groups = (np.arange(n) * 5 // n if args.spots else np.arange(n)).astype(str)
    noun = "sections" if args.spots else "patients"
    settings, note = fit_folds(len(set(groups)), TrainingSettings(), False, noun)
    start = time.perf_counter()
    cv = cross_validate(
        features,
        torch.from_numpy(targets),
        groups,
        [f"G{i}" for i in range(args.genes)],
        settings,
        not args.json,
        None,
        bool(args.spots),
    )
    seconds = time.perf_counter() - start
    result = {
        "samples": n,
        "tiles_per_sample": tiles,
        "features_gb": round(n * tiles * 2048 * 4 / 1e9, 3),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 3),
        "seconds": round(seconds, 1),
        "mean_r": round(float(cv.metrics["pearson_r"].mean()), 4),
        "folds": f"{settings.outer_folds}x{settings.inner_folds}",
        "torch_threads": torch.get_num_threads(),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(note or "default folds", file=sys.stderr)
        for key, value in result.items():
            print(f"{key:>18}: {value}")


if __name__ == "__main__":
    main()
