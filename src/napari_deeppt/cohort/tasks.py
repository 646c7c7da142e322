"""One cohort task: a slide predicted and its results written together, never raising."""

from __future__ import annotations

import json
import time
import traceback
import zlib
from pathlib import Path
from typing import Any

from ..errors import DeepPTError

__all__ = ["process_slide", "result_path"]


def result_path(out: Path, sample_id: str) -> Path:
    """Where a sample's slide-level expression lives; its presence marks the slide done.

    Parameters
    ----------
    out, sample_id
        The cohort's output folder and the sample's id.

    Returns
    -------
    pathlib.Path
        ``<out>/slides/<sample_id>.expression.csv``.
    """
    return out / "slides" / f"{sample_id}.expression.csv"


def _feature_store(prediction: Any, cache_dir: str | None) -> str:
    """Where the slide's features lie (its cache entry): a training manifest's ``features``."""
    from ..features.store import cache_entry

    key = prediction.provenance.get("features", {}).get("cache_key")
    return str(cache_entry(cache_dir, key)) if key else ""


def _device_for_worker(device: str) -> str:
    """The GPU a dask worker uses for ``"auto"``: worker ``N`` (local clusters name them
    0, 1, ...) gets GPU ``N mod count``, any other name a GPU fixed by its text (CRC-32, the
    same in every process, unlike Python's randomised ``hash``)."""
    if device != "auto":
        return device
    try:
        import torch
        from distributed import get_worker

        count = torch.cuda.device_count()
        if count:
            name = str(get_worker().name)
            index = int(name) if name.isdigit() else zlib.crc32(name.encode())
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
    precision: str | None = None,
) -> dict[str, Any]:
    """Predict one slide and write its results atomically; never raises for a bad slide.

    The expression CSV, the tiles' h5ad and ``record`` (what made them, see
    :mod:`napari_deeppt.cohort.records`) are written together: all new, or all as before.

    Parameters
    ----------
    slide, sample_id
        The slide's path and the sample it is (it names the outputs).
    bundle, out
        The model bundle's path and the cohort's output folder (results go in ``slides/``).
    cache_dir, weights, roi, roi_class, precision
        As for :func:`~napari_deeppt.prediction.predict`; ``roi_class`` applies only with a
        ``roi``.
    device
        As for :func:`~napari_deeppt.prediction.predict`; ``"auto"`` on a dask worker with
        CUDA GPUs picks one GPU from the worker's name.
    record
        The :func:`~napari_deeppt.cohort.records.expected_record` written beside the result
        (with the tile count, time and feature provenance added).

    Returns
    -------
    dict
        ``sample_id``, ``slide``, ``status`` (``"ok"`` or ``"error"``), ``n_tiles``,
        ``seconds``, ``error``, ``roi``; ``features`` (the feature store) when predicted, and
        ``traceback`` for an unexpected exception. Errors are reported here, never raised.
    """
    from ..io import atomic_outputs
    from ..prediction import predict
    from .records import record_path

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
            precision=precision,
            progress=False,
        )
        row["n_tiles"] = len(prediction.grid)
        row["features"] = _feature_store(prediction, cache_dir)
        row["seconds"] = round(time.perf_counter() - started, 3)
        target = result_path(Path(out), sample_id)
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
        from ..io import describe_os_error

        row.update(status="error", error=describe_os_error(exc))
    except Exception as exc:  # an unexpected failure: keep the cohort going, report it
        row.update(status="error", error=f"{type(exc).__name__}: {exc}")
        row["traceback"] = traceback.format_exc(limit=5)
    row["seconds"] = round(time.perf_counter() - started, 3)
    return row
