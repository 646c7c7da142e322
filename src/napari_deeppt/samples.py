"""Sample slides: the bundled real Aperio slide and a generated synthetic one (cached)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .io import cache_root
from .synthetic import GENERATOR_VERSION, SyntheticSlide, default_sample_spec

__all__ = ["cmu1_small_region_path", "demo_bundle", "synthetic_sample"]


def cmu1_small_region_path() -> Path:
    """Path of the bundled CMU-1-Small-Region.svs (Carnegie Mellon University, CC0 1.0)."""
    return Path(str(resources.files("napari_deeppt") / "data" / "CMU-1-Small-Region.svs"))


def synthetic_sample(directory: Path | None = None) -> SyntheticSlide:
    """The default synthetic H&E slide (6144×4096 px at 0.5 µm/px), written once and reused."""
    from .synthetic import write_synthetic_slide

    directory = Path(directory) if directory else cache_root() / "samples"
    directory.mkdir(parents=True, exist_ok=True)
    spec = default_sample_spec()
    path = directory / f"synthetic-he-v{GENERATOR_VERSION}.svs"
    if path.exists():
        from dataclasses import replace

        return replace(spec, path=path)
    return write_synthetic_slide(path, spec, format="svs", overwrite=False)


def demo_bundle(directory: Path | None = None, progress: bool = True) -> Path:
    """A small DEMO model trained on a synthetic cohort (written once, then reused).

    It uses the weight-free ``colour-stats`` extractor and 64 px tiles at 1 µm/px so that it
    trains in a minute on a CPU. It predicts synthetic genes (``DRIVEN*``, ``NOISE*``) and is
    for trying the pipeline only: never for real slides' biology.
    """
    from .synthetic import write_synthetic_cohort
    from .training import train

    directory = Path(directory) if directory else cache_root() / "demo"
    bundle = directory / f"demo-model-v{GENERATOR_VERSION}.deeppt"
    if bundle.exists():
        return bundle
    cohort = write_synthetic_cohort(directory / "cohort", n_slides=40, seed=1, noise=0.05)
    train(
        cohort.manifest,
        cohort.expression,
        bundle,
        extractor="colour-stats",
        tile_px=64,
        tile_mpp=1.0,
        stain=None,
        cache_dir=directory / "cache",
        demo=True,
        outer_folds=3,
        inner_folds=3,
        max_epochs=300,
        patience=50,
        lr=1e-3,
        batch_slides=4,
        progress=progress,
        overwrite=True,
    )
    return bundle
