"""Synthetic cohorts and spatial spots whose expression truth is known."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .render import DEFAULT_TISSUE_TYPES, SyntheticSlide, TissueRegion
from .slides import write_synthetic_slide

__all__ = ["SyntheticCohort", "write_synthetic_cohort", "write_synthetic_spots"]


@dataclass(frozen=True)
class SyntheticCohort:
    """A synthetic cohort whose expression truth is known.

    Each slide holds one piece of every tissue type, of random size; a *driven* gene's
    log2(expression + 1) is ``5 + 4 · Σ_t weight[gene, t] · fraction_t + noise`` where
    ``fraction_t`` is the share of the slide's tissue area of type ``t``; *noise* genes ignore
    the slide.
    """

    manifest: Path
    expression: Path
    slides: tuple[SyntheticSlide, ...]
    fractions: np.ndarray
    driven: dict[str, np.ndarray]
    noise_genes: tuple[str, ...]


def write_synthetic_cohort(
    directory: str | os.PathLike[str],
    n_slides: int = 24,
    n_patients: int | None = None,
    size: int = 1024,
    mpp: float = 1.0,
    n_driven: int = 4,
    n_noise: int = 4,
    noise: float = 0.1,
    seed: int = 0,
    genes_as_rows: bool = True,
) -> SyntheticCohort:
    """Write slides, ``manifest.csv`` and ``expression.csv`` for a synthetic cohort.

    Parameters
    ----------
    directory
        Output folder (created).
    n_slides, n_patients
        Samples, and patients they belong to (default: one or two slides per patient).
    size, mpp
        Slide side in pixels and µm per pixel.
    n_driven, n_noise
        Genes driven by tissue composition, and pure-noise genes.
    noise
        Standard deviation of the noise added to driven genes (log2 scale).
    seed
        Seeds the slides' tissue and the expression values.
    genes_as_rows
        Write the expression table genes × samples (True) or samples × genes.
    """
    import pandas as pd

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_types = len(DEFAULT_TISSUE_TYPES)
    n_patients = n_patients or max(2, (2 * n_slides) // 3)
    patients = [f"P{i % n_patients:03d}" for i in range(n_slides)]
    slides = [
        _cohort_slide(directory / f"slide{i:03d}.tif", size, mpp, seed * 1000 + i, rng)
        for i in range(n_slides)
    ]
    fractions_arr = np.array([_type_fractions(s) for s in slides])
    # each driven gene weighs the tissue types from -1 to +1 in its own order, so every one
    # varies as much with composition
    driven = {f"DRIVEN{g}": rng.permutation(np.linspace(-1, 1, n_types)) for g in range(n_driven)}
    log_expr = {}
    for gene, weight in driven.items():
        log_expr[gene] = 5 + 4 * fractions_arr @ weight + rng.normal(0, noise, n_slides)
    noise_genes = tuple(f"NOISE{g}" for g in range(n_noise))
    for gene in noise_genes:
        log_expr[gene] = 5 + rng.normal(0, 0.5, n_slides)
    samples = [f"S{i:03d}" for i in range(n_slides)]
    table = pd.DataFrame({g: 2.0**v - 1 for g, v in log_expr.items()}, index=samples)
    expression = directory / "expression.csv"
    (table.T if genes_as_rows else table).to_csv(expression)
    manifest = directory / "manifest.csv"
    pd.DataFrame(
        {"slide": [s.path.name for s in slides], "sample_id": samples, "patient_id": patients}
    ).to_csv(manifest, index=False)
    return SyntheticCohort(manifest, expression, tuple(slides), fractions_arr, driven, noise_genes)


def _cohort_slide(
    path: Path, size: int, mpp: float, seed: int, rng: np.random.Generator
) -> SyntheticSlide:
    """One piece of every tissue type, of random size and height; written unless it exists."""
    n_types = len(DEFAULT_TISSUE_TYPES)
    regions = []
    for t in range(n_types):
        r = size * rng.uniform(0.06, 0.16)
        cx = size * (t + 0.5) / n_types
        regions.append(TissueRegion(cx, size * rng.uniform(0.3, 0.7), r, r * 1.4, t))
    spec = SyntheticSlide(
        size, size, mpp, regions=tuple(regions), seed=seed, objective_power=round(10 / mpp, 1)
    )
    if not path.exists():
        write_synthetic_slide(
            path, spec, format="tiff", compression="zlib", level_factors=(4,), associated=False
        )
    return replace(spec, path=path)


def _type_fractions(slide: SyntheticSlide) -> np.ndarray:
    """Share of the slide's tissue area of each type (one region per type)."""
    areas = np.array([r.area_px for r in slide.regions])
    return areas / areas.sum()


