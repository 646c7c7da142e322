"""Issue 12, item 8: the plugin's docks, as the Plugins menu opens them, fit the window,
tab together and explain every field."""

from __future__ import annotations

import pytest

DOCKS = ["Tissue & tiles", "Extract features", "Predict expression", "Treatment response"]


def _fields(widget):
    """The dock's input fields (whether drawn in the dock or in a folded section)."""
    from magicgui.widgets import FileEdit, Label, ProgressBar, PushButton, Table
    from magicgui.widgets.bases import ValueWidget

    return {
        name: value
        for name, value in vars(widget).items()
        if isinstance(value, (ValueWidget, FileEdit))
        and not isinstance(value, (Label, ProgressBar, PushButton, Table))
    }


@pytest.mark.parametrize("dock", DOCKS)
def test_every_field_has_a_tooltip(make_napari_viewer, dock):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-deeppt", dock)
    fields = _fields(widget)
    assert len(fields) >= 3
    missing = sorted(name for name, field in fields.items() if len(field.tooltip or "") < 15)
    assert not missing, f"no tooltip: {missing}"
