"""Training reads features from the stores, a block at a time (issue 13, item 1).

Known answers: features whose values name their sample and row, so every row handed out
can be checked; a cohort trained from a manifest's ``features`` column, its slides gone,
gives what training from the slides gave.
"""

from __future__ import annotations

import shutil
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from napari_deeppt.errors import DeepPTError, ExpressionTableError, SlideNotFoundError
from napari_deeppt.features import extract_features
from napari_deeppt.model import autoencoding
from napari_deeppt.model.autoencoding import autoencoder_tiles, encode, tile_sample
from napari_deeppt.model.crossval import cross_validate
from napari_deeppt.model.feature_source import FeatureSource
from napari_deeppt.model.nn import AutoEncoder
from napari_deeppt.model.settings import TrainingSettings
from napari_deeppt.model.training import train
from napari_deeppt.testing import write_synthetic_cohort
from napari_deeppt.tiles import detect_and_tile


def _named_rows(counts: list[int]) -> list[np.ndarray]:
    """Sample ``i``'s row ``j`` is ``[i, j, 1, 1, …]``: every row says where it came from."""
    return [
        np.column_stack([np.full(n, i), np.arange(n), np.ones((n, 6))]).astype(np.float32)
        for i, n in enumerate(counts)
    ]


def _one_array(samples: list[np.ndarray]) -> FeatureSource:
    """The samples' rows one after another in one array (a section's spots, a store)."""
    stops = np.cumsum([len(s) for s in samples])
    parts = [(0, int(b - len(s)), int(b)) for s, b in zip(samples, stops, strict=True)]
    return FeatureSource.from_parts([np.concatenate(samples)], parts)


class _CountingArray:
    """An array that records how many rows each read asks for."""

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.reads = array, []
        self.shape, self.dtype = array.shape, array.dtype

    def __getitem__(self, key: slice) -> np.ndarray:
        rows = self.array[key]
        self.reads.append(len(rows))
        return rows


def test_blocks_hand_out_each_chosen_row_once_and_never_more_than_asked():
    samples = _named_rows([3, 5, 2500, 1, 4])
    source = _one_array(samples)
    chosen = np.array([4, 2, 0, 1])  # sample 3 left out
    blocks = list(source.blocks(chosen, max_rows=1000))
    assert all(b.stop - b.start <= 1000 for b in blocks)
    rows = np.concatenate([source.read(b) for b in blocks])
    got = {(int(i), int(j)) for i, j in rows[:, :2]}
    want = {(i, j) for i in chosen for j in range(len(samples[i]))}
    assert got == want and len(rows) == len(want)
    for block in blocks:  # each row's sample and offset are the ones it names
        named = source.read(block)[:, :2].astype(int)
        np.testing.assert_array_equal(named, np.column_stack([block.samples, block.offsets]))
    assert len(blocks) == 4  # 0 and 1 share one; 2500 rows take three; 4 alone


def test_the_autoencoder_sample_is_each_samples_draw_and_scratch_is_removed(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    samples = _named_rows([10, 300, 40, 1000])
    source = _one_array(samples)
    settings = TrainingSettings(ae_tiles=32, seed=5)
    chosen = tile_sample(source.counts, 32, settings.seed + 1)
    with autoencoder_tiles(source, settings) as sample:
        assert sample is not source
        assert len(list(tmp_path.glob("deeppt-ae-tiles-*"))) == 1
        np.testing.assert_array_equal(sample.counts, [10, 32, 32, 32])
        for i in range(4):
            rows = sample.read(next(sample.blocks(np.array([i]), 10_000)))
            np.testing.assert_array_equal(rows[:, 0], i)
            np.testing.assert_array_equal(rows[:, 1], chosen[i])
    assert not list(tmp_path.iterdir())
    with autoencoder_tiles(source, TrainingSettings(ae_tiles=None)) as everything:
        assert everything is source


class _RecordingScratch:
    """A scratch array that records the rows each write covers."""

    def __init__(self, array: Any) -> None:
        self.array, self.writes = array, []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.array, name)

    def __getitem__(self, key: Any) -> np.ndarray:
        return self.array[key]

    def __setitem__(self, key: slice, rows: np.ndarray) -> None:
        self.writes.append((key.start, key.stop))
        self.array[key] = rows


