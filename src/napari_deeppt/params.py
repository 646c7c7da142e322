"""Parameter dataclasses as the single source of defaults and help for every front end.

A step's settings are a frozen dataclass (``TissueParams``, ``TileGridParams``,
``TrainingSettings`` …) whose fields carry the defaults and whose numpydoc ``Attributes``
section says what each field means. The command line (:mod:`napari_deeppt.cli.common`) and the
docks (:mod:`napari_deeppt._napari.fields`) read both from here, so a default or its
explanation changes in one place.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from functools import cache
from typing import Any

__all__ = ["field_default", "field_doc", "field_of"]


def field_of(cls: type, name: str) -> dataclasses.Field[Any]:
    """The dataclass field ``cls.name``.

    Parameters
    ----------
    cls, name
        A dataclass and the name of one of its fields.

    Returns
    -------
    dataclasses.Field

    Raises
    ------
    AttributeError
        ``cls`` has no such field.
    """
    for field in dataclasses.fields(cls):
        if field.name == name:
            return field
    raise AttributeError(f"{cls.__name__} has no field {name!r}")


def field_default(cls: type, name: str) -> Any:
    """The default value of ``cls.name`` (a factory's product for mutable defaults).

    Parameters
    ----------
    cls, name
        As for :func:`field_of`.

    Returns
    -------
    Any
        The field's default; for a ``default_factory`` field, a new object at every call.

    Raises
    ------
    AttributeError
        ``cls`` has no such field.
    TypeError
        The field has no default.
    """
    field = field_of(cls, name)
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    raise TypeError(f"{cls.__name__}.{name} has no default")


def field_doc(cls: type, name: str) -> str:
    """What ``cls.name`` means, from the ``Attributes`` section of ``cls``'s docstring.

    Entries may document several fields at once (``closing_um, opening_um``). Returns ``""``
    when the field is not documented.

    Parameters
    ----------
    cls, name
        A class whose docstring has a numpydoc ``Attributes`` section, and a field's name.

    Returns
    -------
    str
        The entry's description lines joined by spaces.
    """
    return _attribute_docs(cls).get(name, "")


@cache
def _attribute_docs(cls: type) -> dict[str, str]:
    doc = inspect.cleandoc(cls.__doc__ or "")
    match = re.search(r"^Attributes\n-+\n(.*?)(?:\n\S[^\n]*\n-+\n|\Z)", doc, re.S | re.M)
    if not match:
        return {}
    docs: dict[str, str] = {}
    names: list[str] = []
    for line in match.group(1).splitlines():
        if line and not line[0].isspace():
            names = [n.strip().split(" :")[0] for n in line.split(",")]
        elif line.strip() and names:
            for field_name in names:
                docs[field_name] = f"{docs.get(field_name, '')} {line.strip()}".strip()
    return docs
