"""Cohort runs on dask.distributed: equal to a serial run, resumable, robust to lost workers."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pandas as pd
import pytest

from napari_deeppt.cohort import run_cohort
from napari_deeppt.samples import demo_bundle
from napari_deeppt.testing import write_synthetic_cohort


@pytest.fixture(scope="module")
def bundle():
    return demo_bundle(progress=False)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    cohort = write_synthetic_cohort(folder, n_slides=8, seed=5)
    table = pd.read_csv(cohort.manifest)
    (folder / "corrupt.tif").write_bytes(b"II*\x00" + b"\xff" * 64)
    table = pd.concat(
        [
            table,
            pd.DataFrame({"slide": ["corrupt.tif"], "sample_id": ["BAD"], "patient_id": ["PX"]}),
        ]
    )
    path = folder / "run.csv"
    table.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def serial(manifest, bundle, tmp_path_factory):
    return run_cohort(
        manifest, bundle, tmp_path_factory.mktemp("serial"), scheduler="serial", progress=False
    )


def test_serial_run_reports_the_corrupt_slide(serial):
    report = serial.report.set_index("sample_id")
    assert report.loc["BAD", "status"] == "error" and "corrupt.tif" in report.loc["BAD", "error"]
    assert (report.drop("BAD")["status"] == "ok").all()
    assert serial.expression.shape == (8, 8)
    assert repr(serial).startswith("CohortResult(8 ok, 1 error; 8 genes; out ")
    assert (serial.out / "run_report.csv").exists()
    assert (serial.out / "cohort_expression.csv").exists()


def test_the_run_report_names_each_slides_feature_store(serial):
    """A cohort run's report is a training manifest's ``features`` column: each ok row
    names the store holding that slide's features (issue 13, item 1)."""
    from napari_deeppt.features.store import open_features

    report = serial.report.set_index("sample_id")
    assert pd.isna(report.loc["BAD", "features"]) or not report.loc["BAD", "features"]
    for sample, row in report.drop("BAD").iterrows():
        features, provenance, _ = open_features(row["features"])
        assert features.shape[0] == row["n_tiles"], sample
        assert provenance["slide_path"].endswith(os.path.basename(row["slide"]))


def test_local_cluster_equals_serial_and_resumes(manifest, bundle, serial, tmp_path):
    result = run_cohort(manifest, bundle, tmp_path, n_workers=2, progress=False)
    pd.testing.assert_frame_equal(result.expression, serial.expression, rtol=1e-6)
    assert result.report.set_index("sample_id").loc["BAD", "status"] == "error"
    again = run_cohort(manifest, bundle, tmp_path, n_workers=2, progress=False)
    statuses = again.report.set_index("sample_id")["status"]
    assert (statuses.drop("BAD") == "reused").all()
    pd.testing.assert_frame_equal(again.expression, serial.expression, rtol=1e-6)


def test_a_killed_worker_is_survived(manifest, bundle, serial, tmp_path):
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True)
    client = Client(cluster)
    try:
        box = {}
        runner = threading.Thread(
            target=lambda: box.setdefault(
                "result", run_cohort(manifest, bundle, tmp_path, scheduler=client, progress=False)
            )
        )
        runner.start()
        deadline = time.time() + 120
        while not list((tmp_path / "slides").glob("S*.expression.csv")):
            assert time.time() < deadline, "no slide finished"
            time.sleep(0.05)
        pids = client.run(os.getpid)
        victim = next(iter(pids.values()))
        os.kill(victim, signal.SIGKILL)  # a real process kill, mid-run
        runner.join(timeout=240)
        assert not runner.is_alive()
    finally:
        client.close()
        cluster.close()
    result = box["result"]
    report = result.report
    assert report["sample_id"].is_unique and len(report) == 9
    pd.testing.assert_frame_equal(result.expression, serial.expression, rtol=1e-6)
    files = sorted(p.name for p in (tmp_path / "slides").iterdir())
    assert files == sorted(
        f"S{i:03d}.{kind}"
        for i in range(8)
        for kind in ("expression.csv", "tiles.h5ad", "run.json")
    )
    assert np.isfinite(result.expression.to_numpy()).all()