def test_the_scratch_store_is_uncompressed_and_written_a_whole_chunk_at_a_time(monkeypatch):
    """Every epoch reads the autoencoder's tiles again: zstd decoding of partly read
    4096-row chunks ran at 0.18 GB/s, uncompressed 1,024-row chunks at 1.2 GB/s; writing a
    chunk in parts would read it back and rewrite it for every sample."""
    recorded = []

    def scratch(*args: Any) -> _RecordingScratch:
        recorded.append(_RecordingScratch(make_scratch(*args)))
        return recorded[-1]

    make_scratch = autoencoding._scratch_array
    monkeypatch.setattr(autoencoding, "_scratch_array", scratch)
    monkeypatch.setattr(autoencoding, "_EPOCH_BLOCK_ROWS", 50)
    monkeypatch.setattr(autoencoding, "_BLOCK_ROWS", 64)  # samples read in several blocks
    samples = _named_rows([10, 300, 40, 1000, 7])
    settings = TrainingSettings(ae_tiles=32, seed=5)
    chosen = tile_sample(np.array([10, 300, 40, 1000, 7]), 32, settings.seed + 1)
    with autoencoder_tiles(_one_array(samples), settings) as sample:
        (array,) = recorded
        assert array.compressors == () and array.chunks == (50, 8)
        total = 10 + 32 + 32 + 32 + 7
        assert array.writes == [(s, min(s + 50, total)) for s in range(0, total, 50)]
        for i in range(5):
            rows = sample.read(next(sample.blocks(np.array([i]), 10_000)))
            np.testing.assert_array_equal(rows[:, 1], chosen[i])


def test_scratch_rows_stay_with_their_sample_whatever_order_the_store_holds_them(monkeypatch):
    """Samples stored out of order (sample 1's rows before sample 0's, as a FeatureSource
    built from parts may hold them), read in blocks that cut through samples: each
    sample's scratch rows are still its own drawn rows."""
    monkeypatch.setattr(autoencoding, "_EPOCH_BLOCK_ROWS", 50)
    monkeypatch.setattr(autoencoding, "_BLOCK_ROWS", 64)
    counts = [300, 100, 1000, 10]
    samples = _named_rows(counts)
    stored = [1, 0, 3, 2]  # the order of the samples in the array
    starts = dict(zip(stored, np.cumsum([0] + [counts[i] for i in stored])[:-1], strict=True))
    parts = [(0, int(starts[i]), int(starts[i]) + counts[i]) for i in range(4)]
    source = FeatureSource.from_parts([np.concatenate([samples[i] for i in stored])], parts)
    settings = TrainingSettings(ae_tiles=32, seed=5)
    chosen = tile_sample(np.array(counts), 32, settings.seed + 1)
    with autoencoder_tiles(source, settings) as sample:
        np.testing.assert_array_equal(sample.counts, [32, 32, 32, 10])
        for i in range(4):
            rows = sample.read(next(sample.blocks(np.array([i]), 10_000)))
            np.testing.assert_array_equal(rows[:, 0], i)
            np.testing.assert_array_equal(rows[:, 1], chosen[i])


