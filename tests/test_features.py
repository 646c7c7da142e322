"""Feature engine: equal to a direct torchvision forward, cache, cancel, weights, exports."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_deeppt import CancelToken, open_slide
from napari_deeppt.errors import CancelledError, WeightsNotFoundError
from napari_deeppt.features import FeatureSet, extract_features, load_extractor
from napari_deeppt.tiles import make_tile_grid

RANDOM_RESNET18 = {"extractor": "resnet18", "weights": "random", "progress": False}


@pytest.fixture(scope="module")
def slide_and_grid(svs_slide):
    slide = open_slide(svs_slide.path)
    grid = make_tile_grid(slide, tile_px=128, mpp=1.0)
    assert len(grid) >= 8
    return slide, grid.subset(np.arange(8))


def direct_features(model, tiles, size=224):
    """A plain forward pass: antialiased bilinear resize (torch, uint8), ImageNet mean/std."""
    import torch.nn.functional as F

    x = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2)
    x = (
        F.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        ).float()
        / 255.0
    )
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        return model((x - mean) / std).numpy()


def test_equals_direct_torchvision_forward(slide_and_grid, tmp_path):
    """ResNet50 (random weights, seed 0): the pipeline's features are a plain forward pass."""
    import torchvision

    slide, grid = slide_and_grid
    grid = grid.subset(np.arange(4))
    fs = extract_features(
        slide,
        grid,
        extractor="resnet50",
        weights="random",
        stain=None,
        cache_dir=tmp_path,
        progress=False,
        dtype="float32",
        batch_size=3,
    )
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None)
    model.fc = torch.nn.Identity()
    model.eval()
    expected = direct_features(model, [grid.read_tile(slide, i) for i in range(len(grid))])
    assert fs.features.shape == (4, 2048)
    np.testing.assert_allclose(fs.features, expected, rtol=1e-3, atol=1e-4)


def test_stain_normalisation_changes_features_and_provenance(slide_and_grid, tmp_path):
    slide, grid = slide_and_grid
    common = {**RANDOM_RESNET18, "cache_dir": tmp_path}
    plain = extract_features(slide, grid, stain=None, **common)
    macenko = extract_features(slide, grid, stain="macenko", **common)
    assert plain.provenance["stain"]["method"] is None
    assert macenko.provenance["stain"]["method"] == "macenko"
    assert macenko.provenance["stain"]["stain_matrix"][0][0] == pytest.approx(0.5626)
    assert not np.allclose(plain.features, macenko.features)


def test_cache_hit_miss_and_invalidation(slide_and_grid, tmp_path, monkeypatch):
    slide, grid = slide_and_grid
    common = {**RANDOM_RESNET18, "cache_dir": tmp_path}
    first = extract_features(slide, grid, **common)
    assert len(list(tmp_path.glob("*.zarr"))) == 1
    import napari_deeppt.features.engine as engine

    def no_model(*args, **kwargs):
        raise AssertionError("the model ran on a cache hit")

    monkeypatch.setattr(engine, "prepare_model", no_model)
    again = extract_features(slide, grid, **common)
    np.testing.assert_array_equal(again.features, first.features)
    assert again.from_cache and not first.from_cache
    assert again.provenance["cache_key"] == first.provenance["cache_key"]
    monkeypatch.undo()
    for change in ({"stain": None}, {"dtype": "float32"}, {"seed": 1}):
        extract_features(slide, grid, **{**common, **change})
    extract_features(slide, grid.subset(np.arange(5)), **common)
    assert len(list(tmp_path.glob("*.zarr"))) == 5  # every changed parameter: a new entry


def test_enum_choices_are_their_string_values(slide_and_grid, tmp_path):
    """StainMethod/Device members and their values ask for the same features (one entry)."""
    from napari_deeppt.devices import Device
    from napari_deeppt.stain import StainMethod

    slide, grid = slide_and_grid
    common = {**RANDOM_RESNET18, "cache_dir": tmp_path}
    by_name = extract_features(slide, grid, stain="reinhard", device="cpu", **common)
    by_enum = extract_features(slide, grid, stain=StainMethod.REINHARD, device=Device.CPU, **common)
    assert by_enum.from_cache
    assert by_enum.provenance["cache_key"] == by_name.provenance["cache_key"]
    plain = extract_features(slide, grid, stain=StainMethod.NONE, **common)
    assert plain.provenance["stain"] == {"method": None}


