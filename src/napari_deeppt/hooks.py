"""Let a front end see results computed from its own objects, without the core knowing it.

The napari glue registers a sink when it is imported; core functions called with a napari
layer (``detect_tissue(viewer.layers["slide"])`` in the console) publish their result, and the
sink adds the matching layers next to that layer. Nothing here imports napari.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["publish", "register_result_sink"]

_SINKS: list[Callable[[Any, Any], None]] = []


def register_result_sink(sink: Callable[[Any, Any], None]) -> None:
    """Call ``sink(source, result)`` for every published result (idempotent)."""
    if sink not in _SINKS:
        _SINKS.append(sink)


def publish(source: Any, result: Any) -> None:
    """Offer ``result``, computed from ``source``, to the registered sinks."""
    if isinstance(source, (str, bytes)) or not hasattr(source, "metadata"):
        return  # only front-end objects (layers) are of interest
    for sink in list(_SINKS):
        sink(source, result)
