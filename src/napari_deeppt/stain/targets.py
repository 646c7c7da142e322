"""Stain targets and methods, and the batch handling both normalisations share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from ..errors import DeepPTError

__all__ = [
    "DEEPPT_TARGET",
    "DEFAULT_REINHARD_TARGET",
    "MacenkoTarget",
    "ReinhardTarget",
    "StainMethod",
]


class StainMethod(str, Enum):
    """The stain normalisations: the one list of choices for the API, the CLI and the docks.

    Functions taking a method accept the member or its value (``"macenko"``), and None or
    ``"none"`` for no normalisation.
    """

    MACENKO = "macenko"
    REINHARD = "reinhard"
    NONE = "none"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, method: StainMethod | str | bool | None) -> StainMethod:
        """The member for ``method``; None, False and ``"none"`` are :attr:`NONE`.

        Raises
        ------
        ValueError
            ``method`` names no stain normalisation.
        """
        if method is None or method is False:
            return cls.NONE
        return cls(method)


@dataclass(frozen=True)
class MacenkoTarget:
    """Reference stain matrix (columns: haematoxylin, eosin OD in R, G, B) and concentrations."""

    stain_matrix: tuple[tuple[float, float], tuple[float, float], tuple[float, float]]
    max_concentrations: tuple[float, float]
    io: float = 240.0
    alpha: float = 1.0
    beta: float = 0.15

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": "macenko",
            "stain_matrix": [list(r) for r in self.stain_matrix],
            "max_concentrations": list(self.max_concentrations),
            "io": self.io,
            "alpha": self.alpha,
            "beta": self.beta,
        }

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> MacenkoTarget:
        """The target :meth:`as_dict` wrote (other keys, e.g. ``"method"``, are ignored)."""
        return cls(
            tuple(map(tuple, config["stain_matrix"])),  # type: ignore[arg-type]
            tuple(config["max_concentrations"]),  # type: ignore[arg-type]
            config["io"],
            config["alpha"],
            config["beta"],
        )


#: DeepPT's reference (Hoang et al. 2024): HERef, maxCRef, Io = 240, α = 1, β = 0.15.
DEEPPT_TARGET = MacenkoTarget(
    stain_matrix=((0.5626, 0.2159), (0.7201, 0.8012), (0.4062, 0.5581)),
    max_concentrations=(1.9705, 1.0308),
)


@dataclass(frozen=True)
class ReinhardTarget:
    """Per-channel mean and standard deviation in Reinhard's lαβ space."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def as_dict(self) -> dict[str, Any]:
        return {"method": "reinhard", "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> ReinhardTarget:
        """The target :meth:`as_dict` wrote (other keys, e.g. ``"method"``, are ignored)."""
        return cls(tuple(config["mean"]), tuple(config["std"]))  # type: ignore[arg-type]


#: lαβ statistics of CMU-1-Small-Region's tiles with ≥ 90 % tissue (bundled, CC0) at 0.5 µm/px.
DEFAULT_REINHARD_TARGET = ReinhardTarget(
    mean=(-0.6276, -0.0747, 0.0218), std=(0.4600, 0.0932, 0.0219)
)


def _as_batch(tiles: Any, device: Any) -> tuple[Any, bool, bool]:
    """Return (uint8 tensor (N, H, W, 3), was_numpy, was_single)."""
    import torch

    was_numpy = isinstance(tiles, np.ndarray)
    if was_numpy and not tiles.flags.writeable:
        tiles = tiles.copy()
    tensor = torch.from_numpy(np.ascontiguousarray(tiles)) if was_numpy else tiles
    if tensor.dtype != torch.uint8:
        raise DeepPTError(f"stain normalisation needs uint8 RGB tiles, got {tensor.dtype}")
    single = tensor.ndim == 3
    if single:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 4 or tensor.shape[-1] != 3:
        raise DeepPTError(
            "stain normalisation needs tiles shaped (N, H, W, 3) or (H, W, 3), "
            f"got {tuple(tensor.shape)}"
        )
    if tensor.shape[1] == 0 or tensor.shape[2] == 0:
        raise DeepPTError(
            f"stain normalisation needs tiles of at least one pixel, got {tuple(tensor.shape)}"
        )
    if device is not None:
        tensor = tensor.to(device)
    return tensor, was_numpy, single


def _return(out: Any, was_numpy: bool, single: bool) -> Any:
    if single:
        out = out[0]
    return out.cpu().numpy() if was_numpy else out