def test_run_command_serial(manifest, bundle, tmp_path, capsys):
    from napari_deeppt.cli import main

    command = [
        "run",
        str(manifest),
        "--model",
        str(bundle),
        "--out",
        str(tmp_path),
        "--scheduler",
        "serial",
        "--quiet",
    ]
    code = main(command)
    assert code == 1  # one slide failed, and the exit status says so
    captured = capsys.readouterr()
    assert "9 slides: 8 ok, 1 error" in captured.out
    assert "BAD" in captured.err
    assert main(command) == 1  # rerun: done slides are reused, the bad one still fails
    assert "8 reused" in capsys.readouterr().out


def test_interrupt_leaves_only_complete_results_and_resumes(
    manifest, bundle, serial, tmp_path, monkeypatch
):
    """Ctrl-C in the middle of writing a slide's results: nothing partial is left behind."""
    import anndata

    original = anndata.AnnData.write_h5ad
    calls = {"n": 0}

    def interrupted_write(self, filename, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            with open(filename, "wb") as fh:
                fh.write(b"half a file")
            raise KeyboardInterrupt
        return original(self, filename, *args, **kwargs)

    monkeypatch.setattr(anndata.AnnData, "write_h5ad", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        run_cohort(manifest, bundle, tmp_path, scheduler="serial", progress=False)
    names = sorted(p.name for p in (tmp_path / "slides").iterdir())
    assert names == [
        "S000.expression.csv",
        "S000.run.json",
        "S000.tiles.h5ad",
        "S001.expression.csv",
        "S001.run.json",
        "S001.tiles.h5ad",
    ]
    monkeypatch.undo()
    resumed = run_cohort(manifest, bundle, tmp_path, scheduler="serial", progress=False)
    statuses = resumed.report.set_index("sample_id")["status"]
    assert (statuses[["S000", "S001"]] == "reused").all()
    assert (statuses.drop(["S000", "S001", "BAD"]) == "ok").all()
    pd.testing.assert_frame_equal(resumed.expression, serial.expression, rtol=1e-6)


def test_a_roi_column_restricts_each_slide_to_its_regions(manifest, bundle, serial, tmp_path):
    import json

    from napari_deeppt import open_slide
    from napari_deeppt.errors import ExpressionTableError

    table = pd.read_csv(manifest)
    table = table[table["sample_id"] != "BAD"].head(3).copy()
    table["slide"] = [str(manifest.parent / s) for s in table["slide"]]
    rois = []
    for k, slide in enumerate(table["slide"]):
        if k == 2:
            rois.append("")  # no ROI: the whole tissue
            continue
        w, h = open_slide(slide).dimensions
        ring = [[0, 0], [w // 2, 0], [w // 2, h], [0, h], [0, 0]]
        feature = {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"classification": {"name": "Tumor"}},
        }
        (tmp_path / f"roi{k}.geojson").write_text(json.dumps(feature))
        rois.append(f"roi{k}.geojson")  # relative to the manifest's folder
    table["roi"] = rois
    path = tmp_path / "with_roi.csv"
    table.to_csv(path, index=False)
    result = run_cohort(path, bundle, tmp_path / "out", scheduler="serial", progress=False)
    tiles = result.report.set_index("sample_id")["n_tiles"]
    full = serial.report.set_index("sample_id")["n_tiles"]
    samples = list(table["sample_id"])
    assert (tiles[samples[:2]] < full[samples[:2]]).all()
    assert tiles[samples[2]] == full[samples[2]]
    table.loc[table.index[0], "roi"] = "missing.geojson"
    table.to_csv(path, index=False)
    with pytest.raises(ExpressionTableError, match="roi file"):
        run_cohort(path, bundle, tmp_path / "out2", scheduler="serial", progress=False)


def test_a_named_worker_gets_the_same_gpu_in_every_process():
    """A dask worker named by text (not 0, 1, ...) gets a GPU from a digest of its name that
    every process computes alike: Python's hash() differs between processes, so a worker
    restarted (or a second one) could land on another GPU, two on one."""
    import subprocess
    import sys

    code = (
        "import distributed, torch\n"
        "from napari_deeppt.cohort import tasks\n"
        "torch.cuda.device_count = lambda: 4\n"
        "class W: name = 'gpu-worker-a'\n"
        "distributed.get_worker = lambda: W\n"
        "print(tasks._device_for_worker('auto'), tasks._device_for_worker('cpu'))\n"
    )
    answers = set()
    for seed in ("1", "2", "6"):  # hash() gives GPU 0, 0, 2 for these
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        answers.add(out.stdout.strip())
    assert answers == {"cuda:2 cpu"}  # zlib.crc32(b"gpu-worker-a") % 4 == 2
