"""Fixtures shared by the napari dock tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def error_notifications():
    """The messages of the error notifications napari shows during the test."""
    from napari.utils.notifications import NotificationSeverity, notification_manager

    seen = []

    def keep(notification):
        if notification.severity == NotificationSeverity.ERROR:
            seen.append(notification.message)

    notification_manager.notification_ready.connect(keep)
    yield seen
    notification_manager.notification_ready.disconnect(keep)
