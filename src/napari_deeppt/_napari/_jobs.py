"""Run a core function in a napari generator thread worker, with progress and Cancel.

Core functions report through ``progress(done, total, message)`` callbacks and stop when
their ``cancel`` token is set. :func:`start_job` runs one in a background thread and turns its
callbacks into the ``yielded`` events of a napari ``GeneratorWorker``, so the UI thread only
ever touches Qt from signals.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator
from typing import Any

from magicgui.widgets import Container, Label, ProgressBar, PushButton

from ..progress import CancelToken

__all__ = ["Job", "JobWidget", "start_job"]

_DONE = object()


class _Failure:
    """What a job returns instead of raising, so errors never surface in the Qt event loop."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class Job:
    """A running core function: its worker, its cancel token, and whether it was cancelled."""

    def __init__(self, worker: Any, token: CancelToken) -> None:
        self.worker = worker
        self.token = token

    def cancel(self) -> None:
        self.token.cancel()

    @property
    def cancelled(self) -> bool:
        return self.token.cancelled


def _bridge(
    func: Callable[..., Any], kwargs: dict[str, Any], token: CancelToken
) -> Generator[tuple[int, int, str], None, Any]:
    events: queue.Queue = queue.Queue()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = func(
                progress=lambda d, t, m: events.put((d, t, m)), cancel=token, **kwargs
            )
        except BaseException as exc:  # re-raised in the worker thread below
            box["error"] = exc
        finally:
            events.put(_DONE)

    thread = threading.Thread(target=target, name=f"deeppt-{func.__name__}", daemon=True)
    thread.start()
    while True:
        item = events.get()
        if item is _DONE:
            break
        yield item
    thread.join()
    if "error" in box:
        return _Failure(box["error"])
    return box.get("result")


def start_job(
    func: Callable[..., Any],
    kwargs: dict[str, Any],
    *,
    on_progress: Callable[[int, int, str], None],
    on_result: Callable[[Any], None],
    on_error: Callable[[BaseException], None],
    on_finished: Callable[[], None] | None = None,
) -> Job:
    """Start ``func(progress=..., cancel=..., **kwargs)`` in a generator thread worker."""
    from napari.qt.threading import create_worker

    token = CancelToken()
    worker = create_worker(_bridge, func, kwargs, token, _start_thread=False)
    worker.yielded.connect(lambda event: on_progress(*event))

    def dispatch(result: Any) -> None:
        if isinstance(result, _Failure):
            on_error(result.error)
        else:
            on_result(result)

    worker.returned.connect(dispatch)
    worker.errored.connect(on_error)  # a failure of the bridge itself
    if on_finished is not None:
        worker.finished.connect(on_finished)
    worker.start()
    return Job(worker, token)


def offer_console(viewer: Any) -> None:
    """Put the layer-aware calls (:mod:`napari_deeppt._napari.console`) in napari's console
    as ``deeppt``; a viewer without a console (headless, a proxy without it) is left alone."""
    from . import console

    try:
        viewer.update_console({"deeppt": console})
    except Exception:  # the console is optional (qtconsole not installed, no window)
        pass


class JobWidget(Container):
    """A dock that runs one core function at a time in a worker.

    Provides the run and Cancel buttons, the progress bar, the status line and the
    callbacks that keep them right; subclasses add their fields and call :meth:`_start`.
    """

    cancelled_message = "cancelled; layers unchanged"

    def __init__(self, napari_viewer: Any, run_text: str) -> None:
        super().__init__(labels=True)
        self._viewer = napari_viewer
        offer_console(napari_viewer)
        self._job: Job | None = None
        self.run_button = PushButton(text=run_text)
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", value=0, min=0, max=1)
        self.status = Label(label="status", value="")
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)

    @staticmethod
    def _chosen_file(widget: Any) -> str | None:
        """The path in a FileEdit, or None when it is empty or not a file."""
        from pathlib import Path

        value = str(widget.value or "")
        return value if value not in ("", ".") and Path(value).is_file() else None

    @staticmethod
    def _regions_picker() -> Any:
        """A nullable choice of Shapes layer: regions of interest drawn on the slide."""
        from typing import Optional

        from magicgui.widgets import create_widget

        import napari

        return create_widget(
            annotation=Optional[napari.layers.Shapes],  # noqa: UP045 - magicgui reads it
            label="regions (shapes)",
            options={"tooltip": "polygons, rectangles or ellipses drawn on the slide"},
        )

    @staticmethod
    def _chosen_regions(picker: Any, slide_layer: Any) -> list[Any] | None:
        """The picked shapes layer as level-0 regions, or None when none is picked."""
        from .layers import shapes_to_regions

        shapes = picker.value
        if shapes is None:
            return None
        regions = shapes_to_regions(shapes, slide_layer)
        if not regions:
            raise ValueError(
                f"shapes layer {shapes.name!r} has no polygon, rectangle or ellipse to use"
            )
        return regions

    def _controls(self) -> list[Any]:
        return [self.run_button, self.cancel_button, self.progress, self.status]

    def _fold(self, title: str, widgets: list[Any], before: Any, expanded: bool = False) -> Any:
        """Put ``widgets`` in a collapsible section placed just above ``before``.

        The widgets keep working as attributes of the dock (values, signals, tests); only
        where they are drawn changes. Returns the section (a ``superqt.QCollapsible``).
        """
        from magicgui.widgets import Container
        from superqt import QCollapsible

        inner = Container(widgets=widgets, labels=True)
        inner.margins = (0, 0, 0, 0)
        section = QCollapsible(title)
        section.addWidget(inner.native)
        section.setContentsMargins(0, 0, 0, 0)
        if expanded:
            section.expand(animate=False)
        else:
            section.collapse(animate=False)
        layout = self.native.layout()
        row = before.native
        while row.parentWidget() is not None and row.parentWidget() is not self.native:
            row = row.parentWidget()  # the labelled row magicgui wrapped it in
        layout.insertWidget(layout.indexOf(row), section)
        self._folds = [*getattr(self, "_folds", []), (section, inner)]  # keep them alive
        return section

    def run(self) -> Job | None:  # pragma: no cover - every dock overrides it
        raise NotImplementedError

    def _busy(self, busy: bool) -> None:
        self.run_button.enabled = not busy
        self.cancel_button.enabled = busy

    def _on_progress(self, done: int, total: int, message: str) -> None:
        self.progress.max = max(total, 1)
        self.progress.value = min(done, max(total, 1))
        self.status.value = f"{message} ({done}/{total})"

    def _on_error(self, exc: BaseException) -> None:
        from napari.utils.notifications import show_error

        from ..errors import CancelledError

        if isinstance(exc, CancelledError):
            self.status.value = self.cancelled_message
        else:
            self.status.value = f"error: {exc}"
            show_error(str(exc))

    def _finished(self) -> None:
        self._job = None
        self._busy(False)

    def _start(
        self,
        func: Callable[..., Any],
        kwargs: dict[str, Any],
        on_result: Callable[[Any], None],
        status: str = "running…",
    ) -> Job:
        self._busy(True)
        self.status.value = status
        self._job = start_job(
            func,
            kwargs,
            on_progress=self._on_progress,
            on_result=on_result,
            on_error=self._on_error,
            on_finished=self._finished,
        )
        return self._job

    def cancel(self) -> None:
        if self._job is not None:
            self.status.value = "cancelling…"
            self._job.cancel()
