"""The extractor on its device, compiled: in memory, or from a compiled package on disk.

Compiling ResNet50 with inductor on a 2-core CPU takes 40–60 s, every process: a slide of a
few hundred tiles would pay more for compiling than it saves, so it ran eagerly at about
0.7 of the compiled speed. On the CPU a compiled model is therefore kept on disk as an
AOTInductor package (``torch.export`` + ``aoti_compile_and_package`` with gradients off,
so that inductor freezes it: weights prepacked for oneDNN, convolutions fused with their
batch norms and ReLUs), built once and loaded by later processes in about a second:

``<cache_root>/compiled/<key>.pt2`` and ``<key>.json``, where the key is the SHA-256 of
everything the compiled code depends on — torch's version, the CPU (instruction set and
model name: a package built for AVX-512 must never run on an AVX2 machine sharing the
cache), the extractor and its weights hash, the module's structure and its class's source,
the versions of torchvision/timm/transformers, the input shape and layout, and this
package's version. The JSON holds those fields and must match them
exactly before a package is loaded; a package that does not load is removed and rebuilt
(with a warning). Packages are written under a temporary name and renamed, so a crashed
or concurrent build never leaves a half-written one.

On CUDA (and for a model without an identity), ``torch.compile`` compiles in memory, as
before. A failed compile is never a reason to fail: the model runs eagerly, with a warning.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import warnings
from pathlib import Path
from typing import Any

from .._version import __version__
from ..io import atomic_outputs, cache_root, keep_recent, mark_used
from .params import COMPILE_MODES

__all__ = [
    "CompiledPackage",
    "compiled_dir",
    "compiled_package",
    "needs_fixed_batch",
    "package_fields",
    "prepare_model",
]

#: Compile for this many tiles or more when ``compile="auto"`` and no package is on disk.
AUTO_COMPILE_TILES = 2048
#: Compiled packages kept in :func:`compiled_dir` (about 100 MB each for ResNet50), the most
#: recently used (the others go, whatever torch, model, weights or batch size they were for).
KEEP_PACKAGES = 4

_PREPARED: dict[tuple[Any, ...], Any] = {}
#: 2: built with gradients off, so that inductor really freezes (format 1 packages ran
#: unfrozen, plain convolutions: 15–18 % slower; they are rebuilt, never loaded)
_PACKAGE_FORMAT = "aoti-package-2"


class CompiledPackage:
    """A loaded AOTInductor package: called like the model, on batches of one size only.

    Attributes
    ----------
    fixed_batch
        The batch size it was compiled for (the engine pads a short last batch to it).
    path
        The package file.
    """

    def __init__(self, runner: Any, fixed_batch: int, path: Path) -> None:
        self._runner = runner
        self.fixed_batch = fixed_batch
        self.path = path

    def __call__(self, x: Any) -> Any:
        return self._runner(x)


def needs_fixed_batch(model: Any) -> bool:
    """Whether ``model`` is compiled for one input shape (pad the last batch to it).

    Parameters
    ----------
    model
        What :func:`prepare_model` returned: a ``torch.compile`` module or a
        :class:`CompiledPackage` is; an eager module is not.

    Returns
    -------
    bool
    """
    return hasattr(model, "_orig_mod") or isinstance(model, CompiledPackage)


def compiled_dir() -> Path:
    """Where compiled packages are kept: ``<cache_root>/compiled``."""
    return cache_root() / "compiled"


@functools.cache
def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def package_fields(model: Any, key: tuple[Any, ...], shape: tuple[int, ...]) -> dict[str, Any]:
    """Everything a compiled package of ``model`` depends on, as JSON-able fields.

    Parameters
    ----------
    model
        The eager ``torch.nn.Module``; a model run at another precision
        (:class:`~.bfloat16.BFloat16Model`) adds its ``precision`` and its wrapped
        module's class.
    key
        What identifies its weights (extractor name, weights hash).
    shape
        The input's shape ``(batch, 3, S, S)`` (float32, channels-last).
    """
    import torch

    structure = hashlib.sha256(repr(model).encode()).hexdigest()
    code = _code_fields(model)
    wrapped = getattr(model, "wrapped", None)  # a model run at another precision
    extra = {}
    if wrapped is not None:
        code["wrapped"] = _code_fields(wrapped)["class"]
        extra["precision"] = str(model.precision)
    return {
        **extra,
        "format": _PACKAGE_FORMAT,
        "model": [str(part) for part in key],
        "structure": structure,
        "code": code,
        "input": {"shape": list(shape), "dtype": "float32", "layout": "channels_last"},
        "torch": torch.__version__,
        "napari_deeppt": __version__,
        "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu": _cpu_name(),
        "inductor": {"freezing": True},
    }


def _code_fields(model: Any) -> dict[str, Any]:
    """What the module's code depends on beyond its structure: its class's source (a changed
    ``forward`` is another model) and the versions of the libraries models come from."""
    import inspect
    from importlib.metadata import PackageNotFoundError, version

    try:
        source = inspect.getsource(type(model))
    except (OSError, TypeError):  # defined where no source is kept
        source = f"{type(model).__module__}.{type(model).__qualname__}"
    packages = {}
    for package in ("torchvision", "timm", "transformers"):
        try:
            packages[package] = version(package)
        except PackageNotFoundError:
            packages[package] = None
    return {"class": hashlib.sha256(source.encode()).hexdigest()[:16], "packages": packages}


def _key(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


def _build(model: Any, example: Any, path: Path, fields: dict[str, Any]) -> None:
    """Export, compile and package ``model`` for ``example``'s shape; write its fields."""
    import torch

    with torch.inference_mode(False), torch.no_grad():
        exported = torch.export.export(model, (example,))
    with atomic_outputs([path, path.with_suffix(".json")], overwrite=True) as (tmp, tmp_json):
        with torch.no_grad():  # inductor freezes (oneDNN-packed weights) only without grad
            torch._inductor.aoti_compile_and_package(
                exported, package_path=str(tmp), inductor_configs=dict(fields["inductor"])
            )
        tmp_json.write_text(json.dumps(fields, indent=1, sort_keys=True))


