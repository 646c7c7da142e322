"""The CUDA path against the CPU path: run wherever a GPU is present, skipped elsewhere.

No GPU has been available where this project was written, so these tests are what a first
run on one should show: the same pixels from nvJPEG as from libjpeg-turbo (including the Adobe
marker of Aperio's RGB tiles), the same stain normalisation, and features and predictions that
agree with the CPU's within autocast's precision, collected in order through the pinned,
one-batch-late readback.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_deeppt import extract_features, open_slide
from napari_deeppt.samples import cmu1_small_region_path
from napari_deeppt.tiles import make_tile_grid

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def cmu():
    slide = open_slide(cmu1_small_region_path())  # Aperio: RGB-colourspace JPEG + JPEGTables
    return slide, make_tile_grid(slide, tile_px=512, mpp=0.5, min_tissue=0.3)


def test_nvjpeg_agrees_with_libjpeg_turbo(cmu, svs_slide):
    from napari_deeppt.features.gpu.jpeg import JpegTileReader

    for slide, grid in [cmu, (s := open_slide(svs_slide.path), make_tile_grid(s, tile_px=128))]:
        reader = JpegTileReader.for_grid(slide, grid)
        assert reader.check_decoder("cuda") is None
        indices = np.arange(min(16, len(grid)))
        on_gpu = reader.read_batch(indices, torch.device("cuda")).cpu().numpy().astype(float)
        on_cpu = reader.read_batch(indices, "cpu").numpy().astype(float)
        assert np.abs(on_gpu - on_cpu).mean() < 1.0


def test_macenko_on_cuda_matches_cpu(cmu):
    from napari_deeppt.stain import macenko_normalize

    slide, grid = cmu
    tiles = np.stack([grid.read_tile(slide, i) for i in range(min(8, len(grid)))])
    cpu = macenko_normalize(tiles).astype(float)
    gpu = macenko_normalize(torch.from_numpy(tiles).cuda()).cpu().numpy().astype(float)
    assert np.abs(cpu - gpu).mean() < 0.5 and np.abs(cpu - gpu).max() <= 3


@pytest.mark.parametrize("gpu_decode", [True, False])
def test_features_on_cuda_match_cpu_in_order(cmu, tmp_path, gpu_decode):
    slide, grid = cmu
    common = {
        "extractor": "resnet18",
        "weights": "random",
        "dtype": "float32",
        "batch_size": 5,  # several batches and a short last one: the deferred readback
        "use_cache": False,
        "progress": False,
        "compile": False,
    }
    cpu = extract_features(slide, grid, device="cpu", **common).features
    gpu = extract_features(slide, grid, device="cuda", gpu_decode=gpu_decode, **common)
    assert gpu.provenance["reader"] == ("torchvision-jpeg" if gpu_decode else "tiles")
    a, b = cpu, gpu.features
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.min() > 0.99  # bf16/fp16 autocast; every row in its place
    # row i is tile i: each GPU row is closest to the CPU row of the same tile
    distances = ((b[:, None, :] - a[None, :, :]) ** 2).sum(-1)
    np.testing.assert_array_equal(distances.argmin(1), np.arange(len(a)))


def test_bfloat16_features_on_cuda_match_the_cpus_float32(cmu):
    """precision="bfloat16" on a GPU with bfloat16: bfloat16 weights (under the autocast
    float32 runs with there), its own provenance, features close to the CPU's float32."""
    from napari_deeppt.features.quantized import agreement

    slide, grid = cmu
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    common = {"extractor": "resnet18", "weights": "random", "dtype": "float32",
              "use_cache": False, "progress": False, "compile": False}  # fmt: skip
    cpu = extract_features(slide, grid, device="cpu", **common).features
    gpu = extract_features(slide, grid, device="cuda", precision="bfloat16", **common)
    assert gpu.provenance["precision"] == "bfloat16"
    r2, cosine = agreement(gpu.features, cpu)
    assert r2 >= 0.99 and cosine >= 0.99, (r2, cosine)


