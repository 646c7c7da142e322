"""Extractor weights from local files: reading them, checking they fit, finding them.

A weights argument may be a state-dict file (``.pth``/``.pt``/``.bin`` or ``.safetensors``),
a Hugging Face snapshot folder (what ``huggingface_hub.snapshot_download`` or the hub's web
page gives: ``model.safetensors`` or ``pytorch_model.bin`` beside ``config.json``), a
repository's folder in the hub cache (``models--Org--Name``, its ``refs/main`` snapshot),
or the hub cache itself (the folder holding ``models--Org--Name``). Every failure is one
line naming the file and what to do; a file made for another model is refused by naming
the tensors that do not fit.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from ..errors import WeightsMismatchError, WeightsNotFoundError

__all__ = [
    "apply_state",
    "find_in_hub_cache",
    "read_state_dict",
    "resolve_weights_path",
    "weights_file_hash",
]

#: Weights files in a snapshot folder, in order of preference.
SNAPSHOT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pth", "model.pt")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


def resolve_weights_path(path: str | os.PathLike[str], repo: str | None = None) -> Path:
    """The weights file that ``path`` names: itself, or the file of a snapshot folder.

    Parameters
    ----------
    path
        A weights file, a snapshot folder, a ``models--Org--Name`` cache folder or a hub
        cache (with ``repo``).
    repo
        The Hugging Face repository of the extractor (``"MahmoodLab/UNI"``), for a hub cache.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    WeightsNotFoundError
        Nothing there, or a folder holding no weights file (naming what it looked for).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise WeightsNotFoundError(f"{path}: weights file not found")
    if path.is_file():
        return path
    if repo and (path / _cache_name(repo)).is_dir():
        path = path / _cache_name(repo)  # a hub cache: this repository's folder
    if (path / "snapshots").is_dir():
        path = _snapshot(path)
    found = [path / name for name in SNAPSHOT_FILES if (path / name).is_file()]
    if not found:
        found = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
        if len(found) > 1:
            raise WeightsNotFoundError(
                f"{path}: holds several weights files ({', '.join(p.name for p in found[:4])}); "
                "pass the file itself"
            )
    if not found:
        raise WeightsNotFoundError(
            f"{path}: is a folder without a weights file (looked for "
            f"{', '.join(SNAPSHOT_FILES)} or one *.safetensors/*.bin/*.pth file); pass the "
            "weights file or the snapshot folder that holds it"
        )
    return found[0]


def _cache_name(repo: str) -> str:
    """The hub cache's folder of a repository: ``models--Org--Name``."""
    return "models--" + repo.replace("/", "--")


def _snapshot(folder: Path) -> Path:
    """The snapshot a ``models--Org--Name`` folder's ``refs/main`` names, or its only one."""
    ref = folder / "refs" / "main"
    if ref.is_file() and (folder / "snapshots" / ref.read_text().strip()).is_dir():
        return folder / "snapshots" / ref.read_text().strip()
    snapshots = sorted(p for p in (folder / "snapshots").iterdir() if p.is_dir())
    if len(snapshots) != 1:
        raise WeightsNotFoundError(
            f"{folder}: {len(snapshots)} snapshots and no refs/main naming one; pass the "
            "snapshot folder (snapshots/<revision>) itself"
        )
    return snapshots[0]


def find_in_hub_cache(repo: str) -> Path | None:
    """The weights file of ``repo`` in the local Hugging Face cache, or None.

    The cache is ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
    ``~/.cache/huggingface/hub`` (huggingface_hub's own order); nothing is downloaded.

    Parameters
    ----------
    repo
        The Hugging Face repository (``"MahmoodLab/UNI"``).

    Returns
    -------
    pathlib.Path or None
        The file of the snapshot ``refs/main`` names (or of the only one); None when the
        repository is not cached, or no one snapshot and weights file can be chosen.
    """
    if os.environ.get("HF_HUB_CACHE"):
        cache = Path(os.environ["HF_HUB_CACHE"])
    else:
        home = os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface"
        cache = Path(home) / "hub"
    folder = cache.expanduser() / _cache_name(repo)
    if not (folder / "snapshots").is_dir():
        return None
    try:
        return resolve_weights_path(folder)
    except WeightsNotFoundError:
        return None


