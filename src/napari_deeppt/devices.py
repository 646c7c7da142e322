"""Where torch work runs: resolved once, from ``"auto"`` (cuda > mps > cpu) or a name."""

from __future__ import annotations

import re
from enum import Enum
from typing import Any

__all__ = ["Device", "check_device_name", "resolve_device", "training_device"]

_NAME = re.compile(r"^(auto|(cpu|mps|cuda)(:\d+)?)$")


class Device(str, Enum):
    """The device choices: the one list for the API, the CLI and the docks.

    :func:`resolve_device` also takes an indexed name (``"cuda:1"``) or a ``torch.device``.
    """

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"
    MPS = "mps"

    def __str__(self) -> str:
        return self.value


def check_device_name(name: str) -> str:
    """``name`` in lower case when it names a device napari-deeppt runs on (no torch import).

    Parameters
    ----------
    name
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``, any case.

    Raises
    ------
    DeepPTError
        Any other text (``"gpu"``, ``"cuda:x"``, ``"meta"``).
    """
    from .errors import DeepPTError

    text = str(name).strip().lower()
    if not _NAME.match(text):
        raise DeepPTError(
            f"device {str(name)!r} is not one napari-deeppt runs on; use auto, cpu, cuda, "
            "cuda:N (the N-th GPU) or mps"
        )
    return text


def resolve_device(device: Device | str | Any = "auto") -> Any:
    """Return a ``torch.device``.

    Parameters
    ----------
    device
        A :class:`Device` or its value: ``"auto"`` (CUDA if available, else Apple MPS, else
        CPU), ``"cpu"``, ``"cuda"``, ``"mps"``; or ``"cuda:1"`` or a ``torch.device``.

    Returns
    -------
    torch.device

    Raises
    ------
    DeepPTError
        Not a device name, or CUDA or MPS was asked for but is not available.
    """
    import torch

    from .errors import DeepPTError

    if isinstance(device, torch.device):
        return device
    name = device.value if isinstance(device, Device) else str(device or "auto").lower()
    if name == Device.AUTO.value:
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    resolved = torch.device(check_device_name(name))
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeepPTError(
            f"device {str(device)!r} was requested but CUDA is not available here; "
            "use device='auto' or 'cpu'"
        )
    mps = getattr(torch.backends, "mps", None)
    if resolved.type == "mps" and not (mps is not None and mps.is_available()):
        raise DeepPTError(
            f"device {str(device)!r} was requested but Apple's MPS is not available here; "
            "use device='auto' or 'cpu'"
        )
    return resolved


def training_device(device: Device | str | Any = "auto") -> Any:
    """The ``torch.device`` training runs on for a feature ``device`` setting.

    CUDA when ``device`` resolves to a CUDA GPU (``"auto"`` with one present), else the CPU:
    training has not been validated on Apple's MPS, so it trains on the CPU there (features
    are still extracted on MPS).

    Parameters
    ----------
    device
        As :func:`resolve_device` takes it.

    Returns
    -------
    torch.device

    Raises
    ------
    DeepPTError
        As :func:`resolve_device`.
    """
    import torch

    from .errors import DeepPTError

    resolved = resolve_device(device)
    if resolved.type != "cuda":
        return torch.device("cpu")
    if not torch.cuda.is_available():  # a torch.device("cuda") given as is
        raise DeepPTError(
            f"training on {resolved} was requested but CUDA is not available here; "
            "use device='auto' or 'cpu'"
        )
    return resolved
