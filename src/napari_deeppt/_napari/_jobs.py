"""Run a core function in a napari generator thread worker, with progress and Cancel.

Core functions report through ``progress(done, total, message)`` callbacks and stop when
their ``cancel`` token is set. :func:`start_job` runs one in a background thread and turns its
callbacks into the ``yielded`` events of a napari ``GeneratorWorker``, so the UI thread only
ever touches Qt from signals.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable, Generator
from typing import Any

from magicgui.widgets import Container, Label, ProgressBar, PushButton

from ..errors import CancelledError
from ..progress import CancelToken
from .docking import ScrollingDock

__all__ = [
    "DockJobs",
    "Job",
    "JobWidget",
    "StatusLine",
    "breakable",
    "report_error",
    "start_job",
]

_DONE = object()


class _Failure:
    """What a job returns instead of raising, so errors never surface in the Qt event loop."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class Job:
    """A running core function: its worker, its cancel token, and whether it was cancelled.

    While :attr:`attached` is True the job's callbacks reach its dock; :meth:`detach` drops
    them (the dock is closing and its Qt widgets may already be gone).
    """

    def __init__(self, worker: Any, token: CancelToken, ended: threading.Event) -> None:
        self.worker = worker
        self.token = token
        self.attached = True
        self._ended = ended

    def cancel(self) -> None:
        self.token.cancel()

    @property
    def cancelled(self) -> bool:
        return self.token.cancelled

    def detach(self) -> None:
        """From now on the job's progress, result, error and finish are dropped."""
        self.attached = False

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the core function to return; True if it has."""
        return self._ended.wait(timeout)


def _bridge(
    func: Callable[..., Any], kwargs: dict[str, Any], token: CancelToken, ended: threading.Event
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
            ended.set()
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


@functools.cache
def _worker_class() -> type:
    """napari's ``GeneratorWorker`` whose ``quit()`` also sets the core function's token.

    napari asks every worker it knows to quit when its window closes (its task status
    manager); the core function must then stop too, not run on behind a closed viewer.
    """
    from napari.qt.threading import GeneratorWorker

    class CancellingWorker(GeneratorWorker):
        token: CancelToken | None = None

        def quit(self) -> None:
            super().quit()
            if self.token is not None:
                self.token.cancel()

    return CancellingWorker


def start_job(
    func: Callable[..., Any],
    kwargs: dict[str, Any],
    *,
    on_progress: Callable[[int, int, str], None],
    on_result: Callable[[Any], None],
    on_error: Callable[[BaseException], None],
    on_finished: Callable[[], None] | None = None,
) -> Job:
    """Start ``func(progress=..., cancel=..., **kwargs)`` in a generator thread worker.

    The callbacks run in the UI thread, and only while the job is attached (:meth:`Job.detach`).
    """
    from napari.qt.threading import create_worker

    token, ended = CancelToken(), threading.Event()
    worker = create_worker(
        _bridge, func, kwargs, token, ended, _start_thread=False, _worker_class=_worker_class()
    )
    worker.token = token
    job = Job(worker, token, ended)

    def attached(callback: Callable[..., None]) -> Callable[..., None]:
        def call(*args: Any) -> None:
            if job.attached:
                callback(*args)

        return call

    def dispatch(result: Any) -> None:
        if isinstance(result, _Failure):
            on_error(result.error)
        else:
            on_result(result)

    worker.yielded.connect(attached(lambda event: on_progress(*event)))
    worker.returned.connect(attached(dispatch))
    worker.errored.connect(attached(on_error))  # a failure of the bridge itself
    # napari quit the worker (its window closed, the app quits): nothing is returned then
    cancelled = CancelledError(f"{func.__name__} was cancelled; nothing partial was kept")
    worker.aborted.connect(attached(lambda: on_error(cancelled)))
    if on_finished is not None:
        worker.finished.connect(attached(on_finished))
    worker.start()
    return job


def offer_console(viewer: Any) -> None:
    """Put the layer-aware calls (:mod:`napari_deeppt._napari.console`) in napari's console
    as ``deeppt``; a viewer without a console (headless, a proxy without it) is left alone."""
    from . import console

    try:
        viewer.update_console({"deeppt": console})
    except Exception:  # the console is optional (qtconsole not installed, no window)
        pass


_ZWSP = "\u200b"  # zero-width space: an invisible place where Qt may break a line
_RUN = 24  # longest run of characters shown without a place to break it


def breakable(text: str) -> str:
    """``text`` with invisible line-break points inside runs Qt would not break.

    Qt wraps at spaces and after ``/`` and ``-``; a file name such as
    ``resnet50_imagenet_weights_for_the_extractor.pth`` has neither, so a run longer than
    ``_RUN`` characters gets a zero-width space after each ``_ . , ; :`` and then after
    every ``_RUN`` characters of what is still longer. For display only.
    """
    import re

    def split(match: re.Match[str]) -> str:
        parts = re.sub(r"([_.,;:])", rf"\1{_ZWSP}", match.group()).split(_ZWSP)
        chunks = [p[i : i + _RUN] for p in parts for i in range(0, max(len(p), 1), _RUN)]
        return _ZWSP.join(chunks)

    return re.sub(rf"[^\s/\\-]{{{_RUN + 1},}}", split, text)


class StatusLine(Label):
    """A dock's status line: it wraps, and however long its text it never widens the dock.

    magicgui's Label keeps its text on one line at a fixed size, so a long message (an
    error naming deep paths) made the dock as wide as the message and left the canvas
    none. This one takes the dock's width and wraps within it, long file names included
    (:func:`breakable`); :attr:`value` and the tooltip keep the text as it is.
    """

    def __init__(self, **kwargs: Any) -> None:
        from qtpy.QtWidgets import QSizePolicy

        self._text = ""
        super().__init__(**kwargs)
        label = self.native
        label.setSizePolicy(QSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Minimum))
        label.setWordWrap(True)  # after the policy: it marks the height as width-dependent
        label.setMinimumWidth(0)

    def get_value(self) -> str:
        """The text as it was set (without the display's break points)."""
        return self._text

    def set_value(self, value: Any) -> None:
        """Show ``value``, wrapped; the tooltip repeats it (Qt wraps rich-text tooltips)."""
        import html

        self._text = str(value)
        super().set_value(breakable(self._text))
        self.native.setToolTip(f"<p>{html.escape(self._text)}</p>" if self._text else "")


def report_error(status: Any, exc: BaseException) -> None:
    """Say ``exc`` on a dock's status line and in napari's notifications."""
    from napari.utils.notifications import show_error

    status.value = f"error: {exc}"
    show_error(str(exc))


class DockJobs:
    """The jobs a dock has started; :meth:`close` ends them when the dock goes away.

    It holds no reference to the dock, so it can run while the dock's Qt widgets are being
    deleted: it detaches every job (their callbacks would touch those widgets), sets their
    cancel tokens and waits up to :attr:`wait_s` seconds for the core functions to return.
    """

    wait_s = 5.0

    def __init__(self) -> None:
        self._jobs: set[Job] = set()

    def add(self, job: Job) -> None:
        self._jobs.add(job)

    def discard(self, job: Job) -> None:
        self._jobs.discard(job)

    def close(self, *_: Any) -> None:
        """Detach and cancel every job, then wait (bounded) for their core functions."""
        import time

        jobs, self._jobs = list(self._jobs), set()
        for job in jobs:
            job.detach()
            job.cancel()
        deadline = time.monotonic() + self.wait_s
        for job in jobs:
            job.wait(max(0.0, deadline - time.monotonic()))

    def on_parent_changed(self, parent: Any) -> None:
        """napari takes a closed dock's widget out of its window: the parent becomes None."""
        if parent is None:
            self.close()


class JobWidget(ScrollingDock, Container):
    """A dock that runs one core function at a time in a worker.

    Provides the run and Cancel buttons, the progress bar, the status line and the
    callbacks that keep them right; subclasses add their fields and call :meth:`_start`.
    Closing the dock (its ✕ takes it out of the window) or the viewer (which deletes it)
    cancels the running job and waits for it to stop; nothing the job reports afterwards
    reaches the dock.
    """

    cancelled_message = "cancelled; layers unchanged"

    def __init__(self, napari_viewer: Any, run_text: str) -> None:
        from .docking import tab_when_docked

        super().__init__(labels=True, scrollable=True)
        self._viewer = napari_viewer
        offer_console(napari_viewer)
        tab_when_docked(self.native)
        self._job: Job | None = None
        self._jobs = DockJobs()
        self.on_dock_parent_changed(self._jobs.on_parent_changed)
        self.native.destroyed.connect(functools.partial(DockJobs.close, self._jobs))
        self.run_button = PushButton(text=run_text)
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", value=0, min=0, max=1)
        self.status = StatusLine(label="status", value="")
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)

    @staticmethod
    def _chosen_file(widget: Any) -> str | None:
        """The path in a FileEdit, None when it is empty; a path that is not a file is an
        error (a mistyped weights path must not silently mean "the default weights")."""
        from pathlib import Path

        value = str(widget.value or "")
        if value in ("", "."):
            return None
        if not Path(value).is_file():
            raise ValueError(f"{value}: no such file (check the '{widget.label}' field)")
        return value

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
        layout = self.inner.layout()
        row = before.native
        while row.parentWidget() is not None and row.parentWidget() is not self.inner:
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
        if isinstance(exc, CancelledError):
            self.status.value = self.cancelled_message
        else:
            report_error(self.status, exc)

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

        def finished() -> None:
            self._jobs.discard(job)
            self._finished()

        job = start_job(
            func,
            kwargs,
            on_progress=self._on_progress,
            on_result=on_result,
            on_error=self._on_error,
            on_finished=finished,
        )
        self._jobs.add(job)
        self._job = job
        return job

    def cancel(self) -> None:
        if self._job is not None:
            self.status.value = "cancelling…"
            self._job.cancel()
