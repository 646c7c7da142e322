"""OME metadata that several backends read: OME-XML (OME-TIFF, bioformats2raw Zarr) and units."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from typing import Any

from .base import SlideParts

__all__ = ["UNIT_TO_UM", "parse_ome_xml", "positive_float"]

#: Physical units to micrometres (OME UnitsLength symbols and common spellings).
UNIT_TO_UM = {
    "m": 1e6,
    "cm": 1e4,
    "mm": 1e3,
    "µm": 1.0,
    "μm": 1.0,
    "um": 1.0,
    "micrometer": 1.0,
    "micron": 1.0,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "å": 1e-4,
    "Å": 1e-4,
    "millimeter": 1e3,
    "centimeter": 1e4,
    "meter": 1e6,
    "in": 25400.0,
    "inch": 25400.0,
}


def positive_float(value: Any) -> float | None:
    """``value`` as a float when it is a positive number, else None (metadata text).

    Parameters
    ----------
    value
        A metadata value: a number, its text, or anything else (None, a dict ...).

    Returns
    -------
    float or None
        None when ``float(value)`` fails, is not above 0 (NaN included) or is infinite.
    """
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if 0 < out < math.inf else None


def parse_ome_xml(xml: str, shape_yx: tuple[int, int], parts: SlideParts) -> None:
    """Fill ``parts``' pixel size (with units) and nominal magnification from OME-XML.

    Parameters
    ----------
    xml
        The OME-XML document; one that does not parse is ignored.
    shape_yx
        ``(rows, columns)`` of level 0: the ``Image`` whose ``Pixels`` have this size is
        preferred when the document describes several.
    parts
        Updated in place: ``mpp_xy``/``mpp_source`` when a physical size is given,
        ``objective_power`` when an objective states its magnification.
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return
    ns = root.tag.split("}")[0] + "}" if root.tag.startswith("{") else ""
    best = None
    for image in root.iter(f"{ns}Image"):
        pixels = image.find(f"{ns}Pixels")
        if pixels is None:
            continue
        size = (int(pixels.get("SizeY", 0)), int(pixels.get("SizeX", 0)))
        if best is None or size == shape_yx:
            best = pixels
    if best is not None:
        values = []
        for axis in ("X", "Y"):
            value = positive_float(best.get(f"PhysicalSize{axis}"))
            unit = best.get(f"PhysicalSize{axis}Unit", "µm")
            values.append(value * UNIT_TO_UM.get(unit, float("nan")) if value else None)
        if values[0] and values[0] == values[0]:
            parts.mpp_xy = (values[0], values[1] or values[0])
            parts.mpp_source = "OME PhysicalSizeX/Y"
    for objective in root.iter(f"{ns}Objective"):
        mag = positive_float(objective.get("NominalMagnification"))
        if mag:
            parts.objective_power = mag
            break
