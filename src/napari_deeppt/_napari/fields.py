"""Dock fields made from the core's parameter dataclasses: their defaults and their help.

``param_widget(TissueParams, "min_area_um2", "min piece (µm²)")`` gives a magicgui widget whose
value is the dataclass default and whose tooltip is the field's documentation
(:mod:`napari_deeppt.params`), so the dock, the command line and the API agree.
"""

from __future__ import annotations

from typing import Any

from magicgui.widgets import CheckBox, FloatSpinBox, SpinBox

from ..params import field_default, field_doc

__all__ = ["choice_widget", "layer_picker", "param_widget", "slide_picker"]


def param_widget(cls: type, name: str, label: str, *, value: Any = None, **options: Any) -> Any:
    """A checkbox or spin box for field ``cls.name``: its default, its documentation as tooltip.

    Parameters
    ----------
    cls, name
        The parameter dataclass and the field.
    label
        The label shown in the dock.
    value
        Shown instead of the default (e.g. 0 for a ``None`` default that means "same as").
    **options
        Passed to the widget (``min``, ``max``, ``step``; ``tooltip`` to add to the field's
        documentation).
    """
    default = field_default(cls, name) if value is None else value
    extra = options.pop("tooltip", "")
    tooltip = " ".join(t for t in (field_doc(cls, name).replace("``", ""), extra) if t)
    if isinstance(default, bool):
        return CheckBox(label=label, value=default, tooltip=tooltip, **options)
    kind = SpinBox if isinstance(default, int) else FloatSpinBox
    return kind(label=label, value=default, tooltip=tooltip, **options)


def choice_widget(cls: type, name: str, label: str, choices: Any, **options: Any) -> Any:
    """A drop-down for field ``cls.name``: the values of an enum (or a list), its default and
    its documentation as tooltip."""
    from magicgui.widgets import ComboBox

    values = [str(getattr(c, "value", c)) for c in choices]
    default = str(field_default(cls, name))
    tooltip = field_doc(cls, name).replace("``", "")
    return ComboBox(label=label, choices=values, value=default, tooltip=tooltip, **options)


def layer_picker(viewer: Any, layer_type: type, label: str, prefer: str, tooltip: str = "") -> Any:
    """A layer drop-down that offers first (and switches to) the layers a dock needs.

    Layers whose ``metadata`` holds ``prefer`` (``"deeppt_grid"`` for tile layers,
    ``"deeppt_prediction"`` for expression maps) come first, the newest on top, then the
    other layers of ``layer_type``; when such a layer is added the picker selects it, so the
    first click of a dock never runs on the wrong layer.
    """
    from magicgui.widgets import ComboBox

    def choices(_widget: Any = None) -> list[tuple[str, Any]]:
        layers = [layer for layer in viewer.layers if isinstance(layer, layer_type)]
        preferred = [layer for layer in reversed(layers) if prefer in layer.metadata]
        others = [layer for layer in layers if prefer not in layer.metadata]
        return [(layer.name, layer) for layer in preferred + others]

    picker = ComboBox(label=label, choices=choices, tooltip=tooltip, nullable=False)

    def follow(event: Any) -> None:
        layer = event.value
        if isinstance(layer, layer_type) and prefer in layer.metadata:
            picker.reset_choices()
            names = [name for name, _ in choices()]
            picker.value = choices()[names.index(layer.name)][1]

    viewer.layers.events.inserted.connect(follow)
    viewer.layers.events.removed.connect(lambda _event: picker.reset_choices())
    return picker


def slide_picker() -> Any:
    """The slide drop-down of a dock: image layers, with what to pick as tooltip."""
    from magicgui.widgets import create_widget

    import napari

    return create_widget(
        annotation=napari.layers.Image,
        label="slide",
        options={
            "tooltip": "the whole-slide image to work on: a slide opened with napari-deeppt "
            "(File > Open, drag and drop, or File > Open Sample)"
        },
    )
