"""The plugin's docks share one place in napari's window: they open as tabs of each other.

napari's Plugins menu adds each dock below the previous ones (``tabify=False``), so opening
all four made a column taller than the screen, each dock squeezed to a sliver (the top-genes
table showed a row and a half). :func:`tab_with_plugin_docks` makes a dock a tab beside the
plugin's docks already open in the same area, however it was opened.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DOCK_PROPERTY", "ScrollingDock", "tab_when_docked", "tab_with_plugin_docks"]


class ScrollingDock:
    """Mixin for a magicgui ``Container(scrollable=True)`` that napari docks with its scroll
    area.

    napari docks a magicgui widget's ``native``, which for a scrollable container is the
    widget inside the scroll area: the scrolling was lost and each dock's minimum height was
    that of all its fields, so docks stacked below each other outgrew the screen. Here
    ``native`` is the scroll area (a dock can be as short as the window needs) and
    :attr:`inner` the widget holding the rows.
    """

    @property
    def native(self) -> Any:
        """The scroll area: what napari puts in the dock."""
        return self.root_native_widget  # type: ignore[attr-defined]

    @property
    def inner(self) -> Any:
        """The widget inside the scroll area, whose layout holds the dock's rows."""
        return self._widget._mgui_get_native_widget()  # type: ignore[attr-defined]

    def on_dock_parent_changed(self, callback: Any) -> None:
        """Call ``callback(parent)`` when the scroll area (what napari docks) is reparented:
        napari takes a closed dock's widget out of its window (parent None). magicgui's own
        ``native_parent_changed`` watches the inner widget, whose parent never changes."""
        from qtpy.QtCore import QEvent, QObject

        class ParentWatcher(QObject):
            def eventFilter(self, obj: Any, event: Any) -> bool:
                if event.type() == QEvent.Type.ParentChange:
                    callback(obj.parent())
                return False

        watcher = ParentWatcher(self.native)  # a child: lives as long as the scroll area
        self.native.installEventFilter(watcher)


#: Qt property that marks this plugin's dock widgets.
DOCK_PROPERTY = "napari_deeppt_dock"


def _ancestor(widget: Any, kind: type) -> Any:
    """The nearest parent of ``widget`` that is a ``kind``, or None."""
    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, kind):
        parent = parent.parentWidget()
    return parent


def tab_with_plugin_docks(native: Any) -> bool:
    """Put the dock holding ``native`` in a tab beside the plugin's other docks of its area.

    Returns True when it joined other docks; False when it is the first (or not docked).
    """
    from qtpy.QtWidgets import QDockWidget, QMainWindow

    dock = _ancestor(native, QDockWidget)
    window = None if dock is None else _ancestor(dock, QMainWindow)
    if window is None:
        return False
    dock.setProperty(DOCK_PROPERTY, True)
    _escape_ampersand(dock)
    area = window.dockWidgetArea(dock)
    siblings = [
        other
        for other in window.findChildren(QDockWidget)
        if other is not dock
        and other.property(DOCK_PROPERTY)
        and not other.isFloating()
        and other.isVisible()
        and window.dockWidgetArea(other) == area
    ]
    if not siblings:
        return False
    window.tabifyDockWidget(siblings[0], dock)
    dock.show()
    dock.raise_()
    return True


def _escape_ampersand(dock: Any) -> None:
    """Show "Tissue & tiles" in dock tabs as written: Qt reads a lone "&" in a tab's text as
    a shortcut marker (the tab read "Tissue _tiles"). Tabs take the dock's window title;
    napari's own title bar shows the dock's name and is unaffected."""
    title = dock.windowTitle()
    if "&" in title and "&&" not in title:
        dock.setWindowTitle(title.replace("&", "&&"))


def tab_when_docked(native: Any) -> None:
    """Call :func:`tab_with_plugin_docks` once napari has docked ``native`` (after the
    current event; nothing happens if the widget is deleted first)."""
    from qtpy.QtCore import QTimer

    timer = QTimer(native)  # a child: deleted with the widget, so it never fires after it
    timer.setSingleShot(True)
    timer.timeout.connect(lambda: tab_with_plugin_docks(native))
    timer.timeout.connect(timer.deleteLater)
    timer.start(0)
