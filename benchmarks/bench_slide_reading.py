"""Open time and random 512×512 region reads/s: napari-deeppt's Slide vs tifffile directly.

Both sides read the same JPEG-tiled synthetic pyramid at the same random places in one run;
the script prints the ratio. Goals: open in well under a second (O(1) in slide size), region
reads at ≥ 0.9× tifffile's own rate (its zarr store over the same file).

    python benchmarks/bench_slide_reading.py [--size 12288] [--reads 300]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=12288, help="level-0 side in pixels")
    parser.add_argument("--reads", type=int, default=400)
    parser.add_argument("--region", type=int, default=512)
    args = parser.parse_args()

    import tifffile
    import zarr

    from napari_deeppt import open_slide
    from napari_deeppt.io import cache_root
    from napari_deeppt.testing import (
        GENERATOR_VERSION,
        default_sample_spec,
        write_giant_slide,
        write_synthetic_slide,
    )

    folder = cache_root() / "benchmarks"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"bench-{args.size}-v{GENERATOR_VERSION}.svs"
    if not path.exists():
        t = time.perf_counter()
        write_synthetic_slide(path, default_sample_spec(args.size, args.size, 0.25), tile=256)
        print(f"wrote {path} in {time.perf_counter() - t:.1f} s")
    giant = folder / "giant-100k.svs"
    if not giant.exists():
        write_giant_slide(giant, size=100_000)

    open_slide(path).close()  # warm imports and the OS page cache

    def time_open(fn, repeats=15):
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    def tifffile_open(p):
        with tifffile.TiffFile(p) as tif:
            zarr.open_array(store=tif.series[0].aszarr(level=0), mode="r")

    open_ours = time_open(lambda: open_slide(path).close())
    open_theirs = time_open(lambda: tifffile_open(path))
    open_giant = time_open(lambda: open_slide(giant).close(), repeats=5)
    print(
        f"open {args.size}² slide: Slide {open_ours * 1e3:.1f} ms, "
        f"tifffile+zarr {open_theirs * 1e3:.1f} ms"
    )
    print(
        f"open 100000² slide: Slide {open_giant * 1e3:.1f} ms ({open_giant / open_ours:.2f}× "
        f"the {args.size}² open for {(100_000 / args.size) ** 2:.0f}× the pixels; only the "
        "tile index grows)"
    )

    rng = np.random.default_rng(0)
    r = args.region
    xy = rng.integers(0, args.size - r, size=(args.reads, 2))
    slide = open_slide(path)
    tif = tifffile.TiffFile(path)
    direct = zarr.open_array(store=tif.series[0].aszarr(level=0), mode="r")

    def read_ours(x, y):
        return slide.read_region(int(x), int(y), r, r)

    def read_theirs(x, y):
        return direct[y : y + r, x : x + r]

    # Interleave the two readers read by read, so drift in machine load hits both alike.
    spent = {read_ours: 0.0, read_theirs: 0.0}
    for x, y in xy[:10]:
        read_ours(x, y), read_theirs(x, y)
    for i, (x, y) in enumerate(xy):
        order = (read_ours, read_theirs) if i % 2 else (read_theirs, read_ours)
        for read in order:
            t = time.perf_counter()
            read(x, y)
            spent[read] += time.perf_counter() - t
    ours, theirs = len(xy) / spent[read_ours], len(xy) / spent[read_theirs]
    check_x, check_y = (int(v) for v in xy[1])
    assert np.array_equal(
        slide.read_region(check_x, check_y, r, r),
        direct[check_y : check_y + r, check_x : check_x + r],
    )
    print(
        f"random {r}×{r} reads: Slide {ours:.1f}/s, tifffile zarr store {theirs:.1f}/s, "
        f"ratio {ours / theirs:.2f} (goal ≥ 0.90)"
    )


if __name__ == "__main__":
    main()
