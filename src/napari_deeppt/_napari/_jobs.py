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

from ..progress import CancelToken

__all__ = ["Job", "start_job"]

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
