"""Features back to the host, one batch late on CUDA (pinned memory, events)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["Readback"]


class Readback:
    """Copies features to the host, overlapping the copy with the next batch on CUDA.

    :meth:`push` queues a batch's copy and returns the batches whose copies are complete:
    on the CPU the batch itself, on CUDA the previous one, so the GPU computes batch ``k``
    while the host stores batch ``k - 1``.

    Parameters
    ----------
    device
        The ``torch.device`` the features are computed on.
    batch, dim
        The largest batch and the feature dimension (the size of the host buffers).
    deferred
        Return each batch one push late; default: on CUDA only.
    """

    def __init__(self, device: Any, batch: int, dim: int, deferred: bool | None = None) -> None:
        import torch

        self.cuda = device.type == "cuda"
        self.deferred = self.cuda if deferred is None else deferred
        self.pending: list[tuple[int, Any, Any]] = []
        self.host = [torch.empty((batch, dim), dtype=torch.float32) for _ in range(2)]
        if self.cuda:
            self.host = [buffer.pin_memory() for buffer in self.host]
        self.turn = 0

    def push(self, start: int, feats: Any) -> list[tuple[int, np.ndarray]]:
        """Queue the copy of ``feats`` (rows from ``start``); return the finished batches."""
        import torch

        if not self.deferred:
            return [(start, feats.float().cpu().numpy())]
        host = self.host[self.turn][: int(feats.shape[0])]
        host.copy_(feats.float(), non_blocking=self.cuda)
        event = None
        if self.cuda:
            event = torch.cuda.Event()
            event.record()
        self.turn = 1 - self.turn
        self.pending.append((start, host, event))
        return self._collect(keep=1)

    def flush(self) -> list[tuple[int, np.ndarray]]:
        """Wait for and return every batch still queued."""
        return self._collect(keep=0)

    def _collect(self, keep: int) -> list[tuple[int, np.ndarray]]:
        ready = []
        while len(self.pending) > keep:
            start, host, event = self.pending.pop(0)
            if event is not None:
                event.synchronize()
            ready.append((start, host.numpy().copy()))
        return ready
