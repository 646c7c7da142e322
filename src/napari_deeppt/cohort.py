"""Cohort runs: every slide of a manifest → tissue, tiles, features, predictions, on dask.

One dask task per slide. Each task writes its results under ``<out>/slides/`` through a
temporary name and a rename, so a result file is either complete or absent; a rerun skips
slides whose results exist (resume), a failing slide becomes a row of the run report with its
error and never stops the others, and Ctrl-C (or a lost worker) leaves only complete results.
By default a ``LocalCluster`` sized to the machine runs the tasks (one worker per GPU, each
with a ``GPU`` resource, when GPUs are present); ``scheduler=`` connects to any existing
``dask.distributed`` cluster (dask-jobqueue, Kubernetes) instead.
"""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DeepPTError
from .progress import ProgressLike, make_progress

__all__ = ["CohortResult", "process_slide", "run_cohort"]

REPORT_COLUMNS = ["sample_id", "slide", "status", "n_tiles", "seconds", "error"]


@dataclass(repr=False)
class CohortResult:
    """What :func:`run_cohort` produced.

    Attributes
    ----------
    expression
        samples × genes slide-level predictions of every slide done (this run or before).
    report
        One row per manifest slide: status (``ok``, ``skipped`` = done before, ``error``),
        tiles, seconds, error message.
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
) -> dict[str, Any]:
    """Predict one slide and write its results atomically; never raises for a bad slide.

    Returns the slide's run-report row.
    """
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
        target = _result_path(Path(out), sample_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        prediction.to_h5ad(target.with_name(f"{sample_id}.tiles.h5ad"), overwrite=True)
        prediction.to_csv(target, overwrite=True)  # last: its presence marks the slide done
        row["n_tiles"] = len(prediction.grid)
    except DeepPTError as exc:
        row.update(status="error", error=str(exc))
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
        Skip slides whose results already exist.
    retries
        Times a slide is retried when its worker dies (not when the slide itself fails).
    roi_class
        Only the ``roi`` files' regions of this class (QuPath's ``"Tumor"``, say).
    progress
        See :mod:`napari_deeppt.progress`.
    """
    import pandas as pd

    from .models import ModelBundle

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bundle = str(Path(bundle).resolve())
    ModelBundle.load(bundle)  # fail early, in the driver, on a bad bundle
    if isinstance(manifest, pd.DataFrame):
        table = manifest.copy()
    else:
        from .training import read_manifest

        table = read_manifest(manifest, require_patient=False)
    rows: dict[str, dict[str, Any]] = {}
    todo = []
    rois = table["roi"] if "roi" in table.columns else [None] * len(table)
    for slide, sample, roi in zip(table["slide"], table["sample_id"], rois, strict=True):
        if resume and _result_path(out, sample).exists():
            rows[sample] = {
                "sample_id": sample,
                "slide": slide,
                "status": "skipped",
                "n_tiles": None,
                "seconds": 0.0,
                "error": "done before",
            }
        else:
            todo.append((str(slide), str(sample), roi))
    args = {
        "bundle": bundle,
        "out": str(out),
        "weights": weights,
        "device": device,
        "cache_dir": None if cache_dir is None else str(cache_dir),
        "roi_class": roi_class,
    }
    with make_progress(progress, len(todo), "slides", unit="slide") as bar:
        if scheduler == "serial":
            for slide, sample, roi in todo:
                rows[sample] = process_slide(slide, sample, roi=roi, **args)
                bar.update()
        elif todo:
            _run_distributed(
                todo, args, scheduler, n_workers, threads_per_worker, retries, rows, bar
            )
    for stale in (out / "slides").glob(".*.partial-*"):  # left by a killed worker
        stale.unlink(missing_ok=True)
    report = pd.DataFrame([rows[s] for s in table["sample_id"] if s in rows])
    report = report.reindex(
        columns=[*REPORT_COLUMNS, *(c for c in report.columns if c not in REPORT_COLUMNS)]
    )
    expression = _collect(out, list(table["sample_id"]))
    from .io import atomic_path

    with atomic_path(out / "run_report.csv", overwrite=True) as tmp:
        report.to_csv(tmp, index=False)
    with atomic_path(out / "cohort_expression.csv", overwrite=True) as tmp:
        expression.to_csv(tmp)
    return CohortResult(expression, report, out)


def _run_distributed(
    todo: list[tuple[str, str, str | None]],
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
        for slide, sample, roi in todo:
            future = client.submit(
                process_slide,
                slide,
                sample,
                roi=roi,
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
