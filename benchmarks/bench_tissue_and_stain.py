"""Tissue detection cost vs level-0 size, and Macenko tiles/s (numpy reference vs torch).

1. Two synthetic slides of the same physical extent (20 × 20 mm), one at 0.5 µm/px
   (40 000² px) and one at 0.125 µm/px (160 000² px, 16× the level-0 pixels). Detection reads
   only the pyramid level nearest 8 µm/px, so its time must not grow with level 0.
2. Macenko on batches of 64 tiles of 512² px on the CPU: the plain numpy reference (the
   classic script, tile by tile) vs the batched torch implementation (fit on every pixel, and
   the default strided fit), in one run.
3. The fitted OD maps applied to those tiles resized to 224² px (what the feature pipeline
   does per batch): the CPU's products of tabulated factors against the sum-then-exponential
   path CUDA keeps, in one run; and the fit alone (``macenko_transforms``, the pipeline's
   strided fit, no map applied), in ms a tile.

    python benchmarks/bench_tissue_and_stain.py [--stain-only]

``--stain-only`` skips part 1 (whose first run writes two large slides).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.test_stain


def best_of(fn, repeats=3):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    if "--stain-only" not in sys.argv:
        tissue_detection()
    stain()


def tissue_detection() -> None:
    from napari_deeppt import detect_tissue
    from napari_deeppt.io import cache_root
    from napari_deeppt.testing import GENERATOR_VERSION, write_giant_slide

    folder = cache_root() / "benchmarks"
    folder.mkdir(parents=True, exist_ok=True)
    timings = {}
    for size, mpp in ((40_000, 0.5), (160_000, 0.125)):
        path = folder / f"giant-{size}-{mpp}-v{GENERATOR_VERSION}.svs"
        if not path.exists():
            write_giant_slide(path, size=size, mpp=mpp)
        seconds = best_of(lambda p=path: detect_tissue(p))
        mask = detect_tissue(path)
        timings[size] = seconds
        print(
            f"tissue detection, {size}² px at {mpp} µm/px: {seconds:.2f} s "
            f"(level {mask.source_level}, mask {mask.mask.shape[1]}×{mask.mask.shape[0]})"
        )
    ratio = timings[160_000] / timings[40_000]
    print(f"ratio for 16× the level-0 pixels: {ratio:.2f} (goal: about 1, not 16)")


def stain() -> None:
    import torch
    from tests.test_stain import reference_macenko

    from napari_deeppt import macenko_normalize
    from napari_deeppt.testing import default_sample_spec

    torch.set_num_threads(max(1, torch.get_num_threads()))
    spec = default_sample_spec(16384, 16384, 0.5, seed=0)
    rng = np.random.default_rng(0)
    region = spec.regions[0]  # inside tissue: the classic script fails on glass tiles
    xs = rng.uniform(region.cx - region.rx / 2, region.cx + region.rx / 2 - 512, 64)
    ys = rng.uniform(region.cy - region.ry / 2, region.cy + region.ry / 2 - 512, 64)
    tiles = np.stack([spec.render(float(x), float(y), 512, 512) for x, y in zip(xs, ys)])
    macenko_normalize(tiles[:2])  # warm-up
    t_numpy = best_of(lambda: [reference_macenko(t) for t in tiles], repeats=1)
    t_full = best_of(lambda: macenko_normalize(tiles, fit_max_pixels=None), repeats=2)
    t_fast = best_of(lambda: macenko_normalize(tiles), repeats=2)
    print(f"Macenko, 64 tiles of 512² px, {torch.get_num_threads()} CPU threads:")
    print(f"  numpy reference:        {64 / t_numpy:7.1f} tiles/s")
    print(f"  torch, fit every pixel: {64 / t_full:7.1f} tiles/s ({t_numpy / t_full:.1f}× numpy)")
    print(f"  torch, default fit:     {64 / t_fast:7.1f} tiles/s ({t_numpy / t_fast:.1f}× numpy)")

    from napari_deeppt.features.preprocess import resize_uint8
    from napari_deeppt.stain import DEEPPT_TARGET, apply_od_transform, macenko_transforms
    from napari_deeppt.stain.macenko import _apply_od_sums

    transform, fitted, batch, _, _ = macenko_transforms(tiles, DEEPPT_TARGET)
    small = resize_uint8(batch, 224).contiguous()
    t_sums = best_of(lambda: _apply_od_sums(small, transform, fitted, DEEPPT_TARGET.io), 3)
    t_products = best_of(lambda: apply_od_transform(small, transform, fitted, DEEPPT_TARGET.io), 3)
    print(f"OD maps applied to 64 tiles of 224² px, {torch.get_num_threads()} CPU threads:")
    print(f"  sums then exp (CUDA's path): {1e3 * t_sums / 64:6.2f} ms a tile")
    print(
        f"  products of factors (CPU):   {1e3 * t_products / 64:6.2f} ms a tile "
        f"({t_sums / t_products:.1f}× faster)"
    )
    t_fit = best_of(lambda: macenko_transforms(batch, DEEPPT_TARGET), 7)
    print(f"Macenko fit alone (strided, as the pipeline fits): {1e3 * t_fit / 64:6.2f} ms a tile")


if __name__ == "__main__":
    main()
