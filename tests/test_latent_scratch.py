"""A large cohort's regressors train on latent tiles kept in a scratch file (issue 13).

Memory then does not grow with the cohort: only each sample's mean latent stays in memory.
Known answers: what the file hands back is what was written (zeros where nothing was), a
regressor trained from the file is the regressor trained from memory, and the file is gone
when training ends, whether it finished, failed or was cancelled.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from napari_deeppt.errors import CancelledError
from napari_deeppt.model import crossval
from napari_deeppt.model.autoencoding import encode, tile_sample
from napari_deeppt.model.crossval import cross_validate
from napari_deeppt.model.feature_source import FeatureSource
from napari_deeppt.model.latents import LatentFile, Latents
from napari_deeppt.model.nn import AutoEncoder
from napari_deeppt.model.regressors import RegressorJob, fit_regressors
from napari_deeppt.model.settings import TrainingSettings


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_a_latent_file_gives_back_what_was_written_and_zeros_elsewhere(tmp_path, dtype):
    values = torch.randn(4, 3, 5).to(dtype)
    file = LatentFile(tmp_path / "latents.bin", (4, 3, 5), dtype)
    file.write(0, 0, values[0])
    file.write(2, 1, values[2, 1:])  # tiles 1 and 2 only: tile 0 stays zero
    file.write(3, 0, values[3, :2])
    file.write(3, 2, values[3, 2:])  # a sample written in two parts, as blocks split it
    got = file[torch.tensor([3, 0, 2, 3, 1])]  # any order, repeats
    assert got.dtype == dtype and got.shape == (5, 3, 5)
    torch.testing.assert_close(got[0], values[3])
    torch.testing.assert_close(got[3], values[3])
    torch.testing.assert_close(got[1], values[0])
    torch.testing.assert_close(got[2, 1:], values[2, 1:])
    assert not got[2, 0].any() and not got[4].any()
    assert file.nbytes == 4 * 3 * 5 * got.element_size()
    with pytest.raises(IndexError, match="row 4 of 4"):
        file[torch.tensor([4])]
    with pytest.raises(IndexError, match="outside"):  # would spill into the next sample
        file.write(1, 2, values[1])
    assert not file[torch.tensor([1, 2])][0].any()  # nothing was written
    file.close()
    assert not (tmp_path / "latents.bin").exists()
    file.close()  # again: nothing


def _source(n: int, tiles: int, dim: int, seed: int) -> tuple[FeatureSource, torch.Tensor]:
    """``n`` samples of ``tiles`` tiles whose mean drives two targets."""
    rng = np.random.default_rng(seed)
    state = rng.normal(size=n)
    samples = [np.maximum(s + rng.normal(size=(tiles, dim)), 0).astype(np.float32) for s in state]
    stops = np.cumsum([len(s) for s in samples])
    parts = [(0, int(b - len(s)), int(b)) for s, b in zip(samples, stops, strict=True)]
    targets = torch.tensor(np.column_stack([state, -state]), dtype=torch.float32)
    return FeatureSource.from_parts([np.concatenate(samples)], parts), targets


def test_encoding_into_a_file_keeps_what_encoding_in_memory_keeps(tmp_path):
    source, _ = _source(12, 40, 8, seed=0)
    model = AutoEncoder(8, 4).eval()
    kept = tile_sample(source.counts, 16, 0)
    in_memory = encode(model, source, kept, dtype=torch.float32)
    in_file = encode(model, source, kept, dtype=torch.float32, scratch=tmp_path / "l.bin")
    assert isinstance(in_file.tiles, LatentFile) and in_file.tiles.shape == (12, 16, 4)
    torch.testing.assert_close(in_file.tiles[torch.arange(12)], in_memory.tiles)
    torch.testing.assert_close(in_file.means, in_memory.means)
    torch.testing.assert_close(in_file.counts, in_memory.counts)
    in_file.tiles.close()


def test_encoding_cancelled_midway_leaves_no_latent_file(tmp_path, monkeypatch):
    from napari_deeppt.model import autoencoding

    monkeypatch.setattr(autoencoding, "_BLOCK_ROWS", 64)  # several blocks: cancel in the 2nd
    source, _ = _source(12, 40, 8, seed=0)
    asked = iter([False, True])
    with pytest.raises(CancelledError):
        encode(AutoEncoder(8, 4).eval(), source, tile_sample(source.counts, 16, 0),
               lambda: next(asked), scratch=tmp_path / "l.bin")  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_a_regressor_trained_from_a_file_is_the_one_trained_from_memory(tmp_path):
    generator = torch.Generator().manual_seed(1)
    counts = torch.randint(1, 6, (60,), generator=generator)
    padded = torch.randn(60, 5, 8, generator=generator)
    padded *= (torch.arange(5)[None, :] < counts[:, None])[..., None]
    padded = padded.half()
    means = padded.float().sum(dim=1) / counts[:, None]
    file = LatentFile(tmp_path / "l.bin", (60, 5, 8), torch.float16)
    for i in range(60):
        file.write(i, 0, padded[i])
    targets = means @ torch.randn(8, 3, generator=generator)
    settings = TrainingSettings(max_epochs=4, patience=9, lr=1e-2, batch_slides=8, latent_dim=8)
    runs = []
    for tiles in (padded, file):
        latents = Latents(tiles, counts, means, False)
        jobs = [RegressorJob(latents, np.arange(0, 45), np.arange(45, 60), seed=5)]
        runs.append(fit_regressors(jobs, targets, settings))
    (memory_state, memory_score, memory_epoch), (file_state, file_score, file_epoch) = [
        run[0] for run in runs
    ]
    assert file_epoch == memory_epoch and file_score == memory_score
    for key, value in memory_state.items():
        torch.testing.assert_close(file_state[key], value, rtol=0, atol=0)
    file.close()


SETTINGS = TrainingSettings(
    outer_folds=3, inner_folds=2, max_epochs=40, patience=10, lr=1e-3, latent_dim=8,
    ae_epochs=3, regressor_tiles=20, batch_slides=4,
)  # fmt: skip


def _spy_on_regressors(monkeypatch, fail: bool = False) -> list[list[Any]]:
    """Record, for each call of fit_regressors, each job's latent tiles (and whether their
    file exists then); raise CancelledError in the second call when ``fail``."""
    calls: list[list[Any]] = []
    real = crossval.fit_regressors

    def spy(jobs: list[RegressorJob], *args: Any, **kwargs: Any) -> Any:
        tiles = [job.latents.tiles for job in jobs]
        calls.append([(t, t.path.exists() if isinstance(t, LatentFile) else None) for t in tiles])
        if fail and len(calls) == 2:
            raise CancelledError("training was cancelled")
        return real(jobs, *args, **kwargs)

    monkeypatch.setattr(crossval, "fit_regressors", spy)
    return calls


def test_a_large_cohort_trains_each_fit_on_latents_in_a_file_removed_after(monkeypatch):
    """Above the lockstep budget, every fit's regressors train alone, from a file that
    exists while they train and is gone afterwards; they still learn (R > 0.8)."""
    monkeypatch.setattr(crossval, "_LOCKSTEP_BYTES", 1)  # this cohort counts as large
    calls = _spy_on_regressors(monkeypatch)
    source, targets = _source(30, 60, 16, seed=2)
    cv = cross_validate(
        source, targets, np.arange(30).astype(str), ["a", "b"], SETTINGS, False, None
    )
    assert len(calls) == SETTINGS.outer_folds + 1  # one fit at a time
    files = {id(t): t for call in calls for t, _ in call}
    assert len(files) == SETTINGS.outer_folds + 1  # a file per fit
    for call in calls:
        for tiles, existed in call:
            assert isinstance(tiles, LatentFile) and existed
            assert tiles.shape == (30, 20, 8)
    assert not any(t.path.exists() for t in files.values())
    assert (cv.metrics["pearson_r"] > 0.8).all(), cv.metrics


def test_a_small_cohort_keeps_its_latents_in_memory_and_trains_every_fit_together(monkeypatch):
    calls = _spy_on_regressors(monkeypatch)
    source, targets = _source(30, 60, 16, seed=2)
    cross_validate(source, targets, np.arange(30).astype(str), ["a", "b"], SETTINGS, False, None)
    assert len(calls) == 1 and all(isinstance(t, torch.Tensor) for t, _ in calls[0])


def test_cancelled_training_leaves_no_latent_file(monkeypatch):
    monkeypatch.setattr(crossval, "_LOCKSTEP_BYTES", 1)
    calls = _spy_on_regressors(monkeypatch, fail=True)
    source, targets = _source(30, 60, 16, seed=2)
    with pytest.raises(CancelledError):
        cross_validate(
            source, targets, np.arange(30).astype(str), ["a", "b"], SETTINGS, False, None
        )
    assert len(calls) == 2
    assert not any(t.path.exists() for call in calls for t, _ in call)


def test_latents_moved_to_a_device_keep_spot_means_shared_and_files_on_disk(tmp_path):
    spots = Latents.from_means(torch.randn(5, 4)).to(torch.device("cpu"))
    assert spots.single and spots.tiles.data_ptr() == spots.means.data_ptr()
    assert spots.counts.device == spots.means.device and spots.counts.tolist() == [1] * 5
    file = LatentFile(tmp_path / "l.bin", (5, 3, 4), torch.float16)
    moved = Latents(file, torch.ones(5, dtype=torch.int64), torch.zeros(5, 4), False).to("cpu")
    assert moved.tiles is file  # a batch's rows move when read, never the file
    file.close()


def test_a_full_disk_is_one_clear_error_naming_the_file_and_leaves_nothing(tmp_path):
    from napari_deeppt.errors import OutputError

    with pytest.raises(OutputError, match=r"cannot write training's scratch file .*TMPDIR"):
        LatentFile(tmp_path / "missing-folder" / "l.bin", (2, 3, 4), torch.float16)
    file = LatentFile(tmp_path / "l.bin", (2, 3, 4), torch.float16)

    class _FullDisk:
        def seek(self, offset):
            pass

        def write(self, data):
            raise OSError(28, "No space left on device")

    file._file, real = _FullDisk(), file._file
    with pytest.raises(OutputError, match=r"l\.bin.*No space left.*TMPDIR"):
        file.write(0, 0, torch.ones(3, 4))
    file._file = real
    file.close()
    assert list(tmp_path.iterdir()) == []
