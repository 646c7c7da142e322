"""Progress reporting and cancellation shared by every long-running core function.

Core functions take ``progress`` and ``cancel`` keyword arguments and know nothing about who
called them:

- ``progress``: ``None``/``False`` (silent), ``True`` (a tqdm bar on the terminal), or a
  callable ``progress(done, total, message)``. napari's widgets pass a callable that feeds
  ``napari.utils.progress`` from a thread worker.
- ``cancel``: ``None``, a :class:`CancelToken`, or any callable returning True once the user
  asked to stop. Functions check it between units of work and raise
  :class:`~napari_deeppt.errors.CancelledError`, leaving nothing half-written.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol, Union

from .errors import CancelledError

__all__ = ["CancelToken", "Progress", "ProgressCallback", "check_cancelled", "make_progress"]


class ProgressCallback(Protocol):
    def __call__(self, done: int, total: int, message: str) -> None: ...


ProgressLike = Union[bool, ProgressCallback, None]  # noqa: UP007 - runtime alias on 3.10
CancelLike = Union["CancelToken", Callable[[], bool], None]


class CancelToken:
    """A thread-safe flag: :meth:`cancel` from any thread, checked by the worker."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def __call__(self) -> bool:
        return self.cancelled


def check_cancelled(cancel: CancelLike, what: str = "the operation") -> None:
    """Raise :class:`CancelledError` if ``cancel`` says so.

    Parameters
    ----------
    cancel
        None, a :class:`CancelToken` or a callable returning True once the user asked to stop.
    what
        What was cancelled, for the message.

    Raises
    ------
    CancelledError
        ``cancel()`` returned true.
    """
    if cancel is not None and cancel():
        raise CancelledError(f"{what} was cancelled; nothing partial was kept")


class Progress:
    """Adapter that turns any ``ProgressLike`` into ``update``/``close`` calls."""

    def __init__(
        self, progress: ProgressLike, total: int, description: str, unit: str = "it"
    ) -> None:
        self.total = int(total)
        self.done = 0
        self.description = description
        self._callback: ProgressCallback | None = None
        self._bar: Any = None
        if progress is True:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=description, unit=unit, leave=False)
        elif callable(progress):
            self._callback = progress
            progress(0, self.total, description)

    def update(self, n: int = 1, message: str | None = None) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        if self._callback is not None:
            self._callback(self.done, self.total, message or self.description)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_progress(
    progress: ProgressLike, total: int, description: str, unit: str = "it"
) -> Progress:
    """Create a :class:`Progress` (a context manager).

    Parameters
    ----------
    progress
        None or False (silent), True (a tqdm bar) or a callable ``progress(done, total,
        message)``, called with ``(0, total, description)`` at once.
    total
        Units of work expected.
    description
        The bar's label, and the callback's message when an update gives none.
    unit
        The tqdm bar's unit.

    Returns
    -------
    Progress
    """
    return Progress(progress, total, description, unit)
