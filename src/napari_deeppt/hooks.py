"""Let a front end see results computed from its own objects, without the core knowing it.

The napari glue registers a sink when it is imported; core functions called with a napari
layer (``detect_tissue(viewer.layers["slide"])`` in the console) publish their result, and the
sink adds the matching layers next to that layer. Nothing here imports napari.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["adapt_regions", "publish", "register_region_adapter", "register_result_sink"]

_SINKS: list[Callable[[Any, Any], None]] = []
_REGION_ADAPTERS: list[Callable[[Any, Any], Any]] = []


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


def register_region_adapter(adapter: Callable[[Any, Any], Any]) -> None:
    """Let a front end turn its own objects into regions of interest (idempotent).

    ``adapter(regions, source)`` returns level-0 :class:`~napari_deeppt.geometry.Region`
    objects for a front-end object (a napari Shapes layer drawn over ``source``), or None
    when it does not know ``regions``.
    """
    if adapter not in _REGION_ADAPTERS:
        _REGION_ADAPTERS.append(adapter)


def adapt_regions(regions: Any, source: Any) -> Any:
    """``regions`` converted by the first adapter that knows it, else unchanged."""
    for adapter in list(_REGION_ADAPTERS):
        converted = adapter(regions, source)
        if converted is not None:
            return converted
    return regions
