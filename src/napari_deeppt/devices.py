"""Where torch work runs: resolved once, from ``"auto"`` (cuda > mps > cpu) or a name."""

from __future__ import annotations

from typing import Any

__all__ = ["resolve_device"]


def resolve_device(device: Any = "auto") -> Any:
    """Return a ``torch.device``.

    Parameters
    ----------
    device
        ``"auto"`` (CUDA if available, else Apple MPS, else CPU), ``"cpu"``, ``"cuda"``,
        ``"cuda:1"``, ``"mps"`` or a ``torch.device``.
    """
    import torch

    from .errors import DeepPTError

    if isinstance(device, torch.device):
        return device
    name = str(device or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    resolved = torch.device(name)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeepPTError(
            f"device {device!r} was requested but CUDA is not available here; "
            "use device='auto' or 'cpu'"
        )
    return resolved
