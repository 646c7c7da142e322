"""Cohort runs: every slide of a manifest → tissue, tiles, features, predictions, on dask.

One dask task per slide. Each task writes its results under ``<out>/slides/`` through
temporary names and renames, so a slide's results are either complete or absent. Each result
records what made it (:mod:`napari_deeppt.cohort_records`: the bundle's SHA-256, the slide's
identity, the weights, the regions of interest, the napari-deeppt version); a rerun reuses a
result only when all of these match (resume) and recomputes the others, saying why in the
report. A failing slide becomes a row of the run report with its error and never stops the
others, and Ctrl-C (or a lost worker) leaves only complete results.
By default a ``LocalCluster`` sized to the machine runs the tasks (one worker per GPU, each
with a ``GPU`` resource, when GPUs are present); ``scheduler=`` connects to any existing
``dask.distributed`` cluster (dask-jobqueue, Kubernetes) instead.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cohort_records import (
    check_sample_ids,
    expected_record,
    file_sha256,
    read_record,
    record_path,
    stale_reason,
)
from .errors import DeepPTError
from .io import atomic_path, remove_stale_partials
from .progress import ProgressLike, make_progress

__all__ = ["CohortResult", "process_slide", "run_cohort"]

REPORT_COLUMNS = ["sample_id", "slide", "status", "n_tiles", "seconds", "error", "note"]


@dataclass(repr=False)
class CohortResult:
    """What :func:`run_cohort` produced.

    Attributes
    ----------
    expression
        samples × genes slide-level predictions of every slide done (this run or before).
    report
        One row per manifest slide: status (``ok``, ``reused`` = made before by the same
        bundle, slide and settings, ``error``), tiles, seconds, error message, and a note
        (why an earlier result was not reused).
    out
        The output folder.
    """

    expression: Any
    report: Any
    out: Path

    def __repr__(self) -> str:
        counts = self.report["status"].value_counts().to_dict() if len(self.report) else {}
        done = ", ".join(f"{n} {status}" for status, n in counts.items()) or "no slides"
        return f"CohortResult({done}; {self.expression.shape[1]} genes; out {str(self.out)!r})"


def _result_path(out: Path, sample_id: str) -> Path:
    return out / "slides" / f"{sample_id}.expression.csv"


def _device_for_worker(device: str) -> str:
    if device != "auto":
        return device
    try:
        import torch
        from distributed import get_worker

        count = torch.cuda.device_count()
        if count:
            name = str(get_worker().name)
            index = int(name) if name.isdigit() else abs(hash(name))
            return f"cuda:{index % count}"
    except Exception:
        pass
    return "auto"


def process_slide(
    slide: str,
    sample_id: str,
    bundle: str,
    out: str,
    cache_dir: str | None = None,
    weights: str | None = None,
    device: str = "auto",
    roi: str | None = None,
    roi_class: str | None = None,
    record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Predict one slide and write its results atomically; never raises for a bad slide.

    The expression CSV, the tiles' h5ad and ``record`` (what made them, see
    :mod:`napari_deeppt.cohort_records`) are written together: all new, or all as before.
    Returns the slide's run-report row.
    """
    from .cohort_records import record_path
    from .io import atomic_outputs
    from .prediction import predict

    started = time.perf_counter()
    row = {
        "sample_id": sample_id,
        "slide": slide,
        "status": "ok",
        "n_tiles": 0,
        "seconds": 0.0,
        "error": "",
        "roi": roi or "",
    }
    try:
        prediction = predict(
            slide,
            bundle,
            roi=roi,
            roi_class=roi_class if roi else None,
            weights=weights,
            device=_device_for_worker(device),
            cache_dir=cache_dir,
            progress=False,
        )
        row["n_tiles"] = len(prediction.grid)
        row["seconds"] = round(time.perf_counter() - started, 3)
        target = _result_path(Path(out), sample_id)
        written = {
            **(record or {}),
            "n_tiles": row["n_tiles"],
            "seconds": row["seconds"],
            "features": {
                k: prediction.provenance.get("features", {}).get(k)
                for k in ("cache_key", "weights_hash", "device")
            },
        }
        paths = [
            target.with_name(f"{sample_id}.tiles.h5ad"),
            target,
            record_path(Path(out), sample_id),
        ]
        with atomic_outputs(paths, overwrite=True) as (h5ad, csv, json_path):
            prediction.to_h5ad(h5ad, overwrite=True)
            prediction.to_csv(csv, overwrite=True)
            json_path.write_text(json.dumps(written, indent=1, default=str), encoding="utf-8")
    except DeepPTError as exc:
        row.update(status="error", error=str(exc))
    except OSError as exc:  # the output folder: full, read-only...
        from .io import describe_os_error

        row.update(status="error", error=describe_os_error(exc))
    except Exception as exc:  # an unexpected failure: keep the cohort going, report it
        row.update(status="error", error=f"{type(exc).__name__}: {exc}")
        row["traceback"] = traceback.format_exc(limit=5)
    row["seconds"] = round(time.perf_counter() - started, 3)
    return row


