"""Feature pipeline throughput against the bare model and a seed-style loop, in one run.

- bare model: ResNet50 (random weights) on random 224² tensors, channels-last, same device;
- pipeline: extract_features on a synthetic JPEG slide (512 px tiles at 0.5 µm/px, Macenko,
  resize, normalisation, model), cache off;
- seed-style loop: per-tile PIL resize to 224, ToTensor/Normalize, eager fp32, batches of 64,
  as in the seed articles' scripts.

With ``--compile`` on a CPU the bare model and the pipeline run the same compiled package
(:mod:`napari_deeppt.features.compiled`; built on the first run, loaded afterwards). With
``--precision int8`` (CPU) both run the int8 model (:mod:`napari_deeppt.features.quantized`)
and the features of the pipeline are compared with fp32's on the same tiles (``int8 R²``:
the share of the features' variance across tiles that int8 keeps; ``cosine``: per tile);
with ``--compile`` too, the compiled fp32 model is also timed in the same run.
``--precision bfloat16`` does the same for the bfloat16 model
(:mod:`napari_deeppt.features.bfloat16`; CPUs with AVX-512 BF16 or AMX, CUDA).
With ``--weights FILE`` it uses those ResNet50 weights instead of random ones: the way to
check int8 on the weights you use.
Goals (issue 15, 2-core CPU): pipeline ≥ 0.85 × the compiled bare model in every run,
≥ 3 × the seed-style loop.

    python benchmarks/bench_features.py [--tiles 320] [--device auto] [--compile]
                                        [--gpu-decode auto|on|off] [--size 18432]
                                        [--precision float32|bfloat16|int8]
                                        [--weights FILE]

It also times reading alone: tifffile + Pillow in threads against the file's JPEG tiles
decoded on the device (torchvision/nvJPEG), same tiles.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=320)
    parser.add_argument(
        "--size",
        type=int,
        default=18432,
        help="side of the synthetic slide in px at 0.5 µm/px (about 1,000 kept tiles; ≥ 40000 "
        "for thousands of tiles on a GPU)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="torch.compile (+freezing on CPU)")
    parser.add_argument(
        "--gpu-decode",
        choices=["auto", "on", "off"],
        default="auto",
        help="decode the slide's JPEG tiles on the device (auto: on CUDA)",
    )
    parser.add_argument("--precision", choices=["float32", "bfloat16", "int8"], default="float32")
    parser.add_argument("--weights", default="random", help="ResNet50 weights (default random)")
    args = parser.parse_args()

    import torch
    from PIL import Image

    from napari_deeppt import extract_features, open_slide
    from napari_deeppt.devices import resolve_device
    from napari_deeppt.features.compiled import prepare_model
    from napari_deeppt.features.engine import require_precision
    from napari_deeppt.features.extractors import load_extractor
    from napari_deeppt.io import cache_root
    from napari_deeppt.testing import (
        GENERATOR_VERSION,
        default_sample_spec,
        write_synthetic_slide,
    )
    from napari_deeppt.tiles import make_tile_grid

    device = resolve_device(args.device)
    require_precision(args.precision, "resnet50", device)  # one line where it cannot run
    batch = args.batch_size or (256 if device.type == "cuda" else 32)
    folder = cache_root() / "benchmarks"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"features-{args.size}-v{GENERATOR_VERSION}.svs"
    if not path.exists():
        write_synthetic_slide(path, default_sample_spec(args.size, args.size, 0.5))
    slide = open_slide(path)
    grid = make_tile_grid(slide, tile_px=512, mpp=0.5, min_tissue=0.9)
    n = min(args.tiles, len(grid))
    n -= n % batch if n >= batch else 0  # whole batches: steady-state throughput
    grid = grid.subset(np.arange(n))
    n = len(grid)
    print(f"device {device}, {torch.get_num_threads()} threads, {n} tiles, batch {batch}")

    loaded = load_extractor("resnet50", args.weights)
    x = torch.randn(batch, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    fp32_bare = float("nan")
    if args.precision == "int8":
        from napari_deeppt.features.quantized import int8_model

        bare = _bare_rate(int8_model(loaded, device), x, n, device)
        if args.compile:  # the compiled fp32 model in the same run, for the ratio
            fp32 = prepare_model(
                loaded.model, device, True, n, ("resnet50", loaded.weights_hash), batch=batch
            )
            fp32_bare = _bare_rate(fp32, x, n, device)
    else:
        model, key = loaded.model, ("resnet50", loaded.weights_hash)
        if args.precision == "bfloat16":  # as the pipeline wraps it (the same package)
            from napari_deeppt.features.bfloat16 import BFloat16Model

            model, key = BFloat16Model(model), (*key, "bfloat16")
        model = prepare_model(  # the same key and shape as the pipeline's: the same package
            model, device, args.compile, n if args.compile else 0, key=key, batch=batch
        )
        bare = _bare_rate(model, x, n, device)
        if args.compile and args.precision == "bfloat16":  # compiled fp32, for the ratio
            fp32 = prepare_model(
                loaded.model, device, True, n, ("resnet50", loaded.weights_hash), batch=batch
            )
            fp32_bare = _bare_rate(fp32, x, n, device)

    run = {
        "extractor": "resnet50",
        "weights": args.weights,
        "device": device,
        "batch_size": batch,
        "use_cache": False,
        "progress": False,
        "compile": args.compile,
        "gpu_decode": {"auto": "auto", "on": True, "off": False}[args.gpu_decode],
        "precision": args.precision,
    }
    if args.precision == "int8":
        run["compile"] = "auto"
    extract_features(slide, grid.subset(np.arange(2)), **run)  # load (and compile) once
    t = time.perf_counter()
    result = extract_features(slide, grid, **run)
    pipeline = n / (time.perf_counter() - t)

    # reading alone: tifffile + Pillow in threads, and the file's JPEG tiles on the device
    from napari_deeppt.features.gpu.jpeg import JpegTileReader

    t = time.perf_counter()
    for _ in grid.iter_tiles(slide, workers=max(2, torch.get_num_threads())):
        pass
    read_threads = n / (time.perf_counter() - t)
    reader = JpegTileReader.for_grid(slide, grid)
    read_device = float("nan")
    if reader is not None:
        reader.read_batch(np.arange(min(batch, n)), device)  # warm-up
        t = time.perf_counter()
        for start in range(0, n, batch):
            reader.read_batch(np.arange(start, min(start + batch, n)), device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        read_device = n / (time.perf_counter() - t)

    seed_model = load_extractor("resnet50", args.weights).model.eval().to(device)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    t = time.perf_counter()
    with torch.no_grad():
        for start in range(0, n, 64):
            tensors = []
            for i in range(start, min(start + 64, n)):
                tile = Image.fromarray(grid.read_tile(slide, i)).resize((224, 224))
                arr = torch.from_numpy(np.array(tile)).permute(2, 0, 1).float() / 255
                tensors.append((arr - mean) / std)
            seed_model(torch.stack(tensors).to(device)).cpu()
    seed = n / (time.perf_counter() - t)

    print(f"reading, tifffile threads: {read_threads:8.1f} tiles/s")
    print(
        f"reading, JPEG on {device.type}:   {read_device:8.1f} tiles/s  "
        f"ratio {read_device / read_threads:.2f}"
    )
    print(f"pipeline read tiles with: {result.provenance['reader']}")
    print(f"bare model:       {bare:8.1f} tiles/s")
    print(
        f"pipeline:         {pipeline:8.1f} tiles/s  ratio to bare {pipeline / bare:.2f} "
        "(goal ≥ 0.85)"
    )
    print(
        f"seed-style loop:  {seed:8.1f} tiles/s  pipeline / seed {pipeline / seed:.2f} (goal ≥ 3)"
    )
    if fp32_bare == fp32_bare:  # measured
        print(
            f"compiled fp32 bare model: {fp32_bare:8.1f} tiles/s  "
            f"{args.precision} pipeline / compiled fp32 bare {pipeline / fp32_bare:.2f}"
        )
    if args.precision != "float32":
        from napari_deeppt.features.quantized import agreement

        r2, cosine = agreement(result.features, extract_features(slide, grid, **{
            **run, "precision": "float32", "compile": False}).features)  # fmt: skip
        print(
            f"{args.precision} against fp32: R² {r2:.4f} of the features' variance, "
            f"cosine ≥ {cosine:.4f}"
        )


def _bare_rate(model, x, n: int, device) -> float:
    """Tiles per second of ``model`` alone on a fixed batch, ``n`` tiles after a warm-up."""
    import torch

    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else torch.autocast("cpu", enabled=False)
    )
    with torch.inference_mode(), autocast:
        model(x)  # warm-up (and compile)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        done = 0
        while done < n:
            model(x)
            done += len(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return done / (time.perf_counter() - t)


if __name__ == "__main__":
    main()