def test_the_autoencoder_uses_the_fused_cpu_adam_and_learns_what_the_default_learns(monkeypatch):
    """torch's fused CPU Adam (one pass per tensor) makes an autoencoder step ~20 % faster
    than torch's default; the result is the default's, to rounding (it would not be if it
    read a gradient wrongly)."""
    rng = np.random.default_rng(0)
    source = FeatureSource.in_memory([rng.random((64, 8), np.float32) for _ in range(3)])
    settings = TrainingSettings(ae_epochs=3, ae_batch=16, latent_dim=4, lr=1e-2)
    if not autoencoding.fused_adam("cpu"):  # probed (and cached) before the spy below
        pytest.skip("this torch has no fused CPU Adam")
    made = []
    real_adam = torch.optim.Adam

    def adam(*args: Any, **kwargs: Any) -> torch.optim.Optimizer:
        made.append(kwargs.get("fused"))
        return real_adam(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", adam)
    fused = autoencoding.fit_autoencoder(source, np.arange(3), settings, 3, None)
    monkeypatch.setattr(autoencoding, "fused_adam", lambda device: False)
    default = autoencoding.fit_autoencoder(source, np.arange(3), settings, 3, None)
    assert made == [True, None]
    for key, value in fused.state_dict().items():
        torch.testing.assert_close(value, default.state_dict()[key], rtol=1e-4, atol=1e-5)
    torch.manual_seed(3)  # the initialisation fit_autoencoder starts from (seed 3)
    start = AutoEncoder(8, 4)
    assert not torch.allclose(fused.encoder[0].weight, start.encoder[0].weight, atol=1e-3)


def test_encoding_means_every_tile_and_keeps_the_drawn_ones(monkeypatch):
    monkeypatch.setattr(autoencoding, "_BLOCK_ROWS", 64)  # samples span several blocks
    generator = torch.Generator().manual_seed(0)
    samples = [torch.rand(n, 8, generator=generator).numpy() for n in (5, 200, 1, 90)]
    source = _one_array(samples)
    model = AutoEncoder(8, 4).eval()
    kept = tile_sample(source.counts, 16, 0)
    latents = encode(model, source, kept, dtype=torch.float32)
    with torch.no_grad():
        full = [model.encode(torch.from_numpy(s)) for s in samples]
    torch.testing.assert_close(latents.means, torch.stack([f.mean(0) for f in full]))
    np.testing.assert_array_equal(latents.counts, [5, 16, 1, 16])
    for i, f in enumerate(full):
        torch.testing.assert_close(latents.tiles[i, : len(kept[i])], f[kept[i]])
        assert not latents.tiles[i, len(kept[i]) :].any()


def test_cross_validation_reads_the_store_a_block_at_a_time(monkeypatch):
    """A cohort larger than a block trains without ever reading more than a block, and
    learns what drives the targets (R > 0.8 on held-out samples)."""
    monkeypatch.setattr(autoencoding, "_BLOCK_ROWS", 256)
    rng = np.random.default_rng(0)
    n, dim = 30, 16
    state = rng.normal(size=(n, 2))
    samples = [np.maximum(s[0] + rng.normal(size=(200, dim)), 0).astype(np.float32) for s in state]
    targets = torch.tensor(np.column_stack([state[:, 0], -state[:, 0]]), dtype=torch.float32)
    source = _one_array(samples)
    counting = _CountingArray(source.arrays[0])
    source = FeatureSource((counting,), source.array, source.start, source.stop)
    settings = TrainingSettings(
        outer_folds=3, inner_folds=2, max_epochs=60, patience=15, lr=1e-3, latent_dim=8,
        ae_epochs=3, ae_tiles=50, regressor_tiles=20, batch_slides=4,
    )  # fmt: skip
    cv = cross_validate(
        source, targets, np.arange(n).astype(str), ["a", "b"], settings, False, None
    )
    assert max(counting.reads) <= 256
    assert sum(counting.reads) < 12 * n * 200  # a few passes, not one per epoch per sample
    assert (cv.metrics["pearson_r"] > 0.8).all(), cv.metrics
    # HEST's PCA + ridge probe on the same samples' mean features and folds (issue 14)
    assert (cv.metrics["baseline_r"] > 0.8).all(), cv.metrics
    assert cv.summary["baseline_median_r"] == pytest.approx(cv.metrics["baseline_r"].median())


FEATURES = {"extractor": "colour-stats", "tile_px": 64, "tile_mpp": 1.0, "stain": None}
QUICK = {"outer_folds": 2, "inner_folds": 2, "max_epochs": 30, "patience": 10, "lr": 1e-3}


@pytest.fixture(scope="module")
def stored_cohort(tmp_path_factory):
    """A small cohort, and each slide's features saved as a store (as a cluster would)."""
    root = tmp_path_factory.mktemp("stored")
    cohort = write_synthetic_cohort(root / "cohort", n_slides=12, seed=4, noise=0.05)
    manifest = pd.read_csv(cohort.manifest)
    stores = []
    for slide in manifest["slide"]:
        path = cohort.manifest.parent / slide
        _, grid = detect_and_tile(path, tile_px=64, mpp=1.0)
        fs = extract_features(path, grid, extractor="colour-stats", stain=None, progress=False)
        stores.append(fs.save(root / "stores" / f"{path.stem}.zarr"))
    return cohort, manifest, stores, root


def test_a_manifest_features_column_trains_without_the_slides(stored_cohort, tmp_path):
    cohort, manifest, stores, _ = stored_cohort
    from_slides = train(
        cohort.manifest, cohort.expression, tmp_path / "a.deeppt", cache_dir=tmp_path / "c",
        progress=False, **FEATURES, **QUICK,
    )  # fmt: skip
    elsewhere = manifest.assign(slide=[f"/cluster/scratch/{s}" for s in manifest["slide"]])
    elsewhere["features"] = [str(s) for s in stores]
    table = tmp_path / "manifest.csv"
    elsewhere.to_csv(table, index=False)
    from_stores = train(
        table, cohort.expression, tmp_path / "b.deeppt", cache_dir=tmp_path / "empty",
        progress=False, **FEATURES, **QUICK,
    )  # fmt: skip
    pd.testing.assert_frame_equal(from_stores.heldout, from_slides.heldout)
    assert not (tmp_path / "empty").exists()  # no feature was extracted
    from napari_deeppt.model.bundle import ModelBundle

    bundle = ModelBundle.load(tmp_path / "b.deeppt")
    assert bundle.training["precomputed_features"] == 12
    assert bundle.training["ae_tiles"] == TrainingSettings.ae_tiles


def test_feature_stores_that_do_not_fit_are_refused_naming_the_store(stored_cohort, tmp_path):
    cohort, manifest, stores, root = stored_cohort
    table = manifest.assign(features=[str(s) for s in stores])

    def attempt(rows: pd.DataFrame, **options):
        rows.to_csv(tmp_path / "m.csv", index=False)
        settings = {**FEATURES, **QUICK, **options}
        return train(tmp_path / "m.csv", cohort.expression, tmp_path / "x.deeppt",
                     progress=False, overwrite=True, **settings)  # fmt: skip

    with pytest.raises(DeepPTError, match=rf"{stores[0].name}.*tile_px=64 \(training: 128\)"):
        attempt(table, tile_px=128)
    with pytest.raises(DeepPTError, match=r"extractor='colour-stats' \(training: 'resnet50'\)"):
        attempt(table, extractor="resnet50")
    gone = table.copy()
    gone.loc[3, "features"] = str(root / "nowhere.zarr")
    with pytest.raises(SlideNotFoundError, match=r"nowhere\.zarr"):
        attempt(gone)
    broken = root / "broken.zarr"
    shutil.copytree(stores[0], broken, dirs_exist_ok=True)
    (broken / ".zattrs").write_text('{"complete": false}')
    half = table.copy()
    half.loc[0, "features"] = str(broken)
    with pytest.raises(DeepPTError, match=r"broken.zarr.*incomplete"):
        attempt(half)
    roi = root / "roi.geojson"
    roi.write_text('{"type": "FeatureCollection", "features": []}')
    with pytest.raises(ExpressionTableError, match="features store and a roi"):
        attempt(table.assign(roi=str(roi)))