def _local_client(n_workers: int | None, threads_per_worker: int | None) -> Any:
    from distributed import Client, LocalCluster

    try:
        import torch

        gpus = torch.cuda.device_count()
    except Exception:
        gpus = 0
    if gpus:
        cluster = LocalCluster(
            n_workers=n_workers or gpus, threads_per_worker=1, resources={"GPU": 1}, processes=True
        )
    else:
        cores = os.cpu_count() or 1
        workers = n_workers or max(1, cores // 2)
        cluster = LocalCluster(
            n_workers=workers, processes=True, threads_per_worker=threads_per_worker or 1
        )
    return Client(cluster)


def run_cohort(
    manifest: str | Path | Any,
    bundle: str | Path,
    out: str | Path,
    *,
    scheduler: str | Any | None = None,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    weights: str | None = None,
    device: str = "auto",
    cache_dir: str | Path | None = None,
    resume: bool = True,
    retries: int = 2,
    roi_class: str | None = None,
    progress: ProgressLike = True,
) -> CohortResult:
    """Predict every slide of a manifest; see the module docstring.

    Parameters
    ----------
    manifest
        CSV (or DataFrame) with ``slide`` and ``sample_id`` columns (``patient_id`` optional;
        ``roi``, optional: a GeoJSON of regions of interest per slide, empty = all tissue).
    bundle
        Model bundle (``.deeppt``).
    out
        Output folder: ``slides/<sample_id>.expression.csv`` and ``.tiles.h5ad`` per slide,
        ``cohort_expression.csv`` (samples × genes) and ``run_report.csv``.
    scheduler
        ``None`` (a LocalCluster sized to the machine), ``"serial"`` (in this process, no
        dask: a reference run), a scheduler address, or a ``distributed.Client``.
    n_workers, threads_per_worker
        LocalCluster size (default: one worker per GPU, else half the cores, 1 thread each).
    weights, device, cache_dir
        As for :func:`~napari_deeppt.prediction.predict`; ``device="auto"`` gives each worker
        its own GPU when there are several.
    resume
        Reuse the results of an earlier run into ``out`` that were made by the same bundle,
        slide, weights and regions (see :mod:`napari_deeppt.cohort_records`); the others are
        recomputed and the report's note says why.
    retries
        Times a slide is retried when its worker dies (not when the slide itself fails).
    roi_class
        Only the ``roi`` files' regions of this class (QuPath's ``"Tumor"``, say).
    progress
        See :mod:`napari_deeppt.progress`.
    """
    out = Path(out)
    table = _read_table(manifest)
    bundle, weights_id = _check_model(bundle, weights)  # once, in the driver, before any slide
    _make_folder(out / "slides")
    rows, todo = _plan(table, out, file_sha256(bundle), weights_id, roi_class, resume)
    args = {
        "bundle": bundle,
        "out": str(out),
        "weights": weights,
        "device": device,
        "cache_dir": None if cache_dir is None else str(cache_dir),
        "roi_class": roi_class,
    }
    remove_stale_partials(out / "slides")  # left by a run that was killed
    tasks = [task for task, _ in todo]
    with make_progress(progress, len(todo), "slides", unit="slide") as bar:
        if scheduler == "serial":
            for task in tasks:
                rows[task["sample_id"]] = process_slide(**task, **args)
                bar.update()
        elif todo:
            cluster = (scheduler, n_workers, threads_per_worker, retries)
            _run_distributed(tasks, args, *cluster, rows, bar)
    for task, note in todo:
        rows[task["sample_id"]]["note"] = note
    remove_stale_partials(out / "slides")
    return _finish(out, table, rows)


def _plan(
    table: Any,
    out: Path,
    bundle_sha256: str,
    weights_id: str,
    roi_class: str | None,
    resume: bool,
) -> tuple[dict[str, dict[str, Any]], list[tuple[dict[str, Any], str]]]:
    """Report rows of the results that can be reused, and the tasks (with a note) to run."""
    rows: dict[str, dict[str, Any]] = {}
    todo = []
    rois = table["roi"] if "roi" in table.columns else [None] * len(table)
    for slide, sample, roi in zip(table["slide"], table["sample_id"], rois, strict=True):
        record = expected_record(str(slide), bundle_sha256, weights_id, roi, roi_class)
        reused, note = _reusable(out, str(sample), record) if resume else (None, "")
        if reused is not None:
            rows[sample] = {**reused, "slide": slide}
        else:
            task = {"slide": str(slide), "sample_id": str(sample), "roi": roi, "record": record}
            todo.append((task, note))
    return rows, todo


def _finish(out: Path, table: Any, rows: dict[str, dict[str, Any]]) -> CohortResult:
    """Write the run report and the cohort table (atomically) in manifest order."""
    import pandas as pd

    report = pd.DataFrame([rows[s] for s in table["sample_id"] if s in rows])
    report = report.reindex(
        columns=[*REPORT_COLUMNS, *(c for c in report.columns if c not in REPORT_COLUMNS)]
    )
    expression = _collect(out, list(table["sample_id"]))
    with atomic_path(out / "run_report.csv", overwrite=True) as tmp:
        report.to_csv(tmp, index=False)
    with atomic_path(out / "cohort_expression.csv", overwrite=True) as tmp:
        expression.to_csv(tmp)
    return CohortResult(expression, report, out)


def _read_table(manifest: Any) -> Any:
    """The manifest with sample ids that are safe, distinct file names."""
    import pandas as pd

    if isinstance(manifest, pd.DataFrame):
        table = manifest.copy()
        source: object = "the manifest"
    else:
        from .io.tables import read_manifest

        table = read_manifest(manifest, require_patient=False)
        source = manifest
    table["sample_id"] = table["sample_id"].astype(str)
    check_sample_ids(list(table["sample_id"]), source)
    return table


def _check_model(bundle: str | Path, weights: str | None) -> tuple[str, str]:
    """Load the bundle and its extractor's weights once; return the bundle path and weights id.

    Raises
    ------
    BundleError, WeightsNotFoundError, BundleMismatchError
        The bundle or the weights cannot be used; nothing has been scheduled yet.
    """
    from .features.extractors import check_weights
    from .model.bundle import ModelBundle

    path = str(Path(bundle).resolve())
    feature = ModelBundle.load(path).feature
    if weights is None and feature.get("weights_hash") == "random-0":
        weights = "random"
    weights_id = check_weights(
        feature["extractor"], weights, expected_hash=feature.get("weights_hash")
    )
    return path, weights_id


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from .errors import OutputError
        from .io import describe_os_error

        raise OutputError(f"cannot make the output folder: {describe_os_error(exc)}") from exc


def _reusable(out: Path, sample: str, record: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """An earlier result's report row if it was made as ``record`` says, else why not."""
    if not _result_path(out, sample).exists():
        return None, ""
    old = read_record(record_path(out, sample))
    reason = stale_reason(old, record)
    if reason is not None or old is None:
        return None, reason or ""
    row = {
        "sample_id": sample,
        "status": "reused",
        "n_tiles": old.get("n_tiles"),
        "seconds": old.get("seconds"),
        "error": "",
        "note": "made before by the same bundle, slide and settings",
    }
    return row, ""


def _run_distributed(
    todo: list[dict[str, Any]],
    args: dict[str, Any],
    scheduler: Any,
    n_workers: int | None,
    threads_per_worker: int | None,
    retries: int,
    rows: dict[str, dict[str, Any]],
    bar: Any,
) -> None:
    from distributed import Client, as_completed

    own = False
    if scheduler is None:
        client, own = _local_client(n_workers, threads_per_worker), True
    elif isinstance(scheduler, str):
        client, own = Client(scheduler), True
    else:
        client = scheduler
    resources = (
        {"GPU": 1}
        if any(
            "GPU" in (w.get("resources") or {}) for w in client.scheduler_info()["workers"].values()
        )
        else None
    )
    futures = {}
    try:
        for task in todo:
            slide, sample = task["slide"], task["sample_id"]
            future = client.submit(
                process_slide,
                **task,
                **args,
                pure=False,
                retries=retries,
                resources=resources,
                key=f"deeppt-slide-{sample}-{os.getpid()}-{time.time_ns()}",
            )
            futures[future] = (slide, sample)
        for future in as_completed(futures):
            slide, sample = futures[future]
            try:
                rows[sample] = future.result()
            except Exception as exc:  # the task itself died (e.g. its worker, every retry)
                rows[sample] = {
                    "sample_id": sample,
                    "slide": slide,
                    "status": "error",
                    "n_tiles": None,
                    "seconds": None,
                    "error": f"task failed: {type(exc).__name__}: {exc}",
                }
            bar.update(1, f"{sample}: {rows[sample]['status']}")
    except KeyboardInterrupt:
        client.cancel(list(futures))
        raise
    finally:
        if own:
            cluster = getattr(client, "cluster", None)
            client.close()
            if cluster is not None:
                cluster.close()


def _collect(out: Path, samples: list[str]) -> Any:
    import pandas as pd

    series = {}
    for sample in samples:
        path = _result_path(out, sample)
        if path.exists():
            table = pd.read_csv(path)
            series[sample] = pd.Series(table["expression"].to_numpy(), index=table["gene"])
    if not series:
        return pd.DataFrame()
    return pd.DataFrame(series).T.rename_axis("sample_id")
