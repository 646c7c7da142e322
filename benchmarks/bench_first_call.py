"""A fresh process's first feature call against the compiled bare model (issue 15).

Each step runs in a fresh Python process, as a user's would:

1. ``build``: makes sure the compiled ResNet50 (random weights, batches of 32) is on disk in
   the benchmark's package folder (built once, about a minute on 2 cores; not timed);
2. ``first``: imports napari_deeppt and torch (not timed), then times the first
   ``extract_features`` call on ``--tiles`` tiles (DeepPT's settings, ``compile="auto"``,
   cache off): building the model, loading the compiled package, reading, Macenko, resize
   and the model;
3. ``first`` again with an empty package folder: a first-ever run (eager);
4. ``bare``: the compiled bare model's steady throughput (the same package, random input,
   after three warm-up batches, over at least 20 batches).

    python benchmarks/bench_first_call.py [--tiles 320] [--runs 3]

Goal: the first call's tiles per second ≥ 0.7 × the compiled bare model's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BATCH = 32
SIZE = 18432  # the synthetic slide's side in px at 0.5 µm/px: about 1,000 kept tiles


def _slide_and_grid(tiles: int):
    import numpy as np

    from napari_deeppt import open_slide
    from napari_deeppt.testing import GENERATOR_VERSION, default_sample_spec
    from napari_deeppt.testing import write_synthetic_slide as write
    from napari_deeppt.tiles import make_tile_grid

    path = Path(os.environ["BENCH_SLIDE_DIR"]) / f"features-{SIZE}-v{GENERATOR_VERSION}.svs"
    if not path.exists():
        write(path, default_sample_spec(SIZE, SIZE, 0.5))
    slide = open_slide(path)
    grid = make_tile_grid(slide, tile_px=512, mpp=0.5, min_tissue=0.9)
    return slide, grid.subset(np.arange(min(tiles, len(grid))))


def _step(name: str, tiles: int) -> dict:
    """One step, in this (fresh) process."""
    import torch

    from napari_deeppt import extract_features
    from napari_deeppt.features.compiled import prepare_model
    from napari_deeppt.features.extractors import load_extractor

    slide, grid = _slide_and_grid(tiles)
    run = {"extractor": "resnet50", "weights": "random", "device": "cpu", "batch_size": BATCH}
    if name == "build":
        extract_features(slide, grid.subset([0]), use_cache=False, compile=True, **run)
        return {}
    if name == "first":
        start = time.perf_counter()
        extract_features(slide, grid, use_cache=False, progress=False, compile="auto", **run)
        return {"tiles_per_s": len(grid) / (time.perf_counter() - start)}
    loaded = load_extractor("resnet50", "random")
    key = ("resnet50", loaded.weights_hash)
    model = prepare_model(loaded.model, torch.device("cpu"), True, 0, key, batch=BATCH)
    x = torch.randn(BATCH, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for _ in range(3):  # the thread pool and allocator warmed up: steady state
            model(x)
        start, done = time.perf_counter(), 0
        while done < max(len(grid), 20 * BATCH):
            model(x)
            done += BATCH
    return {"tiles_per_s": done / (time.perf_counter() - start)}


def _fresh(name: str, tiles: int, cache: Path, slides: Path) -> dict:
    env = dict(os.environ, NAPARI_DEEPPT_CACHE=str(cache), BENCH_SLIDE_DIR=str(slides))
    out = subprocess.run(
        [sys.executable, __file__, "--step", name, "--tiles", str(tiles)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=320)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--step", choices=["build", "first", "bare"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        print(json.dumps(_step(args.step, args.tiles)))
        return
    from napari_deeppt.io import cache_root

    slides = cache_root() / "benchmarks"
    with tempfile.TemporaryDirectory(prefix="bench-first-") as scratch:
        cache, empty = Path(scratch) / "cache", Path(scratch) / "empty"
        _fresh("build", args.tiles, cache, slides)
        for run in range(args.runs):
            first = _fresh("first", args.tiles, cache, slides)["tiles_per_s"]
            eager = _fresh("first", args.tiles, empty, slides)["tiles_per_s"]
            bare = _fresh("bare", args.tiles, cache, slides)["tiles_per_s"]
            print(
                f"run {run + 1}: bare compiled {bare:5.1f} tiles/s; first call with the "
                f"package {first:5.1f} ({first / bare:.2f} × bare, goal ≥ 0.7); first-ever "
                f"(eager) {eager:5.1f} ({eager / bare:.2f} × bare)",
                flush=True,
            )


if __name__ == "__main__":
    main()
