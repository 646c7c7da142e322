"""Cohort runs: every slide of a manifest → tissue, tiles, features, predictions, on dask.

One dask task per slide. Each task writes its results under ``<out>/slides/`` through
temporary names and renames, so a slide's results are either complete or absent. Each result
records what made it (:mod:`napari_deeppt.cohort.records`: the bundle's SHA-256, the slide's
identity, the weights, the regions of interest, the napari-deeppt version); a rerun reuses a
result only when all of these match (resume) and recomputes the others, saying why in the
report. A failing slide becomes a row of the run report with its error and never stops the
others, and Ctrl-C (or a lost worker) leaves only complete results.
By default a ``LocalCluster`` sized to the machine runs the tasks (one worker per GPU, each
with a ``GPU`` resource, when GPUs are present); ``scheduler=`` connects to any existing
``dask.distributed`` cluster (dask-jobqueue, Kubernetes) instead.
"""

from .params import CohortParams
from .run import CohortResult, run_cohort
from .tasks import process_slide

__all__ = ["CohortParams", "CohortResult", "process_slide", "run_cohort"]
