"""Files in and out: safe writes (:mod:`.files`) and QuPath GeoJSON (:mod:`.geojson`).

The names of :mod:`.files` are re-exported here, so ``from napari_deeppt.io import atomic_path``
is the way to reach them.
"""

from __future__ import annotations

from .files import (
    atomic_outputs,
    atomic_path,
    cache_root,
    describe_os_error,
    file_sha256,
    partial_name,
    remove_stale_partials,
)

__all__ = [
    "atomic_outputs",
    "atomic_path",
    "cache_root",
    "describe_os_error",
    "file_sha256",
    "partial_name",
    "remove_stale_partials",
]
