"""Regressors trained in lockstep train each model as alone (issue 13, item 2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_deeppt.errors import CancelledError
from napari_deeppt.model import regressors
from napari_deeppt.model.latents import Latents
from napari_deeppt.model.metrics import pearson_columns, validation_r
from napari_deeppt.model.nn import MLPRegression
from napari_deeppt.model.regressors import RegressorJob, fit_regressors
from napari_deeppt.model.settings import TrainingSettings

DIM, GENES = 16, 4


def _latents(n: int, seed: int, tiles: int = 1, dtype: torch.dtype = torch.float32) -> Latents:
    """Random latents: one tile per sample, or up to ``tiles`` (1..tiles kept) per sample."""
    generator = torch.Generator().manual_seed(seed)
    if tiles == 1:
        return Latents.from_means(torch.randn(n, DIM, generator=generator))
    counts = torch.randint(1, tiles + 1, (n,), generator=generator)
    padded = torch.randn(n, tiles, DIM, generator=generator)
    padded *= (torch.arange(tiles)[None, :] < counts[:, None])[..., None]
    means = padded.sum(dim=1) / counts[:, None]
    return Latents(padded.to(dtype), counts, means, False)


def _linear_targets(means: torch.Tensor, seed: int, noise: float = 0.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(DIM, GENES, generator=generator)
    return means @ weights + noise * torch.randn(len(means), GENES, generator=generator) + 3.0


def _reference(job: RegressorJob, targets: torch.Tensor, settings: TrainingSettings) -> tuple:
    """The one-regressor loop the lockstep replaces, without dropout, with torch's Adam."""
    latents = job.latents
    torch.manual_seed(job.seed)
    rng = np.random.default_rng(job.seed)
    model = MLPRegression(
        GENES, in_dim=DIM, dropout=0.0, output_bias=targets[job.train_idx].mean(dim=0)
    )
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr, foreach=True)
    best_r, best_state, best_epoch, waited = -np.inf, None, 0, 0
    for epoch in range(settings.max_epochs):
        model.train()
        order = rng.permutation(job.train_idx)
        for start in range(0, len(order), settings.batch_slides):
            batch = order[start : start + settings.batch_slides]
            preds = [
                model(latents.tiles[i, : latents.counts[i]].float()).mean(dim=0) for i in batch
            ]
            loss = torch.nn.functional.mse_loss(torch.stack(preds), targets[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        model.eval()
        with torch.no_grad():
            pred = model(latents.means[job.val_idx]).numpy()
        r = validation_r(pred, targets[job.val_idx].numpy(), job.val_sections)
        r = -np.inf if np.isnan(r) else float(r)
        if r > best_r or best_state is None:
            best_r, best_epoch, waited = r, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            waited += 1
            if waited >= settings.patience:
                break
    return best_state, best_r, best_epoch


@pytest.mark.parametrize("tiles", [1, 5])
def test_each_lockstep_model_trains_as_torch_adam_trains_it_alone(tiles):
    """Two jobs of different latents and training sizes (5 and 9 batches an epoch): the
    smaller one has no batch in the last steps of each epoch and must be left untouched
    then, its Adam steps counted alone."""
    first, second = _latents(90, seed=1, tiles=tiles), _latents(90, seed=2, tiles=tiles)
    targets = _linear_targets(first.means, seed=3, noise=0.5)
    jobs = [
        RegressorJob(first, np.arange(0, 37), np.arange(80, 90), seed=11),
        RegressorJob(second, np.arange(0, 70)[::-1].copy(), np.arange(80, 90), seed=12),
    ]
    settings = TrainingSettings(max_epochs=3, patience=99, lr=1e-2, batch_slides=8, latent_dim=DIM)
    got = fit_regressors(jobs, targets, settings, dropout=0.0)
    for job, (state, score, epoch) in zip(jobs, got):
        want_state, want_score, want_epoch = _reference(job, targets, settings)
        assert list(state) == ["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"]
        assert epoch == want_epoch and score == pytest.approx(want_score, abs=1e-5)
        for key, value in state.items():
            assert value.dtype == torch.float32 and value.device.type == "cpu"
            assert value.is_contiguous()
            torch.testing.assert_close(value, want_state[key], rtol=1e-5, atol=1e-5)
    # they trained: far from a fresh model of the same seed
    torch.manual_seed(11)
    fresh = MLPRegression(GENES, in_dim=DIM).state_dict()["net.0.weight"]
    assert (got[0][0]["net.0.weight"] - fresh).abs().max() > 1e-2


def test_a_job_stops_alone_at_its_best_epoch_while_another_trains_on():
    """Job A validates on samples whose truth is the negative of what it learns: its R only
    falls, so its best epoch is the first and it stops ``patience`` epochs later. Job B
    (other samples) keeps improving; A's returned state is its first epoch's, as trained
    alone for one epoch."""
    latents = _latents(120, seed=4)
    targets = _linear_targets(latents.means, seed=5)
    targets[40:50] = 6.0 - targets[40:50]  # A's validation: the learnt map reversed
    a = RegressorJob(latents, np.arange(0, 40), np.arange(40, 50), seed=21)
    b = RegressorJob(latents, np.arange(50, 110), np.arange(110, 120), seed=22)
    settings = TrainingSettings(max_epochs=15, patience=3, lr=3e-3, batch_slides=8, latent_dim=DIM)
    (state_a, score_a, epoch_a), (_, score_b, epoch_b) = fit_regressors(
        [a, b], targets, settings, dropout=0.0
    )
    assert epoch_a == 0
    assert epoch_b > epoch_a + settings.patience and score_b > 0.9
    epochs = []
    fit_regressors([a], targets, settings, cancel=lambda: epochs.append(1), dropout=0.0)
    assert len(epochs) == 1 + settings.patience  # alone: stops once patience runs out
    one_epoch = TrainingSettings(max_epochs=1, lr=3e-3, batch_slides=8, latent_dim=DIM)
    (snapshot, score, _), _ = fit_regressors([a, b], targets, one_epoch, dropout=0.0)
    assert score_a == pytest.approx(score)
    for key, value in state_a.items():
        torch.testing.assert_close(value, snapshot[key], rtol=1e-6, atol=1e-6)
    model = MLPRegression(GENES, in_dim=DIM)
    model.load_state_dict(state_a)
    with torch.no_grad():
        pred = model.eval()(latents.means[a.val_idx]).numpy()
    assert validation_r(pred, targets[a.val_idx].numpy()) == pytest.approx(score_a, abs=1e-6)


@pytest.mark.parametrize(
    ("tiles", "dtype"), [(1, torch.float32), (8, torch.float32), (8, torch.float16)]
)
def test_linear_targets_are_learnt_with_dropout(tiles, dtype):
    """Known answer: targets linear in the mean latent; three jobs (one per inner fold,
    the second on other latents), held-out R over 0.9 for every job, spots and bulk."""
    own = _latents(260, seed=6, tiles=tiles, dtype=dtype)
    other = Latents(*(t.clone() for t in own[:3]), own.single)  # the same, another object
    targets = _linear_targets(own.means, seed=8, noise=0.1)
    pool, test = np.arange(200), np.arange(200, 260)
    folds = np.array_split(pool, 3)
    sections = np.repeat([0, 1], 100)
    jobs = [
        RegressorJob([own, other, own][k], np.setdiff1d(pool, fold), fold, 30 + k, sections[fold])
        for k, fold in enumerate(folds)
    ]
    settings = TrainingSettings(max_epochs=40, patience=5, lr=3e-3, batch_slides=16, latent_dim=DIM)
    results = fit_regressors(jobs, targets, settings)
    for state, score, _ in results:
        model = MLPRegression(GENES, in_dim=DIM)
        model.load_state_dict(state)
        with torch.no_grad():
            pred = model.eval()(own.means[test]).numpy()
        assert np.nanmean(pearson_columns(pred, targets[test].numpy())) > 0.9
        assert score > 0.9


def test_the_same_jobs_give_the_same_states_whatever_the_global_seed():
    latents = _latents(80, seed=9, tiles=4)
    targets = _linear_targets(latents.means, seed=10, noise=0.3)
    jobs = [
        RegressorJob(latents, np.arange(0, 60), np.arange(60, 80), seed=1),
        RegressorJob(latents, np.arange(20, 80), np.arange(0, 2), seed=2),  # scored by -loss
    ]
    settings = TrainingSettings(max_epochs=4, patience=2, lr=1e-3, batch_slides=16, latent_dim=DIM)
    torch.manual_seed(123)
    first = fit_regressors(jobs, targets, settings)
    torch.manual_seed(456)
    second = fit_regressors(jobs, targets, settings)
    for (state_1, score_1, epoch_1), (state_2, score_2, epoch_2) in zip(first, second):
        assert (score_1, epoch_1) == (score_2, epoch_2)
        assert all(torch.equal(state_1[key], state_2[key]) for key in state_1)
    assert first[1][1] < 0  # minus a training loss
    # and dropout is applied: without it the states differ
    without = fit_regressors(jobs, targets, settings, dropout=0.0)
    assert not torch.equal(without[0][0]["net.0.weight"], first[0][0]["net.0.weight"])


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_lockstep_groups_change_nothing(monkeypatch, dropout):
    """Five jobs (three latents, four training sizes) in one lockstep group or in five
    groups of one: the same models, each returned in its job's place — with dropout too,
    as each model draws its own masks (the CPU picks the group size for speed alone)."""
    latents = [_latents(100, seed=s, tiles=3) for s in (13, 14, 15)]
    targets = _linear_targets(latents[0].means, seed=16, noise=0.5)
    jobs = [
        RegressorJob(latents[k % 3], np.arange(size), np.arange(80, 100), seed=40 + k)
        for k, size in enumerate([30, 75, 50, 75, 41])
    ]
    settings = TrainingSettings(max_epochs=6, patience=2, lr=3e-3, batch_slides=8, latent_dim=DIM)
    runs = []
    for size in (5, 1):
        monkeypatch.setattr(regressors, "group_size", lambda *args, size=size: size)
        assert [len(g) for g in regressors._groups(jobs, GENES, settings)] == [size] * (5 // size)
        runs.append(fit_regressors(jobs, targets, settings, dropout=dropout))
    for (state_1, score_1, epoch_1), (state_2, score_2, epoch_2) in zip(*runs, strict=True):
        assert epoch_1 == epoch_2 and score_1 == pytest.approx(score_2, abs=1e-5)
        for key in state_1:
            torch.testing.assert_close(state_1[key], state_2[key], rtol=1e-5, atol=1e-5)


def test_cpu_groups_fit_a_cache_and_a_gpu_takes_every_job():
    from napari_deeppt.model import lockstep

    cpu, size = torch.device("cpu"), lockstep.model_bytes(50, 512)
    assert size == 16 * (512 * 512 + 512 + 512 * 50 + 50)
    assert lockstep.group_size(24, 50, 512, cpu) == lockstep._CACHE_BYTES // size == 4
    assert lockstep.group_size(3, 50, 512, cpu) == 3
    assert lockstep.group_size(24, 20000, 512, cpu) == 1  # a huge panel: one at a time
    assert lockstep.group_size(24, 50, 512, torch.device("meta")) == 24  # not a CPU


def test_a_batch_keeps_units_and_weighs_tiles_as_torch_dropout_and_the_mean_do():
    latents = _latents(40, seed=17, tiles=6)
    job = RegressorJob(latents, np.arange(40), np.arange(0), seed=0)
    data = regressors._pool_data([job], [0])
    rows = torch.arange(32).reshape(2, 16)
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]  # a device's generators
    batch = regressors._batch(data, rows, 512, 0.2, gens)
    assert batch.keep.shape == (2, 16 * 6, 512)
    assert set(batch.keep.unique().tolist()) == {0.0, 1.25}  # kept units scaled 1 / (1 - p)
    assert (batch.keep == 0).float().mean().item() == pytest.approx(0.2, abs=0.01)
    pool = batch.pool.reshape(32, 6)
    counts = latents.counts[:32]
    torch.testing.assert_close(pool.sum(dim=1), torch.ones(32))
    assert ((pool > 0).sum(dim=1) == counts).all()
    torch.testing.assert_close(batch.x.reshape(32, 6, DIM), latents.tiles[:32].float())
    assert regressors._batch(data, rows, 512, 0.0, None).keep is None


def test_cpu_dropout_masks_come_from_numpy_keep_one_unit_in_1_25_and_repeat_by_seed(
    monkeypatch,
):
    """On the CPU each model's masks are drawn by numpy's PCG64 (torch's CPU generator draws
    one number at a time: twice as slow, a tenth of a bulk run); they still keep a unit with
    probability 0.8, scale it by 1.25 and repeat exactly for the same seed."""
    latents = _latents(40, seed=17, tiles=6)
    data = regressors._pool_data([RegressorJob(latents, np.arange(40), np.arange(0), 0)], [0])
    rows = torch.arange(32).reshape(2, 16)
    gen = regressors._dropout_generator(7, torch.device("cpu"))
    assert isinstance(gen, np.random.Generator)
    first = regressors._batch(data, rows, 512, 0.2, [gen, np.random.default_rng(9)]).keep
    again = regressors._batch(data, rows, 512, 0.2, [np.random.default_rng(s) for s in (7, 9)])
    other = regressors._batch(data, rows, 512, 0.2, [np.random.default_rng(s) for s in (8, 9)])
    assert first.dtype == torch.float32 and first.shape == (2, 16 * 6, 512)
    assert set(first.unique().tolist()) == {0.0, 1.25}
    assert (first == 0).float().mean().item() == pytest.approx(0.2, abs=0.01)
    assert torch.equal(first, again.keep)
    assert not torch.equal(first[0], other.keep[0])  # each model's block: its own generator
    assert torch.equal(first[1], other.keep[1])
    drawn_by = []
    real = regressors._uniform

    def uniform(shape, gens, device):
        drawn_by.extend(type(gen) for gen in gens)
        return real(shape, gens, device)

    monkeypatch.setattr(regressors, "_uniform", uniform)  # and training draws them so
    settings = TrainingSettings(max_epochs=1, patience=1, batch_slides=16, latent_dim=DIM)
    fit_regressors([RegressorJob(latents, np.arange(32), np.arange(32, 40), 0)],
                   _linear_targets(latents.means, seed=1), settings)  # fmt: skip
    assert drawn_by and set(drawn_by) == {np.random.Generator}


def test_cancel_and_bad_jobs_are_refused():
    latents = _latents(20, seed=11)
    targets = _linear_targets(latents.means, seed=12)
    job = RegressorJob(latents, np.arange(10), np.arange(10, 20), seed=0)
    settings = TrainingSettings(max_epochs=2, latent_dim=DIM)
    with pytest.raises(CancelledError):
        fit_regressors([job], targets, settings, cancel=lambda: True)
    with pytest.raises(ValueError, match="no training samples"):
        fit_regressors([RegressorJob(latents, np.arange(0), np.arange(5), 0)], targets, settings)
    assert fit_regressors([], targets, settings) == []
