"""Sample slides: the bundled real Aperio slide and a generated synthetic one (cached)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .io import cache_root
from .synthetic import GENERATOR_VERSION, SyntheticSlide, default_sample_spec

__all__ = ["cmu1_small_region_path", "synthetic_sample"]


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
