"""How a cohort run is scheduled: :class:`CohortParams`, the one source of its defaults."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["CohortParams"]

#: A dask scheduler address: ``[protocol://]host:port`` (or ``inproc://...``).
_ADDRESS = re.compile(
    r"^(inproc://\S+|([a-z][a-z0-9+]*://)?(\[[0-9a-f:.]+\]|[^\s/:\[\]]+):\d+)$", re.I
)


@dataclass(frozen=True)
class CohortParams:
    """How :func:`~napari_deeppt.cohort.run_cohort` runs its slides.

    Attributes
    ----------
    scheduler
        None (a local dask cluster sized to this machine), ``serial`` (in this process, no
        dask: a reference run), a scheduler address, or a ``distributed.Client``.
    n_workers
        Local cluster workers; None: one per GPU, else half the cores.
    threads_per_worker
        Threads of each local worker; None: 1.
    resume
        Reuse the results of an earlier run into the same folder that were made by the same
        bundle, slide, weights and regions; recompute the others.
    retries
        Times a slide is retried when its worker dies (not when the slide itself fails).
    roi_class
        Only the manifest's roi files' regions of this class (QuPath's Tumor, say).
    """

    scheduler: Any = None
    n_workers: int | None = None
    threads_per_worker: int | None = None
    resume: bool = True
    retries: int = 2
    roi_class: str | None = None

    def __post_init__(self) -> None:
        for name in ("n_workers", "threads_per_worker"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {value}")
        if int(self.retries) < 0:
            raise ValueError(f"retries must be ≥ 0, got {self.retries}")
        text = self.scheduler
        if isinstance(text, str) and text != "serial" and not _ADDRESS.match(text):
            raise ValueError(
                f"scheduler must be 'serial', a dask scheduler's address (tcp://host:8786) or "
                f"a distributed.Client, got {text!r}"
            )
