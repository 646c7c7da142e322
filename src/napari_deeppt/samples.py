"""Sample slides: the bundled real Aperio slide and a generated synthetic one (cached).

Generated files are cached under a name that carries a short key of everything that
determines them (generator version, spec, settings, and for the demo model the napari-deeppt
version), next to a ``<name>.json`` record of that key and of the sha256 of the bytes written.
A cached file is reused only when its record matches and its bytes still hash to it; anything
else (an interrupted or corrupted write, a file this code did not make) is made again, with a
warning.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from .io import atomic_path, bundled_slide_path, cache_root, file_sha256
from .testing import GENERATOR_VERSION, SyntheticSlide, default_sample_spec

__all__ = ["cmu1_small_region_path", "demo_bundle", "synthetic_sample"]

#: How the sample slide is written (part of its cache key).
_SAMPLE_WRITE = {"format": "svs", "overwrite": True}

#: The demo cohort and how the demo model is trained on it (part of its cache key).
_DEMO_COHORT = {"n_slides": 40, "seed": 1, "noise": 0.05}
_DEMO_TRAINING = {
    "extractor": "colour-stats",
    "tile_px": 64,
    "tile_mpp": 1.0,
    "stain": None,
    "demo": True,
    "outer_folds": 3,
    "inner_folds": 3,
    "max_epochs": 300,
    "patience": 50,
    "lr": 1e-3,
    "batch_slides": 4,
}


def cmu1_small_region_path() -> Path:
    """Path of the bundled CMU-1-Small-Region.svs (Carnegie Mellon University, CC0 1.0)."""
    return bundled_slide_path()


def _key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def _record_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.json")


def _cache_problem(path: Path, key: dict[str, Any]) -> str | None:
    """Why the cached ``path`` cannot be trusted for ``key`` (None: it can)."""
    try:
        record = json.loads(_record_path(path).read_text())
    except (OSError, ValueError):
        return "it has no readable record of how it was made"
    if not isinstance(record, dict) or record.get("key") != json.loads(
        json.dumps(key, default=str)
    ):
        return "its record is for other settings"
    try:
        if file_sha256(path) != record.get("sha256"):
            return "its bytes changed since it was written (an interrupted write or a bad copy)"
    except OSError as exc:
        return f"it cannot be read ({exc.strerror or exc})"
    return None


def _cached(path: Path, key: dict[str, Any], make: Callable[[Path], None]) -> Path:
    """Reuse ``path`` if its record matches ``key`` and its bytes; else ``make`` it again.

    ``make(path)`` writes the file (atomically, replacing what is there); then the record
    (the key and the sha256 of the bytes) is written atomically beside it.
    """
    if path.exists():
        problem = _cache_problem(path, key)
        if problem is None:
            return path
        warnings.warn(f"{path}: {problem}; making it again", UserWarning, stacklevel=3)
    make(path)
    record = {"key": key, "sha256": file_sha256(path)}
    with atomic_path(_record_path(path), overwrite=True) as tmp:
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True, default=str))
    return path


def synthetic_sample(directory: Path | None = None) -> SyntheticSlide:
    """The default synthetic H&E slide (6144×4096 px at 0.5 µm/px), written once and reused.

    Parameters
    ----------
    directory
        Where to cache it (default: the ``samples`` folder of :func:`~napari_deeppt.io.cache_root`).

    Returns
    -------
    SyntheticSlide
        The spec with ``path`` set. A cached file is checked against its record (settings and
        sha256) and written again, with a warning, if it does not match.
    """
    from .testing import write_synthetic_slide

    directory = Path(directory) if directory else cache_root() / "samples"
    spec = default_sample_spec()
    key = {"generator": GENERATOR_VERSION, "spec": asdict(spec), "write": _SAMPLE_WRITE}
    path = directory / f"synthetic-he-v{GENERATOR_VERSION}-{_key_digest(key)[:12]}.svs"

    def make(target: Path) -> None:
        write_synthetic_slide(target, spec, **_SAMPLE_WRITE)  # type: ignore[arg-type]

    directory.mkdir(parents=True, exist_ok=True)
    return replace(spec, path=_cached(path, key, make))


def demo_bundle(directory: Path | None = None, progress: bool = True) -> Path:
    """A small DEMO model trained on a synthetic cohort (written once, then reused).

    It uses the weight-free ``colour-stats`` extractor and 64 px tiles at 1 µm/px so that it
    trains in a minute on a CPU. It predicts synthetic genes (``DRIVEN*``, ``NOISE*``) and is
    for trying the pipeline only: never for real slides' biology.

    The cached bundle is keyed on the generator version, the cohort and training settings
    and the napari-deeppt version, and checked against its record (sha256) before reuse; the
    cohort it is trained on is made afresh in a temporary folder each time it is trained.

    Parameters
    ----------
    directory
        Where to cache it (default: the ``demo`` folder of :func:`~napari_deeppt.io.cache_root`).
    progress
        As for :func:`~napari_deeppt.model.training.train`, while it is trained.

    Returns
    -------
    pathlib.Path
        The ``.deeppt`` bundle.
    """
    from ._version import __version__

    directory = Path(directory) if directory else cache_root() / "demo"
    key = {
        "generator": GENERATOR_VERSION,
        "cohort": _DEMO_COHORT,
        "training": _DEMO_TRAINING,
        "napari_deeppt": __version__,
    }
    path = directory / f"demo-model-v{GENERATOR_VERSION}-{_key_digest(key)[:12]}.deeppt"

    def make(target: Path) -> None:
        from . import testing
        from .model import training

        with tempfile.TemporaryDirectory(prefix=".demo-", dir=directory) as work:
            cohort = testing.write_synthetic_cohort(Path(work) / "cohort", **_DEMO_COHORT)
            training.train(
                cohort.manifest,
                cohort.expression,
                target,
                cache_dir=Path(work) / "cache",
                progress=progress,
                overwrite=True,
                **_DEMO_TRAINING,
            )

    directory.mkdir(parents=True, exist_ok=True)
    return _cached(path, key, make)