def test_cancel_leaves_no_complete_looking_entry(slide_and_grid, tmp_path):
    slide, grid = slide_and_grid
    token = CancelToken()
    calls = []

    def progress(done, total, message):
        calls.append(done)
        if done >= 2:
            token.cancel()

    with pytest.raises(CancelledError):
        extract_features(
            slide,
            grid,
            extractor="resnet18",
            weights="random",
            batch_size=2,
            cache_dir=tmp_path,
            progress=progress,
            cancel=token,
        )
    assert max(calls) < len(grid)
    assert list(tmp_path.iterdir()) == []  # nothing left, not even a partial store


def test_missing_weights_error_says_where_to_put_them(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("NAPARI_DEEPPT_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError) as info:
        load_extractor("resnet50")
    message = str(info.value)
    assert "resnet50-11ad3fa6.pth" in message and str(tmp_path / "torch") in message
    assert "weights=PATH" in message


def test_weights_file_and_hub_cache_are_used(monkeypatch, tmp_path):
    import torchvision

    torch.manual_seed(5)
    model = torchvision.models.resnet18(weights=None)
    path = tmp_path / "my-resnet18.pth"
    torch.save(model.state_dict(), path)
    loaded = load_extractor("resnet18", path)
    assert loaded.weights_source == str(path) and len(loaded.weights_hash) == 16
    assert torch.equal(loaded.model.conv1.weight, model.conv1.weight)
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(model.state_dict(), hub / "resnet18-f37072fd.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("NAPARI_DEEPPT_OFFLINE", "1")
    assert load_extractor("resnet18").weights_source.endswith("resnet18-f37072fd.pth")
    (tmp_path / "bad.pth").write_bytes(b"not weights")
    with pytest.raises(WeightsNotFoundError, match="not a readable weights file"):
        load_extractor("resnet18", tmp_path / "bad.pth")
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(WeightsNotFoundError, match="do not fit resnet18"):
        load_extractor("resnet18", tmp_path / "r34.pth")


def test_a_multi_gpu_training_checkpoint_loads_its_backbone(tmp_path):
    """A checkpoint saved from ``nn.DataParallel`` (every key under ``module.``, the
    classifier head included) under a ``state_dict`` key loads the same weights."""
    import torchvision

    torch.manual_seed(6)
    model = torchvision.models.resnet18(weights=None)
    wrapped = torch.nn.DataParallel(model).state_dict()
    assert "module.fc.weight" in wrapped
    path = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 3, "state_dict": wrapped}, path)
    loaded = load_extractor("resnet18", path)
    assert torch.equal(loaded.model.layer4[1].conv2.weight, model.layer4[1].conv2.weight)
    assert torch.equal(loaded.model.conv1.weight, model.conv1.weight)


def test_unknown_extractor_and_bad_arguments(slide_and_grid, tmp_path):
    slide, grid = slide_and_grid
    with pytest.raises(Exception, match="unknown feature extractor"):
        extract_features(slide, grid, extractor="nope", weights="random", cache_dir=tmp_path)
    with pytest.raises(Exception, match="unknown stain"):
        extract_features(
            slide, grid, extractor="resnet18", weights="random", stain="magic", cache_dir=tmp_path
        )


def test_exports(slide_and_grid, tmp_path):
    slide, grid = slide_and_grid
    fs = extract_features(
        slide,
        grid,
        extractor="resnet18",
        weights="random",
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    np.testing.assert_array_equal(np.load(fs.to_npy(tmp_path / "f.npy")), fs.features)
    import pandas as pd

    table = pd.read_csv(fs.to_csv(tmp_path / "f.csv"))
    assert list(table.columns[:3]) == ["x", "y", "tissue_fraction"] and table.shape == (8, 515)
    import anndata

    adata = anndata.read_h5ad(fs.to_h5ad(tmp_path / "f.h5ad"))
    assert adata.n_obs == 8 and adata.obsm["features"].shape == (8, 512)
    centres_um = (grid.xy + grid.size_level0 / 2) * grid.slide_mpp
    np.testing.assert_allclose(adata.obsm["spatial"], centres_um)
    saved = FeatureSet.load(fs.save(tmp_path / "copy.zarr"))
    np.testing.assert_array_equal(saved.features, fs.features)
    np.testing.assert_array_equal(saved.grid.xy, grid.xy)
    with pytest.raises(FileExistsError):
        fs.to_npy(tmp_path / "f.npy")


def test_embedding_separates_tissue_types(tmp_path, svs_slide):
    """Tiles of different synthetic tissues get different embedding colours."""
    slide = open_slide(svs_slide.path)
    grid = make_tile_grid(slide, tile_px=64, mpp=2.0, min_tissue=0.95)
    fs = extract_features(
        slide,
        grid,
        extractor="resnet18",
        weights="random",
        stain=None,
        cache_dir=tmp_path,
        progress=False,
    )
    rgb = fs.embedding_rgb()
    assert rgb.shape == (*grid.grid_shape, 3)
    colours = rgb[grid.rowcol[:, 0], grid.rowcol[:, 1]]
    kinds = svs_slide.tissue_type_map(grid.centres[:, 0], grid.centres[:, 1])
    means = {k: colours[kinds == k].mean(axis=0) for k in np.unique(kinds) if k >= 0}
    assert len(means) >= 2
    values = list(means.values())
    assert max(np.abs(a - b).max() for a in values for b in values) > 0.2
    assert np.isnan(rgb).any()  # glass cells are empty


def test_memory_stays_flat_as_the_slide_grows(svs_slide, tmp_path):
    """Peak traced memory for 4× the tiles grows only by the (tiny) result array.

    Holding every tile would add ~5.9 MB here (120 more tiles of 128² × 3 bytes).
    """
    import tracemalloc

    from napari_deeppt.features import ExtractorSpec, register_extractor

    def build():
        return torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
        )

    register_extractor(ExtractorSpec("tiny-test", build, 8, input_size=32))
    slide = open_slide(svs_slide.path)
    grid = make_tile_grid(slide, tile_px=128, mpp=0.5, min_tissue=0.0)
    peaks = {}
    for n in (40, 160):
        tracemalloc.start()
        extract_features(
            slide,
            grid.subset(np.arange(n)),
            extractor="tiny-test",
            weights="random",
            batch_size=8,
            use_cache=False,
            progress=False,
        )
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks[160] < peaks[40] + 2**20, peaks


def test_jpeg_tiles_decoded_by_torchvision_equal_tifffile(tmp_path):
    """The (GPU) JPEG path, run on the CPU: same pixels as tifffile, so the same features."""
    from napari_deeppt.features.gpu.jpeg import JpegTileReader
    from napari_deeppt.samples import cmu1_small_region_path

    slide = open_slide(cmu1_small_region_path())  # Aperio RGB-colourspace JPEG + JPEGTables
    grid = make_tile_grid(slide, tile_px=240, mpp=slide.mpp, min_tissue=0.5)
    reader = JpegTileReader.for_grid(slide, grid)
    assert reader is not None and reader.rgb_colourspace
    indices = np.arange(min(6, len(grid)))
    decoded = reader.read_batch(indices, "cpu").numpy()
    expected = np.stack([grid.read_tile(slide, int(i)) for i in indices])
    np.testing.assert_array_equal(decoded, expected)
    common = {
        "extractor": "resnet18",
        "weights": "random",
        "stain": "macenko",
        "cache_dir": tmp_path,
        "progress": False,
        "dtype": "float32",
        "batch_size": 4,
    }
    direct = extract_features(slide, grid.subset(indices), gpu_decode=True, **common)
    plain = extract_features(slide, grid.subset(indices), gpu_decode=False, **common)
    assert direct.provenance["reader"] == "torchvision-jpeg"
    assert plain.provenance["reader"] == "tiles"
    np.testing.assert_allclose(direct.features, plain.features, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("size", "out"),
    [(513, 512), (1024, 512), (1030, 512), (509, 512), (256, 224), (512, 224), (7, 3)],
)
def test_device_resize_is_pillows_bit_for_bit(size, out):
    """Tiles decoded on a device are resized exactly as slide.resize_rgb (Pillow) does."""
    import torch

    from napari_deeppt.features.gpu.resample import resize_like_pillow
    from napari_deeppt.slide import resize_rgb

    rng = np.random.default_rng(size)
    noise = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    edges = np.where(rng.random((size, size, 1)) < 0.5, 255, 0).astype(np.uint8).repeat(3, 2)
    batch = np.stack([noise, edges])
    expected = np.stack([resize_rgb(image, out, out) for image in batch])
    np.testing.assert_array_equal(resize_like_pillow(torch.from_numpy(batch), out, out), expected)


@pytest.mark.parametrize(
    ("tile_px", "mpp", "shift"),
    [
        (512, None, (0, 0)),  # level 0, unaligned with the 240 px file tiles: stitched
        (512, 0.5, (0, 0)),  # 513 px regions resized to 512 (mpp 0.499 → 0.5)
        (256, 0.25, (0, 0)),  # enlarged 2× (bilinear)
        (200, None, (130, -90)),  # regions past the slide's edges: white, as read_region
    ],
)
def test_jpeg_reader_stitches_like_read_region(tile_px, mpp, shift):
    from dataclasses import replace

    from napari_deeppt.features.gpu.jpeg import JpegTileReader
    from napari_deeppt.samples import cmu1_small_region_path

    slide = open_slide(cmu1_small_region_path())
    grid = make_tile_grid(slide, tile_px=tile_px, mpp=mpp or slide.mpp, min_tissue=0.0)
    if shift != (0, 0):  # move the first and last rows of tiles past the edges
        xy = grid.xy.copy()
        xy[xy[:, 1] == xy[:, 1].min(), 1] += shift[1]
        xy[xy[:, 0] == xy[:, 0].max(), 0] += shift[0]
        grid = replace(grid, xy=xy)
    reader = JpegTileReader.for_grid(slide, grid)
    indices = np.arange(len(grid))
    expected = np.stack([grid.read_tile(slide, int(i)) for i in indices])
    np.testing.assert_array_equal(reader.read_batch(indices, "cpu").numpy(), expected)


def test_jpeg_reader_on_a_lower_ycbcr_level(svs_slide):
    from napari_deeppt.features.gpu.jpeg import JpegTileReader

    slide = open_slide(svs_slide.path)  # JPEG (YCbCr) tiles, a 4× level
    grid = make_tile_grid(slide, tile_px=64, mpp=2.2, min_tissue=0.0)  # level 1, 70 → 64 px
    reader = JpegTileReader.for_grid(slide, grid)
    assert reader is not None and reader.level == 1 and not reader.rgb_colourspace
    indices = np.arange(0, len(grid), max(1, len(grid) // 40))
    expected = np.stack([grid.read_tile(slide, int(i)) for i in indices])
    np.testing.assert_array_equal(reader.read_batch(indices, "cpu").numpy(), expected)


def test_jpeg_reader_reads_tiles_never_written_as_tifffile_does(tmp_path):
    """Scanners skip empty tiles (byte count 0); tifffile reads them as 0, and so must we."""
    import tifffile

    from napari_deeppt.features.gpu.jpeg import JpegTileReader

    rng = np.random.default_rng(1)
    tiles = [
        None if i in (5, 6) else rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
        for i in range(16)
    ]
    path = tmp_path / "sparse.tif"
    tifffile.imwrite(
        path,
        iter(tiles),
        shape=(1024, 1024, 3),
        dtype=np.uint8,
        tile=(256, 256),
        compression="jpeg",
        photometric="rgb",
    )
    slide = open_slide(path, mpp=0.5)
    grid = make_tile_grid(slide, tile_px=200, mpp=0.5, min_tissue=0.0)
    reader = JpegTileReader.for_grid(slide, grid)
    assert reader.check_decoder("cpu") is None
    expected = np.stack([grid.read_tile(slide, i) for i in range(len(grid))])
    assert (expected == 0).all(axis=-1).any()  # some regions do cover the missing tiles
    np.testing.assert_array_equal(reader.read_batch(np.arange(len(grid)), "cpu"), expected)


def test_jpeg_reader_only_for_jpeg_tiles(tiff_slide):
    from napari_deeppt.features.gpu.jpeg import JpegTileReader

    slide = open_slide(tiff_slide.path)  # zlib tiles
    assert JpegTileReader.for_grid(slide, make_tile_grid(slide, tile_px=128)) is None


def test_deferred_readback_returns_every_batch_once_in_order():
    """The CUDA readback (one batch late, two reused host buffers), exercised on the CPU."""
    from napari_deeppt.features.gpu.readback import Readback

    readback = Readback(torch.device("cpu"), batch=4, dim=3, deferred=True)
    batches = [torch.full((4, 3), float(k)) for k in range(4)] + [torch.full((2, 3), 4.0)]
    collected = []
    for k, feats in enumerate(batches):
        ready = readback.push(4 * k, feats)
        assert [start for start, _ in ready] == ([] if k == 0 else [4 * (k - 1)])
        collected += ready
    collected += readback.flush()
    assert [start for start, _ in collected] == [0, 4, 8, 12, 16]
    for k, (_, block) in enumerate(collected):
        np.testing.assert_array_equal(block, batches[k].numpy())  # not overwritten by reuse


def test_a_disagreeing_device_decoder_falls_back_to_tifffile(tmp_path, monkeypatch):
    """If the device's JPEG decoder is off (nvJPEG ignoring a colour transform, say), the
    slide is read with tifffile, with a warning; the features are the CPU path's."""
    from napari_deeppt.features.gpu.jpeg import JpegTileReader
    from napari_deeppt.samples import cmu1_small_region_path

    slide = open_slide(cmu1_small_region_path())
    grid = make_tile_grid(slide, tile_px=240, mpp=slide.mpp, min_tissue=0.5).subset([0, 1])
    reader = JpegTileReader.for_grid(slide, grid)
    assert reader.check_decoder("cpu") is None  # libjpeg-turbo against itself
    decode = JpegTileReader._decode
    calls = []

    def swapped_channels(streams, device):
        calls.append(device)
        tiles = decode(streams, device)
        return [t.flip(0) for t in tiles] if len(calls) % 2 else tiles  # first: "the device"

    monkeypatch.setattr(JpegTileReader, "_decode", staticmethod(swapped_channels))
    assert "differs from libjpeg-turbo" in reader.check_decoder("cpu")
    calls.clear()
    with pytest.warns(UserWarning, match="reading tiles with tifffile instead"):
        features = extract_features(
            slide,
            grid,
            extractor="colour-stats",
            gpu_decode=True,
            cache_dir=tmp_path,
            progress=False,
        )
    assert features.provenance["reader"] == "tiles"


def test_the_model_input_is_the_resized_tile_imagenet_normalised_channels_last():
    """(x / 255 - mean) / std per channel, to float32 rounding, in channels-last memory
    (computed in one fused pass since 2026-12-08)."""
    from napari_deeppt.features.preprocess import preprocess_batch, resize_uint8

    spec = load_extractor("resnet18", "random").spec
    tiles = torch.randint(
        0, 256, (3, 300, 300, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    x = preprocess_batch(tiles, spec, {"method": None})
    resized = resize_uint8(tiles, spec.input_size).permute(0, 3, 1, 2).double() / 255
    mean = torch.tensor(spec.mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float64).view(1, 3, 1, 1)
    torch.testing.assert_close(x.double(), (resized - mean) / std, rtol=0, atol=1e-6)
    assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