def write_synthetic_spots(
    directory: str | os.PathLike[str],
    slides: tuple[SyntheticSlide, ...] | list[SyntheticSlide],
    spacing_px: float = 100.0,
    spot_diameter_um: float = 55.0,
    n_driven: int = 3,
    n_noise: int = 2,
    noise: float = 0.2,
    seed: int = 0,
) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """Spatial-transcriptomics-like data for ``slides``: ``spots.csv`` and ``counts.csv``.

    Spots sit on a square lattice over the tissue; a driven gene's log2(count + 1) is
    ``4 + 2 · weight[gene, tissue type under the spot] + noise``; noise genes ignore it.

    Parameters
    ----------
    directory
        Output folder (created); the spot table names the slides relative to it.
    slides
        Written synthetic slides (with ``path``), e.g. a
        :func:`write_synthetic_cohort`'s ``slides``.
    spacing_px, spot_diameter_um
        The lattice's step in level-0 pixels, and the diameter written for every spot.
    n_driven, n_noise
        Genes driven by the tissue type under the spot (``SPOT_DRIVEN*``), and pure-noise
        genes (``SPOT_NOISE*``).
    noise, seed
        Standard deviation of the noise added to driven genes (log2 scale); the seed.

    Returns
    -------
    tuple
        ``spots.csv``'s and ``counts.csv``'s paths, and each driven gene's weight per tissue
        type.
    """
    import pandas as pd

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_types = len(DEFAULT_TISSUE_TYPES)
    driven = {
        f"SPOT_DRIVEN{g}": rng.permutation(np.linspace(-1, 1, n_types)) for g in range(n_driven)
    }
    rows, kinds = [], []
    for slide in slides:
        ys, xs = np.mgrid[
            spacing_px / 2 : slide.height : spacing_px, spacing_px / 2 : slide.width : spacing_px
        ]
        kind = slide.tissue_type_map(xs.ravel(), ys.ravel())
        for x, y, k in zip(xs.ravel(), ys.ravel(), kind):
            if k >= 0:
                rows.append(
                    {
                        "spot_id": f"{Path(slide.path).stem}_{len(rows)}",
                        "slide": os.path.relpath(slide.path, directory),
                        "x": float(x),
                        "y": float(y),
                        "spot_diameter_um": spot_diameter_um,
                    }
                )
                kinds.append(int(k))
    kinds_arr = np.array(kinds)
    spots = pd.DataFrame(rows)
    counts = {}
    for gene, weight in driven.items():
        counts[gene] = 2.0 ** (4 + 2 * weight[kinds_arr] + rng.normal(0, noise, len(rows))) - 1
    for g in range(n_noise):
        counts[f"SPOT_NOISE{g}"] = 2.0 ** (4 + rng.normal(0, 0.5, len(rows))) - 1
    spots_path, counts_path = directory / "spots.csv", directory / "counts.csv"
    spots.to_csv(spots_path, index=False)
    pd.DataFrame(counts, index=spots["spot_id"]).to_csv(counts_path)
    return spots_path, counts_path, driven