def _load(path: Path, fields: dict[str, Any]) -> Any | None:
    """The package at ``path`` when its recorded fields are ``fields``, else None."""
    import torch

    try:
        recorded = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    if recorded != fields or not path.is_file():
        return None
    try:
        return torch._inductor.aoti_load_package(str(path))
    except Exception as exc:  # a damaged package: rebuilt, never trusted
        warnings.warn(f"{path}: the compiled model does not load ({exc}); rebuilding", stacklevel=4)
        for stale in (path, path.with_suffix(".json")):
            stale.unlink(missing_ok=True)
        return None


def compiled_package(
    model: Any, key: tuple[Any, ...], batch: int, input_size: int, build: bool
) -> CompiledPackage | None:
    """The CPU model compiled for ``(batch, 3, input_size, input_size)`` inputs.

    Loaded from :func:`compiled_dir` when a package with the same fields is there; else
    built and kept there when ``build``; else None (run eagerly).

    Parameters
    ----------
    model
        The eager ``torch.nn.Module``, on the CPU.
    key
        What identifies its weights (extractor name, weights hash); see
        :func:`package_fields`.
    batch, input_size
        The one batch size and input side the package takes.
    build
        Export and compile it when no matching package is on disk (minutes).

    Returns
    -------
    CompiledPackage or None
        The package, its file marked used; older packages beyond ``KEEP_PACKAGES`` are removed.

    Raises
    ------
    Exception
        Whatever export or compilation raised (the caller falls back to eager).
    """
    import torch

    shape = (batch, 3, input_size, input_size)
    fields = package_fields(model, key, shape)
    path = compiled_dir() / f"{_key(fields)}.pt2"
    runner = _load(path, fields)
    if runner is None and build:
        example = torch.zeros(shape).contiguous(memory_format=torch.channels_last)
        _build(model, example, path, fields)
        runner = _load(path, fields)
    if runner is None:
        return None
    keep_recent(path, KEEP_PACKAGES)  # older torch, weights or shapes' packages go
    return CompiledPackage(runner, batch, path)


def prepare_model(
    model: Any,
    device: Any,
    compile_mode: Any,
    n_tiles: int,
    key: tuple[Any, ...] | None = None,
    *,
    batch: int | None = None,
    input_size: int = 224,
) -> Any:
    """Move to the device in channels-last, optionally compiled.

    Parameters
    ----------
    model
        The extractor's ``torch.nn.Module``.
    device
        The ``torch.device``.
    compile_mode
        ``True``, ``False``, ``"auto"`` or ``"cached"``: on the CPU, a compiled package
        already on disk is always used; ``auto`` builds one for ≥ :data:`AUTO_COMPILE_TILES`
        tiles (where it pays the first time), ``cached`` never builds (the napari docks:
        compiling inside napari clashes with its software OpenGL; loading does not).
        Elsewhere ``auto`` compiles in memory for that many tiles, ``cached`` runs eagerly.
    n_tiles
        How many tiles the model will see.
    key
        What identifies the model (extractor, weights hash): the last prepared model is kept
        per key, device, compile choice and batch, so a cohort pays for loading once per
        process; on the CPU it also names the compiled package on disk. None: nothing kept,
        and compiled (if asked) in memory.
    batch, input_size
        The batch size and input side the model will see (a CPU package is compiled for
        that one shape); None: compiled in memory.

    Returns
    -------
    Any
        The module, or a compiled one: ``needs_fixed_batch(model)`` says whether it takes
        one batch size only.
    """
    import torch

    if not (compile_mode is True or compile_mode is False or compile_mode in COMPILE_MODES):
        raise ValueError(f"compile must be True, False, 'auto' or 'cached', got {compile_mode!r}")
    want = compile_mode is True or (compile_mode == "auto" and n_tiles >= AUTO_COMPILE_TILES)
    structure = hashlib.sha256(repr(model).encode()).hexdigest()  # two models, one name
    full_key = None if key is None else (*key, structure, str(device), compile_mode, want, batch)
    if full_key is not None and full_key in _PREPARED:
        kept = _PREPARED[full_key]
        if isinstance(kept, CompiledPackage):  # in use: another process's clean-up keeps it
            mark_used(kept.path)
        return kept
    model = model.to(device).to(memory_format=torch.channels_last).eval()
    prepared = model
    if compile_mode is not False:
        prepared = _compiled(model, device, want, key, batch, input_size)
    if full_key is not None:
        _PREPARED.clear()  # keep one model: they are large
        _PREPARED[full_key] = prepared
    return prepared


def _compiled(
    model: Any, device: Any, want: bool, key: Any, batch: int | None, input_size: int
) -> Any:
    """The compiled model: a package on disk (CPU), ``torch.compile`` or, failing, eager."""
    import torch

    try:
        if device.type == "cpu" and key is not None and batch is not None:
            package = compiled_package(model, key, batch, input_size, build=want)
            return model if package is None else package
        if not want:
            return model
        import torch._inductor.config as inductor_config

        if device.type == "cpu":
            inductor_config.freezing = True
        return torch.compile(model)
    except Exception as exc:  # compiling is an optimisation: never a reason to fail
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        warnings.warn(f"compiling the model failed ({message}); running eagerly", stacklevel=4)
        return model
