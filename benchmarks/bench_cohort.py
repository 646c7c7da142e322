"""Cohort throughput: slides/hour with 1 and 2 local dask workers, in one run.

Uses the DEMO model (weight-free colour features) on synthetic slides so the numbers measure
the orchestration (scheduling, per-slide tissue/tiles/features/prediction, atomic writes)
on this machine, not a backbone.

    python benchmarks/bench_cohort.py [--slides 16]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=16)
    args = parser.parse_args()

    from napari_deeppt.cohort import run_cohort
    from napari_deeppt.samples import demo_bundle
    from napari_deeppt.testing import write_synthetic_cohort

    bundle = demo_bundle(progress=False)
    folder = Path(tempfile.mkdtemp(prefix="deeppt-bench-cohort-"))
    try:
        cohort = write_synthetic_cohort(folder / "slides", n_slides=args.slides, seed=11)
        rates = {}
        for workers in (1, 2):
            out = folder / f"out{workers}"
            started = time.perf_counter()
            result = run_cohort(
                cohort.manifest,
                bundle,
                out,
                n_workers=workers,
                cache_dir=folder / f"cache{workers}",
                progress=False,
            )
            seconds = time.perf_counter() - started
            assert (result.report["status"] == "ok").all()
            rates[workers] = args.slides / seconds * 3600
            print(
                f"{workers} worker(s): {args.slides} slides in {seconds:.1f} s → "
                f"{rates[workers]:.0f} slides/hour"
            )
        print(f"speed-up with 2 workers: {rates[2] / rates[1]:.2f}× (2-core machine)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
