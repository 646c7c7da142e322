"""What every reader shares: :class:`SpatialData`, the section it builds and its checks."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExpressionTableError, SlideNotFoundError
from ..io.tables import few

__all__ = [
    "SpatialData",
    "as_text",
    "existing_image",
    "make_section",
    "optional_import",
    "unique_names",
]


@dataclass(frozen=True, eq=False)
class SpatialData:
    """Spots and their counts, ready for ``train(data.spots, data.counts, ...)``.

    Attributes
    ----------
    spots
        pandas.DataFrame with ``slide`` (absolute path of the image), ``x``, ``y`` (the spot
        centre in level-0 pixels of that image) and ``spot_id``, one row per spot.
    counts
        pandas.DataFrame, spots × genes: index the ``spot_id`` s in the order of ``spots``,
        columns unique gene names, values as the file holds them (counts).
    source
        What was read (the folder or files), for messages and provenance.
    spot_diameter_px
        The spot diameter in level-0 pixels when the files record it, else None.
    """

    spots: Any
    counts: Any
    source: str
    spot_diameter_px: float | None = None

    def __repr__(self) -> str:
        diameter = "" if self.spot_diameter_px is None else f", ⌀ {self.spot_diameter_px:.4g} px"
        return (
            f"SpatialData({len(self.spots)} spots × {self.counts.shape[1]} genes from "
            f"{self.source}{diameter})"
        )

    @classmethod
    def concat(cls, sections: Sequence[SpatialData]) -> SpatialData:
        """Several sections as one: spots stacked, counts restricted to their shared genes.

        Parameters
        ----------
        sections
            The sections, each read with its own ``sample=`` so that spot ids stay unique.

        Returns
        -------
        SpatialData
            ``spot_diameter_px`` is kept when every section records the same one.

        Raises
        ------
        ExpressionTableError
            No section, a spot id in two sections, or no gene shared by all.
        """
        import pandas as pd

        if not sections:
            raise ExpressionTableError("no section to concatenate")
        source = "; ".join(s.source for s in sections)
        ids = pd.Index([i for s in sections for i in s.spots["spot_id"]])
        if ids.has_duplicates:
            raise ExpressionTableError(
                f"{source}: spot id(s) {few(ids[ids.duplicated()].unique())} occur in more "
                "than one section; read each section with its own sample= name"
            )
        genes = sections[0].counts.columns
        for section in sections[1:]:
            genes = genes.intersection(section.counts.columns, sort=False)
        if len(genes) == 0:
            raise ExpressionTableError(f"{source}: the sections share no gene name")
        diameters = {s.spot_diameter_px for s in sections}
        return cls(
            spots=pd.concat([s.spots for s in sections], ignore_index=True),
            counts=pd.concat([s.counts[genes] for s in sections]),
            source=source,
            spot_diameter_px=diameters.pop() if len(diameters) == 1 else None,
        )


def make_section(
    ids: list[str],
    xy: dict[str, Any],
    counts: tuple[Any, list[str]],
    image: str | os.PathLike[str],
    sample: str | None,
    source: str,
    diameter: float | None = None,
) -> SpatialData:
    """The spot table and counts of one section, its spots checked against the image.

    Parameters
    ----------
    ids
        The spot ids as the files name them, in order.
    xy
        ``{"x": ..., "y": ...}``: the spot centres in level-0 pixels of ``image``.
    counts
        ``(values, genes)``: the spots × genes values and the unique gene names.
    image
        The full-resolution image (checked to exist and to hold every spot).
    sample
        Prefix of the spot ids (``<sample>_<id>``), or None.
    source
        What was read, named first in messages.
    diameter
        The spot diameter in level-0 pixels, when known.

    Returns
    -------
    SpatialData
    """
    import pandas as pd

    ids = [f"{sample}_{i}" for i in ids] if sample else list(ids)
    duplicated = pd.Index(ids)[pd.Index(ids).duplicated()].unique()
    if len(duplicated):
        raise ExpressionTableError(f"{source}: spot id(s) {few(duplicated)} occur twice")
    image = existing_image(image, source)
    spots = pd.DataFrame(
        {
            "slide": os.path.abspath(image),
            "x": np.asarray(xy["x"], dtype=float),
            "y": np.asarray(xy["y"], dtype=float),
            "spot_id": ids,
        }
    )
    values, genes = counts
    table = pd.DataFrame(values, index=pd.Index(ids, name="spot_id"), columns=genes)
    _require_on_image(spots, image, source)
    return SpatialData(spots, table, source, diameter)


def existing_image(image: str | os.PathLike[str], source: Any) -> Path:
    """The image path, refused at once (before any table is read) when it does not exist.

    Parameters
    ----------
    image
        The full-resolution image (``~`` is expanded).
    source
        The data set it belongs to, for the message.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    SlideNotFoundError
        Nothing at ``image``.
    """
    path = Path(image).expanduser()
    if not path.exists():
        raise SlideNotFoundError(
            f"{path}: no such image (the full-resolution image of {source}); give its path"
        )
    return path


def _require_on_image(spots: Any, image: Path, source: str) -> None:
    """Refuse spots whose centre is off the image (naming a few and the image's size)."""
    from ..slide import open_slide

    with open_slide(image) as slide:
        width, height = slide.dimensions
    x, y = spots["x"].to_numpy(), spots["y"].to_numpy()
    unknown = ~(np.isfinite(x) & np.isfinite(y))
    if unknown.any():
        raise ExpressionTableError(
            f"{source}: {int(unknown.sum())} spot(s) have no position (x, y not a number), "
            f"e.g. {few(spots['spot_id'][unknown], 3)}"
        )
    off = ~((x >= 0) & (x < width) & (y >= 0) & (y < height))
    if off.any():
        raise ExpressionTableError(
            f"{source}: {int(off.sum())} of {len(spots)} spots lie outside {image} "
            f"({width}×{height} px), e.g. {few(spots['spot_id'][off], 3)} at x, y up to "
            f"{x.max():.0f}, {y.max():.0f}; give the full-resolution image the coordinates "
            "refer to (not a downscaled one such as tissue_hires_image.png)"
        )


def unique_names(names: list[str]) -> list[str]:
    """Names made unique: a repeat becomes ``name-1``, ``name-2`` … (the first is kept, and
    a suffixed name never takes a name the list already has).

    Parameters
    ----------
    names
        The names, in order.

    Returns
    -------
    list of str
        As many names, in the same order.
    """
    originals, taken, out = set(names), set(), []
    for name in names:
        new, k = name, 0
        while new in taken or (new != name and new in originals):
            k += 1
            new = f"{name}-{k}"
        taken.add(new)
        out.append(new)
    return out


def as_text(value: Any) -> str:
    """A name as text (HDF5 strings are bytes).

    Parameters
    ----------
    value
        Bytes (decoded as UTF-8) or anything else (its ``str``).

    Returns
    -------
    str
    """
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def optional_import(path: Path, module: str) -> Any:
    """An optional dependency, or a one-line refusal saying how to install it.

    Parameters
    ----------
    path
        The file that needs it, for the message.
    module
        The module to import (also the name given to ``pip install``).

    Returns
    -------
    module

    Raises
    ------
    ExpressionTableError
        ``module`` is not installed.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ExpressionTableError(
            f"{path}: reading it needs {module}: pip install {module}"
        ) from exc
