"""Failure modes of the command line and cohort runs, and the guarantee for each."""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import quick_train_args
from napari_deeppt.cli import main
from napari_deeppt.cohort import run_cohort
from napari_deeppt.samples import demo_bundle
from napari_deeppt.testing import write_synthetic_cohort


@pytest.fixture(scope="module")
def bundle() -> Path:
    return demo_bundle(progress=False)


@pytest.fixture(scope="module")
def other_bundle(bundle, tmp_path_factory) -> Path:
    """A valid bundle that predicts differently: every ensemble member's weights scaled."""
    from napari_deeppt.model.bundle import ModelBundle

    model = ModelBundle.load(bundle)
    for state in model.ensemble:
        for name, value in state.items():
            if value.is_floating_point():
                state[name] = value * 0.5
    path = tmp_path_factory.mktemp("other") / "other.deeppt"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return write_synthetic_cohort(tmp_path_factory.mktemp("cohort"), n_slides=3, seed=11)


def _predict_args(slides, bundle, out, *extra):
    return [
        "predict",
        *map(str, slides),
        "--model",
        str(bundle),
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), err
    assert "Traceback" not in err
    return lines[-1]


# -- outputs: two inputs never write one output; nothing half-written ---------------------


def test_two_slides_with_one_file_name_are_refused_before_any_work(
    tmp_path, capsys, cohort, bundle
):
    """Slides that would share an output name are refused before anything is read or written."""
    first = tmp_path / "a" / "x.tif"
    second = tmp_path / "b" / "x.tif"
    for target, source in ((first, cohort.slides[0].path), (second, cohort.slides[1].path)):
        target.parent.mkdir()
        shutil.copy(source, target)
    out = tmp_path / "out"
    code = main(_predict_args([first, second], bundle, out, "--overwrite"))
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2
    assert str(first) in line and str(second) in line and "x." in line
    assert not out.exists() or not any(out.iterdir())


def test_an_output_folder_that_cannot_be_made_is_one_line(tmp_path, capsys, cohort, bundle):
    """An --out under a file is a one-line error naming the folder, exit 2."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    code = main(_predict_args([cohort.slides[0].path], bundle, afile / "sub"))
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and str(afile) in line


def test_a_full_disk_leaves_the_old_outputs_whole_and_a_rerun_works(
    tmp_path, capsys, cohort, bundle, other_bundle, monkeypatch
):
    """A write that fails (ENOSPC) keeps every output of the slide as it was; the rerun works."""
    import napari_deeppt.cli.predict as predict_command

    out = tmp_path / "out"
    slide = cohort.slides[0].path
    assert main(_predict_args([slide], bundle, out)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()

    def full_disk(_slide, _prediction, _gene, path, overwrite=False):
        Path(path).write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(predict_command, "write_expression_png", full_disk)
    code = main(_predict_args([slide], other_bundle, out, "--overwrite"))
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and "no space left" in line.lower()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # all old, none partial
    monkeypatch.undo()
    assert main(_predict_args([slide], bundle, out, "--overwrite")) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(before)


def test_a_bad_slide_among_several_is_reported_and_the_others_run(tmp_path, capsys, cohort, bundle):
    """A slide that fails is named; the other slides are written; a summary and exit 1 follow."""
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00" + b"\xff" * 64)
    out = tmp_path / "out"
    slides = [cohort.slides[0].path, bad, cohort.slides[1].path]
    code = main(_predict_args(slides, bundle, out))
    err = capsys.readouterr().err
    assert code == 1
    assert "broken.tif" in err and "Traceback" not in err
    assert "1 of 3 slides failed" in err
    for slide in (cohort.slides[0].path, cohort.slides[1].path):
        assert (out / f"{slide.stem}.expression.csv").exists()


def test_warnings_reach_the_user_as_clean_lines(tmp_path, capsys, bundle):
    """A blank slide's NoTissueWarning is one 'warning:' line, never a source line."""
    from napari_deeppt.testing import SyntheticSlide, write_synthetic_slide

    blank = write_synthetic_slide(
        tmp_path / "blank.svs", SyntheticSlide(1024, 1024, 1.0), level_factors=(4,)
    )
    code = main(_predict_args([blank.path], bundle, tmp_path / "out"))
    err = capsys.readouterr().err
    assert code in (1, 2)
    assert "warnings.warn" not in err and "NoTissueWarning" not in err
    assert any(line.startswith("warning: ") and "tissue" in line for line in err.splitlines())