def weights_file_hash(path: str | os.PathLike[str]) -> str:
    """The hash a weights file is recorded under (first 16 hex digits of its sha256).

    It is the ``weights_hash`` of :func:`load_extractor`, of features' provenance and of a
    model bundle's ``feature``, so that a file can be checked against them without loading it.
    A foundation model's file is gigabytes: the hash is kept for the process, keyed on the
    file's identity, size and modification time (a rewritten file is hashed again).

    Parameters
    ----------
    path
        The weights file (it must exist: :class:`FileNotFoundError` otherwise).

    Returns
    -------
    str
        16 hex digits.
    """
    stat = Path(path).stat()
    return _hash_of(str(Path(path).resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _hash_of(path: str, inode: int, size: int, mtime_ns: int) -> str:
    from ..io import file_sha256

    return file_sha256(path)[:16]


_STATE_DICT_FIX = (
    "pass a state dict saved with torch.save(model.state_dict(), path), or a .safetensors file"
)


def _load_file(path: Path) -> Any:
    """``torch.load``/safetensors, every failure turned into one line naming the file."""

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        from ..io.torchfile import load_weights_only

        return load_weights_only(path)
    except Exception as exc:
        if path.suffix == ".safetensors":
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
            reason = f"not a valid .safetensors file: {first}"
        else:
            from ..io.torchfile import why_unreadable

            reason = why_unreadable(path, exc) or "corrupt, or not a torch file"
        fix = _STATE_DICT_FIX if "pickled" in reason else "download or copy it again"
        raise WeightsNotFoundError(
            f"{path}: not a readable weights file ({reason}); {fix}"
        ) from exc


def read_state_dict(path: Path) -> dict[str, Any]:
    """A weights file's state dict (names → tensors), unwrapping training checkpoints.

    Parameters
    ----------
    path
        A ``.safetensors`` file, or a torch file loaded with ``weights_only=True``; the
        weights may sit under a checkpoint's ``state_dict`` or ``model`` key.

    Returns
    -------
    dict
        Tensor names → tensors, on the CPU.

    Raises
    ------
    WeightsNotFoundError
        No such file, a directory, an unreadable file, or not a dict of tensors.
    """
    import torch

    if not path.exists():
        raise WeightsNotFoundError(f"{path}: weights file not found")
    if path.is_dir():
        raise WeightsNotFoundError(f"{path}: is a directory, not a weights file")
    state = _load_file(path)
    for key in ("state_dict", "model"):  # training checkpoints wrap the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise WeightsNotFoundError(
            f"{path}: expected a state dict (names → tensors), got a {type(state).__name__}; "
            + _STATE_DICT_FIX
        )
    odd = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise WeightsNotFoundError(
            f"{path}: expected a state dict (names → tensors), but {odd[0]!r} is a "
            f"{type(state[odd[0]]).__name__}; " + _STATE_DICT_FIX
        )
    return state


def _fit_problems(model: Any, state: dict[str, Any], name: str) -> list[str]:
    """What does not fit, naming a few tensors: shapes first, then missing, then unexpected."""
    own = model.state_dict()
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    # BatchNorm fills num_batches_tracked itself when an (older) state dict lacks it
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    problems = []
    if wrong:
        key = wrong[0]
        more = f" (and {len(wrong) - 1} more of another shape)" if len(wrong) > 1 else ""
        problems.append(
            f"{key} is {list(state[key].shape)} in the file but {list(own[key].shape)} "
            f"in {name}{more}"
        )
    if missing:
        are = "tensor {} needs is" if len(missing) == 1 else "tensors {} needs are"
        problems.append(
            f"{len(missing)} {are.format(name)} missing (e.g. {', '.join(missing[:3])})"
        )
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors (e.g. {', '.join(unexpected[:3])})")
    return problems


def apply_state(model: Any, state: dict[str, Any], source: str, spec: Any) -> None:
    """Load ``state`` into ``model``, or refuse it naming what does not fit ``spec``.

    Parameters
    ----------
    model
        The extractor's ``torch.nn.Module``, loaded in place.
    state
        A state dict (:func:`read_state_dict`); a ``module.`` prefix is removed and
        ``fc.*`` tensors (a classifier head) are dropped.
    source
        Where the weights came from (a path or URL), for the message.
    spec
        The extractor's :class:`~napari_deeppt.features.specs.ExtractorSpec`.

    Raises
    ------
    WeightsMismatchError
        A tensor has another shape, or tensors are missing or unexpected.
    """
    state = {k.removeprefix("module."): v for k, v in state.items()}  # nn.DataParallel's
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # a classifier head
    problems = _fit_problems(model, state, spec.name)
    if not problems:
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # what our check does not foresee: torch's first line
            problems = [(str(exc).splitlines() or ["load_state_dict failed"])[0][:200]]
        else:
            if missing or unexpected:
                problems = [f"missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]}"]
    if problems:
        expected = f" ({spec.weights_name})" if spec.weights_name else ""
        raise WeightsMismatchError(
            f"{source}: these weights do not fit {spec.name}: "
            + "; ".join(problems)
            + f". Pass weights made for {spec.name}{expected}, or choose the extractor "
            "these were made for"
        )