def test_deferred_readback_on_cuda():
    from napari_deeppt.features.gpu.readback import Readback

    readback = Readback(torch.device("cuda"), batch=4, dim=3)
    batches = [torch.full((4, 3), float(k), device="cuda") for k in range(3)]
    collected = []
    for k, feats in enumerate(batches):
        collected += readback.push(4 * k, feats)
    collected += readback.flush()
    assert [start for start, _ in collected] == [0, 4, 8]
    for k, (_, block) in enumerate(collected):
        np.testing.assert_array_equal(block, np.full((4, 3), float(k)))


def test_a_foundation_preset_embeds_on_cuda_in_bfloat16_as_on_the_cpu():
    """``embed`` on CUDA runs under the extraction's autocast; its features agree with the
    CPU's (a two-block copy of UNI, random weights)."""
    import dataclasses

    pytest.importorskip("timm")
    from napari_deeppt.features import extractors, presets
    from napari_deeppt.features.extractors import get_spec, load_extractor

    build = get_spec("uni").build
    shallow = presets._vit(build.arch, build.pooling, **{**build.options, "depth": 2})
    extractors.EXTRACTORS["uni"] = dataclasses.replace(get_spec("uni"), build=shallow)
    try:
        tiles = np.random.default_rng(0).integers(0, 256, (8, 224, 224, 3), dtype=np.uint8)
        on_cpu = load_extractor("uni", "random").embed(tiles, device="cpu")
        on_gpu = load_extractor("uni", "random").embed(tiles, device="cuda")
    finally:
        extractors.EXTRACTORS["uni"] = dataclasses.replace(get_spec("uni"), build=build)
    cosine = (
        (on_cpu * on_gpu).sum(1) / np.linalg.norm(on_cpu, axis=1) / np.linalg.norm(on_gpu, axis=1)
    )
    assert cosine.min() > 0.99


@pytest.mark.parametrize("in_files", [False, True], ids=["latents in memory", "in files"])
def test_training_on_cuda_learns_what_the_cpu_learns(monkeypatch, in_files):
    """Autoencoders and regressors train on the GPU (dropout masks come from another
    generator there, so the runs agree in accuracy, not bit for bit); what comes back is
    on the CPU, ready for the bundle."""
    from napari_deeppt.model import crossval
    from napari_deeppt.model.crossval import cross_validate
    from napari_deeppt.model.feature_source import FeatureSource
    from napari_deeppt.model.settings import TrainingSettings

    if in_files:  # a cohort too large for memory: latent tiles read from a file per batch
        monkeypatch.setattr(crossval, "_LOCKSTEP_BYTES", 1)
    rng = np.random.default_rng(2)
    state = rng.normal(size=30)
    samples = [np.maximum(s + rng.normal(size=(60, 16)), 0).astype(np.float32) for s in state]
    stops = np.cumsum([len(s) for s in samples])
    source = FeatureSource.from_parts(
        [np.concatenate(samples)], [(0, int(b - 60), int(b)) for b in stops]
    )
    targets = torch.tensor(np.column_stack([state, -state]), dtype=torch.float32)
    settings = TrainingSettings(
        outer_folds=3, inner_folds=2, max_epochs=40, patience=10, lr=1e-3, latent_dim=8,
        ae_epochs=3, regressor_tiles=20, batch_slides=4,
    )  # fmt: skip
    runs = {}
    for device in ("cpu", "cuda"):
        runs[device] = cross_validate(
            source, targets, np.arange(30).astype(str), ["a", "b"], settings, False, None,
            False, torch.device(device),
        )  # fmt: skip
    for cv in runs.values():
        assert (cv.metrics["pearson_r"] > 0.8).all(), cv.metrics
        assert all(p.device.type == "cpu" for p in cv.autoencoder.parameters())
        assert all(v.device.type == "cpu" for state in cv.states for v in state.values())
    gap = runs["cuda"].metrics["pearson_r"] - runs["cpu"].metrics["pearson_r"]
    assert gap.abs().max() < 0.05, gap
