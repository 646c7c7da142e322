"""Shared fixtures: small synthetic slides with known truth, generated once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from napari_deeppt.testing import SyntheticSlide, default_sample_spec, write_synthetic_slide

os.environ.setdefault("NAPARI_DEEPPT_CACHE", str(Path(__file__).parent / ".cache-unused"))


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Never touch the user's real cache from tests."""
    os.environ["NAPARI_DEEPPT_CACHE"] = str(tmp_path_factory.mktemp("deeppt-cache"))


@pytest.fixture(scope="session")
def slide_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("slides")


@pytest.fixture(scope="session")
def small_spec() -> SyntheticSlide:
    return default_sample_spec(width=2048, height=1536, mpp=0.5, seed=3)


def _write(slide_dir: Path, name: str, spec: SyntheticSlide, **kwargs: object) -> SyntheticSlide:
    path = slide_dir / name
    if path.exists():
        from dataclasses import replace

        return replace(spec, path=path)
    return write_synthetic_slide(path, spec, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def svs_slide(slide_dir: Path, small_spec: SyntheticSlide) -> SyntheticSlide:
    return _write(slide_dir, "small.svs", small_spec, format="svs", level_factors=(4,))


@pytest.fixture(scope="session")
def ome_tiff_slide(slide_dir: Path, small_spec: SyntheticSlide) -> SyntheticSlide:
    return _write(slide_dir, "small.ome.tif", small_spec, format="ome-tiff", level_factors=(2, 4))


@pytest.fixture(scope="session")
def tiff_slide(slide_dir: Path, small_spec: SyntheticSlide) -> SyntheticSlide:
    return _write(
        slide_dir, "small.tif", small_spec, format="tiff", level_factors=(4,), compression="zlib"
    )


@pytest.fixture(scope="session")
def zarr_slide(slide_dir: Path, small_spec: SyntheticSlide) -> SyntheticSlide:
    return _write(slide_dir, "small.ome.zarr", small_spec, format="ome-zarr", level_factors=(2, 4))


@pytest.fixture(scope="session")
def no_mpp_slide(slide_dir: Path, small_spec: SyntheticSlide) -> SyntheticSlide:
    return _write(
        slide_dir,
        "nompp.tif",
        small_spec,
        format="tiff",
        level_factors=(4,),
        write_mpp=False,
        associated=False,
    )


@pytest.fixture(scope="session")
def giant_slide(slide_dir: Path) -> SyntheticSlide:
    from napari_deeppt.testing import write_giant_slide

    path = slide_dir / "giant.svs"
    return write_giant_slide(path, size=100_000)


def quick_train_args(cohort: object, model: Path, cache: Path, epochs: int = 20) -> list[str]:
    """``deeppt train`` on a synthetic cohort in seconds: weight-free features, 2 × 2 folds."""
    return [
        "train",
        str(cohort.manifest),  # type: ignore[attr-defined]
        str(cohort.expression),  # type: ignore[attr-defined]
        "--out",
        str(model),
        "--extractor",
        "colour-stats",
        "--tile-px",
        "64",
        "--tile-mpp",
        "1.0",
        "--stain",
        "none",
        "--outer-folds",
        "2",
        "--inner-folds",
        "2",
        "--max-epochs",
        str(epochs),
        "--lr",
        "1e-3",
        "--cache-dir",
        str(cache),
        "--quiet",
    ]


@pytest.fixture
def error_notifications():
    """The messages of the error notifications napari shows during the test (dock tests)."""
    from napari.utils.notifications import NotificationSeverity, notification_manager

    seen = []

    def keep(notification):
        if notification.severity == NotificationSeverity.ERROR:
            seen.append(notification.message)

    notification_manager.notification_ready.connect(keep)
    yield seen
    notification_manager.notification_ready.disconnect(keep)
