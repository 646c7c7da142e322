"""Readers for spatial transcriptomics data: Space Ranger (Visium), HEST-1k and legacy ST.

Each reader returns :class:`SpatialData`: the spot table (``slide, x, y, spot_id``, the spot
centre in level-0 pixels of the full-resolution image) and the counts (spots × genes) that
:func:`~napari_deeppt.model.training.train` takes. Every problem a user can cause — a file
missing, an unreadable HDF5 or JSON, positions that match no spot of the matrix, spots off
the image — is refused in one line naming the file and what to do
(:class:`~napari_deeppt.errors.ExpressionTableError`; a missing image is a
:class:`~napari_deeppt.errors.SlideNotFoundError`).

One module per layout (:mod:`.visium`, :mod:`.hest`, :mod:`.legacy_st`) over :mod:`.data`
(the dataclass and the checks every reader shares). The package sits above
:mod:`napari_deeppt.slide`: each reader opens the image once to check that every spot lies
on it.
"""

from __future__ import annotations

from .data import SpatialData
from .hest import read_hest
from .legacy_st import read_legacy_st
from .visium import read_visium

__all__ = ["SpatialData", "read_hest", "read_legacy_st", "read_visium"]
