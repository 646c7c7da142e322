"""Files in and out: safe writes (:mod:`.files`), QuPath GeoJSON (:mod:`.geojson`), the
tables a user gives (:mod:`.tables`).

The names of :mod:`.files` (``atomic_path``, ``atomic_outputs``, ``cache_root``,
``describe_os_error``, ``file_sha256``, ``keep_recent``, ``mark_used``, ``partial_name``,
``remove_stale_partials``) are
re-exported here, so ``from napari_deeppt.io import atomic_path`` is the way to reach them.
"""

from __future__ import annotations

from .files import *  # noqa: F403 (exactly the names of files.__all__)
from .files import __all__ as __all__