# -- cohort runs: resume checks what made each result ------------------------------------


def _manifest(tmp_path, cohort, slides=None, ids=None) -> Path:
    slides = slides or [s.path for s in cohort.slides]
    ids = ids or [f"S{i}" for i in range(len(slides))]
    path = tmp_path / "manifest.csv"
    pd.DataFrame({"slide": [str(s) for s in slides], "sample_id": ids}).to_csv(path, index=False)
    return path


def test_resume_with_another_bundle_recomputes_every_slide(tmp_path, cohort, bundle, other_bundle):
    """A resumed run never mixes two models: results of another bundle are recomputed."""
    manifest = _manifest(tmp_path, cohort)
    out = tmp_path / "run"
    first = run_cohort(manifest, bundle, out, scheduler="serial", progress=False)
    fresh = run_cohort(
        manifest, other_bundle, tmp_path / "fresh", scheduler="serial", progress=False
    )
    resumed = run_cohort(manifest, other_bundle, out, scheduler="serial", progress=False)
    assert (resumed.report["status"] == "ok").all(), resumed.report
    assert "another model" in " ".join(resumed.report["note"])
    pd.testing.assert_frame_equal(resumed.expression, fresh.expression)
    assert not first.expression.equals(resumed.expression)


def test_resume_reuses_matching_results_and_keeps_their_tile_counts(tmp_path, cohort, bundle):
    """Results made by the same bundle, slide and settings are reused and say so, tiles kept."""
    manifest = _manifest(tmp_path, cohort)
    out = tmp_path / "run"
    first = run_cohort(manifest, bundle, out, scheduler="serial", progress=False)
    again = run_cohort(manifest, bundle, out, scheduler="serial", progress=False)
    assert (again.report["status"] == "reused").all(), again.report
    assert list(again.report["n_tiles"]) == list(first.report["n_tiles"])
    assert (again.report["n_tiles"] > 0).all()
    pd.testing.assert_frame_equal(again.expression, first.expression)


def test_resume_with_another_slide_under_a_sample_id_recomputes_it(tmp_path, cohort, bundle):
    """A sample id that now names another slide is recomputed, the others reused."""
    slides = [s.path for s in cohort.slides]
    out = tmp_path / "run"
    run_cohort(
        _manifest(tmp_path, cohort, slides[:2]), bundle, out, scheduler="serial", progress=False
    )
    swapped = _manifest(tmp_path, cohort, [slides[0], slides[2]])
    resumed = run_cohort(swapped, bundle, out, scheduler="serial", progress=False)
    status = resumed.report.set_index("sample_id")["status"]
    assert status["S0"] == "reused" and status["S1"] == "ok"
    fresh = run_cohort(swapped, bundle, tmp_path / "fresh", scheduler="serial", progress=False)
    pd.testing.assert_frame_equal(resumed.expression, fresh.expression)


def test_resume_with_other_settings_recomputes(tmp_path, cohort, bundle):
    """Regions of interest added to the manifest (a setting that changes the result) make the
    earlier whole-tissue results stale."""
    manifest = _manifest(tmp_path, cohort)
    out = tmp_path / "run"
    run_cohort(manifest, bundle, out, scheduler="serial", progress=False)
    ring = [[0, 0], [600, 0], [600, 1024], [0, 1024], [0, 0]]
    (tmp_path / "left.geojson").write_text(
        json.dumps(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {},
            }
        )
    )
    table = pd.read_csv(manifest)
    table["roi"] = str(tmp_path / "left.geojson")
    table.to_csv(manifest, index=False)
    again = run_cohort(manifest, bundle, out, scheduler="serial", progress=False)
    assert (again.report["status"] == "ok").all(), again.report
    fresh = run_cohort(manifest, bundle, tmp_path / "fresh", scheduler="serial", progress=False)
    pd.testing.assert_frame_equal(again.expression, fresh.expression)


