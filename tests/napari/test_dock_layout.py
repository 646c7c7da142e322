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


def test_docks_opened_one_after_another_become_tabs(make_napari_viewer, qtbot):
    """As from the Plugins menu (no tabify asked): the docks share one tabbed area, each as
    tall as the window allows, instead of a column taller than the screen."""
    from qtpy.QtWidgets import QDockWidget

    viewer = make_napari_viewer()
    viewer.window._qt_window.resize(1200, 800)
    viewer.window._qt_window.show()
    docks = []
    for name in DOCKS:
        dock, _ = viewer.window.add_plugin_dock_widget("napari-deeppt", name)
        docks.append(dock)
        qtbot.wait(50)  # the dock joins its siblings once napari has placed it
    window = viewer.window._qt_window
    first = docks[0]
    assert set(window.tabifiedDockWidgets(first)) == set(docks[1:])
    from qtpy.QtWidgets import QTabBar

    titles = [bar.tabText(i) for bar in window.findChildren(QTabBar) for i in range(bar.count())]
    assert any(t.startswith("Tissue && tiles") for t in titles), titles  # shown as "Tissue & tiles"
    ours = [d for d in window.findChildren(QDockWidget) if d in docks]
    assert len(ours) == 4
    assert window.height() == 800  # the window did not grow (the docks scroll instead)
    table = docks[2].inner_widget().table.native  # Predict's top genes
    predict = docks[2]
    predict.raise_()
    qtbot.wait(10)
    row = table.verticalHeader().defaultSectionSize()
    assert table.height() >= 5 * row  # several rows of the top-genes table, not 1.5
