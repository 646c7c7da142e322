"""The dask side of a cohort run: a local cluster sized to the machine, tasks and retries."""

from __future__ import annotations

import os
import time
from typing import Any

from .tasks import process_slide

__all__ = ["local_client", "run_distributed"]


def local_client(n_workers: int | None, threads_per_worker: int | None) -> Any:
    """A LocalCluster: one worker per GPU (with a GPU resource), else half the cores.

    Parameters
    ----------
    n_workers
        Worker processes; None: one per CUDA GPU, else half the CPU cores (at least one).
    threads_per_worker
        Threads of each CPU worker (None: 1); GPU workers always have one.

    Returns
    -------
    distributed.Client
        A client of the new cluster; closing both is the caller's.
    """
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


def run_distributed(
    todo: list[dict[str, Any]],
    args: dict[str, Any],
    scheduler: Any,
    n_workers: int | None,
    threads_per_worker: int | None,
    retries: int,
    rows: dict[str, dict[str, Any]],
    bar: Any,
) -> None:
    """Process ``todo``'s slides as dask tasks; each slide's report row lands in ``rows``.

    Parameters
    ----------
    todo
        One dict of :func:`~.tasks.process_slide` keywords per slide (slide, sample_id, ...).
    args
        The keywords every slide shares (bundle, output folder, settings).
    scheduler
        None for a local cluster made here, a scheduler address, or a ``Client``.
    n_workers, threads_per_worker
        The local cluster's shape (when ``scheduler`` is None).
    retries
        How often dask reruns a task whose worker died.
    rows
        Filled with one report row per sample id, an error row when the task itself failed.
    bar
        The progress bar, advanced once per finished slide.
    """
    from distributed import Client, as_completed

    own = False
    if scheduler is None:
        client, own = local_client(n_workers, threads_per_worker), True
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