def test_manifest_sample_ids_cannot_leave_the_output_folder(tmp_path, cohort, bundle):
    """A sample id like ../../x is refused before any slide is read; nothing is written."""
    from napari_deeppt.errors import DeepPTError

    out = tmp_path / "deep" / "er" / "run"
    manifest = _manifest(tmp_path, cohort, [cohort.slides[0].path], ["../../x"])
    with pytest.raises(DeepPTError, match=r"\.\./\.\./x"):
        run_cohort(manifest, bundle, out, scheduler="serial", progress=False)
    assert not list(tmp_path.glob("deep/**/*.csv")) and not (tmp_path / "deep" / "x").exists()


def test_sample_ids_that_differ_only_in_case_are_refused(tmp_path, cohort, bundle):
    """Two sample ids that one file system would store as one file are refused."""
    from napari_deeppt.errors import DeepPTError

    manifest = _manifest(tmp_path, cohort, [s.path for s in cohort.slides[:2]], ["Ab", "aB"])
    with pytest.raises(DeepPTError, match="Ab"):
        run_cohort(manifest, bundle, tmp_path / "run", scheduler="serial", progress=False)


def test_a_manifest_table_is_checked_as_a_manifest_file_is(tmp_path, cohort, bundle):
    """A manifest given as a DataFrame that lists one sample id twice (two slides, one set of
    outputs), lacks ids or lacks a column is refused before any slide is read, in one line,
    as a manifest file is (missing ids never become the sample "nan")."""
    import pandas as pd

    from napari_deeppt.errors import DeepPTError

    slides = [str(s.path) for s in cohort.slides[:2]]
    cases = {
        "sample_id.s. .'s1'. are listed more than once": {"sample_id": ["s1", "s1"]},
        r"row\(s\) \['1'\] have no sample_id": {"sample_id": ["s1", None]},
        r"row\(s\) \['0', '1'\] have no sample_id": {"sample_id": [float("nan")] * 2},
        r"lacks column\(s\) \['sample_id'\]": {"id": ["s1", "s2"]},
    }
    for message, columns in cases.items():
        table = pd.DataFrame({"slide": slides, **columns})
        with pytest.raises(DeepPTError, match=message) as info:
            run_cohort(table, bundle, tmp_path / "run", scheduler="serial", progress=False)
        assert "\n" not in str(info.value)
    twice = pd.DataFrame([[slides[0], slides[1], "s1"]], columns=["slide", "slide", "sample_id"])
    with pytest.raises(DeepPTError, match=r"column\(s\) \['slide'\] more than once"):
        run_cohort(twice, bundle, tmp_path / "run", scheduler="serial", progress=False)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_run_checks_the_bundle_and_weights_before_any_slide(
    tmp_path, capsys, cohort, bundle, monkeypatch
):
    """deeppt run with unusable weights stops in the driver, once, before scheduling slides."""
    import napari_deeppt.cohort.run as cohort_run
    from napari_deeppt.model.bundle import ModelBundle

    model = ModelBundle.load(bundle)
    model.feature = {**model.feature, "extractor": "resnet50", "weights_hash": "0123"}
    resnet = tmp_path / "resnet.deeppt"
    model.save(resnet)
    manifest = _manifest(tmp_path, cohort)
    weights = tmp_path / "w.pth"
    weights.write_bytes(os.urandom(256))
    out = tmp_path / "run"
    calls = []
    monkeypatch.setattr(cohort_run, "process_slide", lambda *a, **k: calls.append(a))
    args = ["run", str(manifest), "--model", str(resnet), "--out", str(out), "--quiet"]
    code = main([*args, "--weights", str(weights), "--scheduler", "serial"])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and "w.pth" in line and "weights_only" not in line
    assert calls == [] and not list(out.glob("slides/*"))
    (tmp_path / "bad.deeppt").write_bytes(os.urandom(300))
    args[3] = str(tmp_path / "bad.deeppt")
    assert main([*args, "--scheduler", "serial"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "bad.deeppt" in line and "weights_only" not in line and calls == []


def test_stale_partial_files_are_cleaned_but_live_ones_kept(tmp_path):
    """Partial outputs of a dead process are removed; a live process's partials are kept."""
    import socket
    import subprocess
    import sys

    from napari_deeppt.io import partial_name, remove_stale_partials

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    stale = tmp_path / partial_name("abc.zarr", host=host, pid=dead.pid)
    live = tmp_path / partial_name("def.zarr", host=host, pid=os.getpid())
    foreign = tmp_path / partial_name("ghi.zarr", host="another-host", pid=dead.pid)
    for folder in (stale, live, foreign):
        folder.mkdir()
        (folder / "chunk").write_bytes(b"x")
    removed = remove_stale_partials(tmp_path)
    assert removed == [stale]
    assert not stale.exists() and live.exists() and foreign.exists()
    old = time.time() - 3 * 24 * 3600
    os.utime(foreign, (old, old))
    assert remove_stale_partials(tmp_path) == [foreign]


# -- found by a bad-input probe -------------------------------------------------------------


def test_a_slide_that_fails_on_rerun_drops_its_old_result_from_the_cohort(tmp_path, cohort, bundle):
    """A sample whose recomputation fails is not in the cohort table with its old values."""
    manifest = _manifest(tmp_path, cohort, [s.path for s in cohort.slides[:2]])
    out = tmp_path / "run"
    run_cohort(manifest, bundle, out, scheduler="serial", progress=False)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a slide")
    broken = _manifest(tmp_path, cohort, [notes, cohort.slides[1].path])
    again = run_cohort(broken, bundle, out, scheduler="serial", progress=False)
    assert again.report.set_index("sample_id").loc["S0", "status"] == "error"
    assert list(again.expression.index) == ["S1"]
    table = pd.read_csv(out / "cohort_expression.csv", index_col=0)
    assert list(table.index) == ["S1"]


def test_a_missing_slide_in_a_run_manifest_is_a_report_row(tmp_path, cohort, bundle):
    """A manifest slide that does not exist becomes an error row; the others still run."""
    manifest = _manifest(tmp_path, cohort, [tmp_path / "missing.tif", cohort.slides[0].path])
    result = run_cohort(manifest, bundle, tmp_path / "run", scheduler="serial", progress=False)
    status = result.report.set_index("sample_id")["status"]
    assert status["S0"] == "error" and status["S1"] == "ok"
    assert "missing.tif" in result.report.set_index("sample_id").loc["S0", "error"]


def test_a_manifest_without_slides_is_refused(tmp_path, bundle):
    """A manifest with a header and no rows is an error, not an empty successful run."""
    from napari_deeppt.errors import DeepPTError

    path = tmp_path / "empty.csv"
    path.write_text("slide,sample_id\n")
    with pytest.raises(DeepPTError, match="no slides"):
        run_cohort(path, bundle, tmp_path / "run", scheduler="serial", progress=False)


def test_manifest_ids_are_read_as_written_and_empty_ones_refused(tmp_path, cohort, bundle):
    """'NA' stays the sample id 'NA' (not NaN); an empty sample_id or patient_id is refused."""
    from napari_deeppt.errors import DeepPTError
    from napari_deeppt.io.tables import read_manifest

    slides = [str(s.path) for s in cohort.slides[:2]]
    path = tmp_path / "m.csv"
    path.write_text(f"slide,sample_id,patient_id\n{slides[0]},NA,P1\n{slides[1]},S2,NA\n")
    table = read_manifest(path)
    assert list(table["sample_id"]) == ["NA", "S2"] and list(table["patient_id"]) == ["P1", "NA"]
    path.write_text(f"slide,sample_id,patient_id\n{slides[0]},S1,\n{slides[1]},S2,P2\n")
    with pytest.raises(DeepPTError, match="patient_id"):
        read_manifest(path)
    path.write_text(f"slide,sample_id\n{slides[0]},\n{slides[1]},S2\n")
    with pytest.raises(DeepPTError, match="sample_id"):
        read_manifest(path, require_patient=False)


def test_a_manifest_saved_with_a_byte_order_mark_reads(tmp_path, cohort):
    """Excel's 'CSV UTF-8' (a BOM before the header) reads like any CSV."""
    from napari_deeppt.io.tables import read_manifest

    path = tmp_path / "bom.csv"
    path.write_bytes(("\ufeffslide,sample_id\n" + f"{cohort.slides[0].path},S0\n").encode())
    assert list(read_manifest(path, require_patient=False)["sample_id"]) == ["S0"]


def test_weights_given_for_an_extractor_without_weights_are_refused(
    tmp_path, capsys, cohort, bundle
):
    """--weights for a model whose extractor uses none is refused once, before any slide."""
    manifest = _manifest(tmp_path, cohort)
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    out = tmp_path / "run"
    code = main(
        [
            "run",
            str(manifest),
            "--model",
            str(bundle),
            "--out",
            str(out),
            "--weights",
            str(weights),
            "--scheduler",
            "serial",
            "--quiet",
        ]
    )
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and "w.pth" in line and "no weights" in line
    assert not list(out.glob("slides/*"))


def test_a_stale_partial_in_an_output_folder_is_removed_by_the_next_command(
    tmp_path, cohort, bundle
):
    """A dead process's partial file in --out (not only in slides/) is cleaned by a rerun."""
    import subprocess
    import sys

    from napari_deeppt.io import partial_name

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    out.mkdir()
    stale = out / (partial_name("cohort_expression.csv", pid=dead.pid) + ".csv")
    stale.write_text("half")
    run_cohort(
        _manifest(tmp_path, cohort, [cohort.slides[0].path]),
        bundle,
        out,
        scheduler="serial",
        progress=False,
    )
    assert not stale.exists()
    tiles_out = tmp_path / "tiles"
    tiles_out.mkdir()
    stale = tiles_out / (partial_name("x.tiles.csv", pid=dead.pid) + ".csv")
    stale.write_text("half")
    assert (
        main(
            [
                "tiles",
                str(cohort.slides[0].path),
                "--out",
                str(tiles_out),
                "--quiet",
                "--tile-px",
                "256",
            ]
        )
        == 0
    )
    assert not stale.exists()


def test_a_refused_command_leaves_no_empty_output_folder(tmp_path, capsys, cohort, bundle):
    """A command refused before any work creates no --out folder."""
    first, second = tmp_path / "a" / "x.tif", tmp_path / "b" / "x.tif"
    for target in (first, second):
        target.parent.mkdir()
        shutil.copy(cohort.slides[0].path, target)
    out = tmp_path / "never"
    assert main(_predict_args([first, second], bundle, out)) == 2
    assert not out.exists()


def test_the_summary_does_not_claim_others_were_written_when_all_failed(tmp_path, capsys, bundle):
    """When every slide fails, the summary says so."""
    bad = [tmp_path / "a.tif", tmp_path / "b.tif"]
    for path in bad:
        path.write_bytes(b"II*\x00" + b"\xff" * 64)
    assert main(_predict_args(bad, bundle, tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert "all 2 slides failed" in err and "the others were written" not in err


def test_a_full_disk_error_names_where_it_was_writing(
    tmp_path, capsys, cohort, bundle, monkeypatch
):
    """An OS error without a file name still names the output folder."""
    import napari_deeppt.cli.predict as predict_command

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(predict_command, "write_expression_png", full_disk)
    out = tmp_path / "out"
    assert main(_predict_args([cohort.slides[0].path], bundle, out)) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(out) in line and "no space left" in line


def test_torch_never_speaks_to_the_user(tmp_path, capsys):
    """Neither training nor a foreign pickle prints torch's own warnings before our line."""
    import pickle

    foreign = tmp_path / "p.deeppt"
    foreign.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    assert main(["info", str(foreign)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "weights_only" not in err and "pickle protocol" not in err
    cohort = write_synthetic_cohort(tmp_path / "c", n_slides=8, size=768, seed=3)
    args = quick_train_args(cohort, tmp_path / "m.deeppt", tmp_path / "cache", epochs=3)
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "requires_grad" not in err and "Triggered internally" not in err, err


def test_a_cache_folder_keeps_its_most_recently_used_entries_and_nothing_else_goes(tmp_path):
    """keep_recent: entries are the files sharing a 32-hex key; the current one is marked
    used and kept; files that are not entries (notes, partials, folders) are never touched."""
    from napari_deeppt.io import keep_recent

    keys = [f"{i:032x}" for i in range(5)]
    now = time.time()
    for age, key in enumerate(reversed(keys)):  # key 0 oldest, key 4 newest
        for suffix in (".pt2", ".json"):
            path = tmp_path / f"{key}{suffix}"
            path.write_text(key)
            os.utime(path, (now - 100 * (age + 1), now - 100 * (age + 1)))
    others = [tmp_path / "notes.txt", tmp_path / f".{keys[1]}.pt2.partial-h-1-0123abcd"]
    for path in others:
        path.write_text("x")
    (tmp_path / f"{'f' * 32}").mkdir()
    removed = keep_recent(tmp_path / f"{keys[0]}.pt2", 3)  # the oldest, used now
    assert sorted(p.name for p in removed) == sorted(
        f"{k}{s}" for k in keys[1:3] for s in (".pt2", ".json")
    )
    left = {p.name for p in tmp_path.iterdir()}
    assert {f"{k}.pt2" for k in (keys[0], keys[3], keys[4])} <= left
    assert {p.name for p in others} | {"f" * 32} <= left
    assert keep_recent(tmp_path / f"{keys[4]}.pt2", 3) == []  # three entries: nothing to do


def test_overwrite_never_replaces_a_folder_with_a_file(tmp_path, capsys):
    """--overwrite onto an existing folder (a file output) is refused in one line before any
    work, in the CLI and the API: the folder and everything in it stay."""
    from napari_deeppt.io import atomic_outputs, atomic_path

    folder = tmp_path / "outdir"
    (folder / "keep").mkdir(parents=True)
    (folder / "keep" / "f.txt").write_text("mine")
    pd.DataFrame({"A": [1.0, 2.0, 3.0, 4.0]}, index=["s1", "s2", "s3", "s4"]).to_csv(
        tmp_path / "expr.csv"
    )
    pd.DataFrame({"drug": ["X"], "partner": ["A"], "type": ["SL"]}).to_csv(
        tmp_path / "partners.csv", index=False
    )
    args = ["response", str(tmp_path / "expr.csv"), str(tmp_path / "partners.csv")]
    assert main([*args, "--out", str(folder), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {folder}: is a folder; give a file name"
    with pytest.raises(IsADirectoryError), atomic_path(folder, overwrite=True) as tmp:
        raise AssertionError("the block ran")
    store = folder.with_suffix(".zarr")  # a folder output...
    (store / "c").mkdir(parents=True)
    refused = pytest.raises(FileExistsError, match="is a folder; nothing was replaced")
    with refused, atomic_outputs([store], overwrite=True) as (tmp,):
        tmp.write_text("a file")  # ...that a block wrote a file for
    assert (folder / "keep" / "f.txt").read_text() == "mine" and (store / "c").is_dir()
    saved = tmp_path / "features"  # a folder output by its writer's word (FeatureSet.save)
    for run in ("1", "2"):
        with atomic_path(saved, overwrite=True, folder=True) as tmp:
            tmp.mkdir()
            (tmp / "run").write_text(run)
    assert (saved / "run").read_text() == "2"
    shutil.rmtree(saved)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "expr.csv", "outdir", "outdir.zarr", "partners.csv"
    ]  # fmt: skip


def test_trailing_delimiters_never_shift_a_tables_columns(tmp_path):
    """A manifest or spot table whose rows end in a delimiter (a spreadsheet's empty last
    column), or carry R's row names, keeps its columns where the header puts them; a spot
    table's BOM is ignored."""
    from napari_deeppt.io.tables import read_manifest, read_spots
    from napari_deeppt.testing import default_sample_spec, write_synthetic_slide

    slide = write_synthetic_slide(tmp_path / "a.svs", default_sample_spec(512, 512, 0.5)).path
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("slide,sample_id,patient_id\na.svs,s1,p1,\na.svs,s2,p2,\n")
    table = read_manifest(manifest)
    assert table["slide"].tolist() == [str(slide)] * 2
    assert table["sample_id"].tolist() == ["s1", "s2"]
    assert table["patient_id"].tolist() == ["p1", "p2"]
    manifest.write_text("slide,sample_id,patient_id\n1,a.svs,s1,p1\n2,a.svs,s2,p2\n")  # R
    assert read_manifest(manifest)["sample_id"].tolist() == ["s1", "s2"]  # row names dropped
    spots = tmp_path / "spots.csv"
    spots.write_bytes(b"\xef\xbb\xbfspot_id,slide,x,y\nA,a.svs,10,20,\nB,a.svs,30,40,\n")
    table = read_spots(spots)
    assert table["spot_id"].tolist() == ["A", "B"] and table["x"].tolist() == [10, 30]


def test_a_command_its_slide_refuses_leaves_no_output_folder(tmp_path, capsys):
    """A per-slide command whose only slide is missing or refused by its own checks, and a
    cohort run with a scheduler that is no address, leave no --out folder behind (one line
    each); a command that writes keeps its folder."""
    import pandas as pd

    from napari_deeppt.testing import default_sample_spec, write_synthetic_slide

    slide = write_synthetic_slide(tmp_path / "a.svs", default_sample_spec(1024, 1024, 0.5)).path
    for args, message in [
        ([str(tmp_path / "missing.svs")], "no such file or directory"),
        ([str(slide), "--tile-px", "0"], "tile_px=0 must be an integer"),
    ]:
        out = tmp_path / "never"
        assert main(["tiles", *args, "--out", str(out)]) == 2
        assert message in capsys.readouterr().err and not out.exists()
    manifest = pd.DataFrame({"slide": [str(slide)], "sample_id": ["s1"]})
    with pytest.raises(ValueError, match="scheduler must be 'serial', a dask scheduler's"):
        run_cohort(manifest, tmp_path / "no.deeppt", tmp_path / "never", scheduler="nonsense")
    assert not (tmp_path / "never").exists()
    assert main(["tiles", str(slide), "--out", str(tmp_path / "kept")]) == 0
    assert (tmp_path / "kept" / "a.tiles.csv").exists()


def test_an_empty_selection_is_refused_not_taken_as_everything(tmp_path, capsys):
    """An empty --genes-file (or --genes ',') never trains on every gene, --formats '' never
    extracts features to write nothing, --genes with --genes-file is refused, and an --out
    under a file is refused before any work: one line each, exit 2, nothing written."""
    from napari_deeppt.model.inputs import select_genes
    from napari_deeppt.testing import default_sample_spec, write_synthetic_slide

    slide = write_synthetic_slide(tmp_path / "a.svs", default_sample_spec(512, 512, 0.5)).path
    (tmp_path / "m.csv").write_text("slide,sample_id,patient_id\na.svs,s1,p1\n")
    (tmp_path / "e.csv").write_text("sample_id,G0,G1\ns1,1,2\n")
    (tmp_path / "empty.txt").write_text("\n")
    train = ["train", str(tmp_path / "m.csv"), str(tmp_path / "e.csv")]
    out = ["--out", str(tmp_path / "m.deeppt")]
    for extra, message in [
        (["--genes-file", str(tmp_path / "empty.txt")], "empty.txt: names no gene"),
        (["--genes", ","], "--genes: names no gene"),
    ]:
        assert main([*train, *out, *extra]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*train, *out, "--genes", "G0", "--genes-file", str(tmp_path / "empty.txt")])
    assert "not allowed with argument" in capsys.readouterr().err
    assert main([*train, "--out", str(slide / "m.deeppt")]) == 2
    assert "a part of this path is a file" in capsys.readouterr().err
    assert main(["features", str(slide), "--out", str(tmp_path / "f"), "--formats", ""]) == 2
    assert "--formats names no format" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.svs", "e.csv", "empty.txt", "m.csv"]
    table = pd.DataFrame({"G0": [1.0], "G1": [2.0]})
    assert select_genes(table, genes="G1") == ["G1"]  # one gene, not the letters 'G', '1'
