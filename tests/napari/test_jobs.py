"""Jobs of the docks: closing the dock or the viewer mid-run cancels the job cleanly."""

from __future__ import annotations

import gc
import threading
import time
from typing import Any

from napari_deeppt.errors import CancelledError


class SlowCore:
    """A core function that works in 0.05 s steps, reports progress and honours ``cancel``."""

    __name__ = "slow_core"

    def __init__(self, steps: int = 400) -> None:
        self.steps = steps
        self.done = 0
        self.saw_cancel = threading.Event()
        self.ended = threading.Event()

    def __call__(self, progress: Any = None, cancel: Any = None) -> str:
        try:
            for i in range(self.steps):
                if cancel():
                    self.saw_cancel.set()
                    raise CancelledError("slow_core was cancelled")
                time.sleep(0.05)
                self.done = i + 1
                progress(i + 1, self.steps, "slow step")
            return "finished"
        finally:
            self.ended.set()


def _running_dock(qtbot, viewer):
    """The "Tissue & tiles" dock (built as napari does) running a :class:`SlowCore`."""
    dock, widget = viewer.window.add_plugin_dock_widget("napari-deeppt", "Tissue & tiles")
    core, results = SlowCore(), []
    job = widget._start(core, {}, results.append)
    qtbot.waitUntil(lambda: core.done >= 3 and "slow step" in widget.status.value, timeout=10_000)
    return dock, widget, job, core, results


def _ends_cleanly(qtbot, job, core, results) -> None:
    """The core function saw the cancel and returned; its worker ended; nothing came back."""
    qtbot.waitUntil(core.ended.is_set, timeout=5_000)
    assert job.cancelled and core.saw_cancel.is_set()
    assert core.done < core.steps
    qtbot.waitUntil(lambda: not job.worker.is_running, timeout=5_000)
    qtbot.wait(200)  # let queued signals arrive: they must not reach the gone dock
    assert results == []


def test_closing_the_dock_mid_run_cancels_its_job(qtbot, make_napari_viewer):
    viewer = make_napari_viewer()
    dock, widget, job, core, results = _running_dock(qtbot, viewer)
    dock.title.close_button.click()  # the dock's ✕: napari takes the dock out of the window
    assert job.cancelled
    del widget, dock
    gc.collect()
    _ends_cleanly(qtbot, job, core, results)
    assert len(viewer.layers) == 0


def test_a_deleted_dock_is_never_touched_by_its_job(qtbot, make_napari_viewer):
    """Once the dock's Qt widgets are gone, late progress or results are dropped."""
    viewer = make_napari_viewer()
    dock, widget, job, core, results = _running_dock(qtbot, viewer)
    viewer.window.remove_dock_widget(dock)
    widget.native.deleteLater()
    qtbot.waitUntil(lambda: job.cancelled, timeout=5_000)
    _ends_cleanly(qtbot, job, core, results)


def test_closing_the_viewer_mid_run_cancels_the_job(qtbot, make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget, job, core, results = _running_dock(qtbot, viewer)
    del widget
    viewer.close()
    _ends_cleanly(qtbot, job, core, results)


def test_closing_the_viewer_mid_run_waits_for_the_job(qtbot, make_napari_viewer):
    """When the dock is deleted with the window, its core function has already stopped."""
    viewer = make_napari_viewer()
    _, widget, job, core, results = _running_dock(qtbot, viewer)
    at_deletion = []
    widget.native.destroyed.connect(lambda *_: at_deletion.append(core.ended.is_set()))
    del widget
    viewer.close()
    qtbot.waitUntil(lambda: bool(at_deletion), timeout=5_000)
    assert at_deletion == [True]
    _ends_cleanly(qtbot, job, core, results)


def test_napari_asking_the_worker_to_quit_cancels_the_core_function(qtbot, make_napari_viewer):
    """napari quits workers when its window closes or the app quits: the core stops too."""
    viewer = make_napari_viewer()
    _, widget, job, core, results = _running_dock(qtbot, viewer)
    job.worker.quit()
    _ends_cleanly(qtbot, job, core, results)
    qtbot.waitUntil(lambda: widget._job is None, timeout=5_000)
    assert widget.status.value == widget.cancelled_message
    assert widget.run_button.enabled and not widget.cancel_button.enabled
