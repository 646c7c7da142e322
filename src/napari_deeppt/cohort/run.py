"""run_cohort: plan (what can be reused), run the slides (serially or on dask), report."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import ExpressionTableError
from ..io import atomic_path, file_sha256, remove_stale_partials
from ..progress import ProgressLike, make_progress
from .cluster import run_distributed
from .params import CohortParams
from .records import check_sample_ids, expected_record, read_record, record_path, stale_reason
from .tasks import process_slide, result_path

__all__ = ["REPORT_COLUMNS", "CohortResult", "run_cohort"]

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


def run_cohort(
    manifest: str | Path | Any,
    bundle: str | Path,
    out: str | Path,
    *,
    weights: str | None = None,
    device: str = "auto",
    cache_dir: str | Path | None = None,
    precision: str | None = None,
    progress: ProgressLike = True,
    params: CohortParams | None = None,
    **options: Any,
) -> CohortResult:
    """Predict every slide of a manifest; see :mod:`napari_deeppt.cohort`.

    Parameters
    ----------
    manifest
        CSV (or DataFrame) with ``slide`` and ``sample_id`` columns (``patient_id`` optional;
        ``roi``, optional: a GeoJSON of regions of interest per slide, empty = all tissue).
    bundle
        Model bundle (``.deeppt``).
    out
        Output folder: ``slides/<sample_id>.expression.csv``, ``.tiles.h5ad`` and
        ``.run.json`` (what made them) per slide, ``cohort_expression.csv`` (samples × genes)
        and ``run_report.csv``.
    weights, device, cache_dir
        As for :func:`~napari_deeppt.prediction.predict`; ``device="auto"`` gives each worker
        its own GPU when there are several.
    precision
        The extractor's arithmetic: None (the bundle's own, as it was trained), ``float32``,
        ``bfloat16`` (where the hardware has it natively: about twice as fast on such a CPU,
        features within bfloat16's rounding) or ``int8`` (ResNet on the CPU: about twice as
        fast, features within about 0.5 % of float32's variance). Each slide's record keeps
        a precision other than the bundle's, and int8's engine and torch version, so a
        resumed run never mixes them. bfloat16 and int8 are checked against ``device`` as
        this machine resolves it: with a remote cluster whose workers have GPUs, pass
        ``device="cpu"`` (or every slide fails, each in its own report row).
    progress
        See :mod:`napari_deeppt.progress`.
    params, **options
        :class:`~napari_deeppt.cohort.params.CohortParams` (how slides are scheduled:
        ``scheduler``, ``n_workers``, ``threads_per_worker``, ``resume``, ``retries``,
        ``roi_class``), with any of its fields given as keywords over it.
    """
    p = replace(params or CohortParams(), **options)
    out = Path(out)
    table = _read_table(manifest)
    bundle, weights_id, feature = _check_model(bundle, weights)  # once, before any slide
    said = _precision_record(feature, precision, device)
    _make_folder(out / "slides")
    identity = {"bundle_sha256": file_sha256(bundle), "weights": weights_id, "precision": said}
    rows, todo = _plan(table, out, identity, p.roi_class, p.resume)
    args = {
        "bundle": bundle,
        "out": str(out),
        "weights": weights,
        "device": device,
        "cache_dir": None if cache_dir is None else str(cache_dir),
        "roi_class": p.roi_class,
        "precision": precision,
    }
    for folder in (out, out / "slides"):  # partials left by a run that was killed
        remove_stale_partials(folder)
    tasks = [task for task, _ in todo]
    with make_progress(progress, len(todo), "slides", unit="slide") as bar:
        if p.scheduler == "serial":
            for task in tasks:
                rows[task["sample_id"]] = process_slide(**task, **args)
                bar.update()
        elif todo:
            cluster = (p.scheduler, p.n_workers, p.threads_per_worker, p.retries)
            run_distributed(tasks, args, *cluster, rows, bar)
    for task, note in todo:
        rows[task["sample_id"]]["note"] = note
    remove_stale_partials(out / "slides")
    return _finish(out, table, rows)


def _plan(
    table: Any,
    out: Path,
    identity: dict[str, Any],
    roi_class: str | None,
    resume: bool,
) -> tuple[dict[str, dict[str, Any]], list[tuple[dict[str, Any], str]]]:
    """Report rows of the results that can be reused, and the tasks (with a note) to run.

    ``identity``: the bundle's SHA-256, the weights' id and what the record says of the
    precision (see :func:`~.records.expected_record`).
    """
    rows: dict[str, dict[str, Any]] = {}
    todo = []
    rois = table["roi"] if "roi" in table.columns else [None] * len(table)
    for slide, sample, roi in zip(table["slide"], table["sample_id"], rois, strict=True):
        if not Path(slide).exists():
            rows[sample] = _missing_slide_row(str(sample), str(slide))
            continue
        record = expected_record(
            str(slide), identity["bundle_sha256"], identity["weights"], roi, roi_class,
            precision=identity["precision"],
        )  # fmt: skip
        reused, note = _reusable(out, str(sample), record) if resume else (None, "")
        if reused is not None:
            rows[sample] = {**reused, "slide": slide}
        else:
            task = {"slide": str(slide), "sample_id": str(sample), "roi": roi, "record": record}
            todo.append((task, note))
    return rows, todo


def _missing_slide_row(sample: str, slide: str) -> dict[str, Any]:
    return {
        "sample_id": sample,
        "slide": slide,
        "status": "error",
        "n_tiles": None,
        "seconds": 0.0,
        "error": f"{slide}: no such slide file; fix its path in the manifest",
        "note": "",
    }


def _finish(out: Path, table: Any, rows: dict[str, dict[str, Any]]) -> CohortResult:
    """Write the run report and the cohort table (atomically) in manifest order."""
    import pandas as pd

    report = pd.DataFrame([rows[s] for s in table["sample_id"] if s in rows])
    report = report.reindex(
        columns=[*REPORT_COLUMNS, *(c for c in report.columns if c not in REPORT_COLUMNS)]
    )
    done = [s for s in table["sample_id"] if rows.get(s, {}).get("status") in ("ok", "reused")]
    expression = _collect(out, done)  # a failed recomputation never leaves its old values
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
        _check_frame(table)
    else:
        from ..io.tables import read_manifest

        table = read_manifest(manifest, require_patient=False)
        source = manifest
    if len(table) == 0:
        raise ExpressionTableError(f"{source}: no slides listed; nothing to run")
    table["sample_id"] = table["sample_id"].astype(str)
    check_sample_ids(list(table["sample_id"]), source)
    return table


def _check_frame(table: Any) -> None:
    """A manifest given as a DataFrame has what a manifest file must: slides and ids."""
    repeated = sorted({str(c) for c in table.columns[table.columns.duplicated()]})
    if repeated:
        raise ExpressionTableError(f"the manifest has column(s) {repeated} more than once")
    missing = [c for c in ("slide", "sample_id") if c not in table.columns]
    if missing:
        raise ExpressionTableError(
            f"the manifest lacks column(s) {missing}; it needs slide and sample_id"
        )
    for column in ("slide", "sample_id"):
        empty = table[column].isna() | (table[column].astype(str).str.strip() == "")
        if empty.any():
            rows = [str(r) for r in table.index[empty][:5]]
            raise ExpressionTableError(f"the manifest's row(s) {rows} have no {column}")


def _check_model(bundle: str | Path, weights: str | None) -> tuple[str, str, dict[str, Any]]:
    """Load the bundle and its extractor's weights once: the bundle's path, the weights' id
    and the bundle's feature settings.

    Raises
    ------
    BundleError, WeightsNotFoundError, BundleMismatchError
        The bundle or the weights cannot be used; nothing has been scheduled yet.
    """
    from ..features.extractors import check_weights
    from ..model.bundle import ModelBundle

    path = str(Path(bundle).resolve())
    feature = ModelBundle.load(path).feature
    if weights is None and feature.get("weights_hash") == "random-0":
        weights = "random"
    weights_id = check_weights(
        feature["extractor"], weights, expected_hash=feature.get("weights_hash")
    )
    return path, weights_id, feature


def _precision_record(
    feature: dict[str, Any], precision: str | None, device: str
) -> str | dict[str, Any] | None:
    """What a slide's record says of the precision: None for float32 as the bundle has
    it, ``"float32"`` for an int8 bundle run at float32, and for int8 its identity (engine,
    recipe, torch: int8 results depend on them, so a resume on another never reuses).

    Raises
    ------
    ValueError
        An unknown precision.
    DeepPTError
        bfloat16 or int8 for an extractor or a device it does not run on (here
        ``device="auto"`` is this machine's choice), before any slide is scheduled.
    """
    from ..features.engine import require_precision
    from ..prediction import precision_for

    chosen = precision_for(feature, precision)
    require_precision(chosen, str(feature.get("extractor")), device)
    if chosen == "int8":
        from ..features.quantized import int8_identity

        return {"precision": "int8", **int8_identity()}
    return None if chosen == precision_for(feature, None) else chosen


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from ..errors import OutputError
        from ..io import describe_os_error

        raise OutputError(f"cannot make the output folder: {describe_os_error(exc)}") from exc


def _reusable(out: Path, sample: str, record: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """An earlier result's report row if it was made as ``record`` says, else why not."""
    if not result_path(out, sample).exists():
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


def _collect(out: Path, samples: list[str]) -> Any:
    import pandas as pd

    series = {}
    for sample in samples:
        path = result_path(out, sample)
        if path.exists():
            table = pd.read_csv(path)
            series[sample] = pd.Series(table["expression"].to_numpy(), index=table["gene"])
    if not series:
        return pd.DataFrame()
    return pd.DataFrame(series).T.rename_axis("sample_id")
