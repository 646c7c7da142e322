"""Feature extractors made ready: the model with its weights, and the model on a device
(kept for the next slide of the process).

The registry is :mod:`.specs` (DeepPT's ResNet50 and friends) and :mod:`.presets` (the
pathology foundation models); ``timm:<model>`` builds any timm model. Weights are resolved
in this order:

1. ``weights``: a state-dict file (``.pth``/``.pt``/``.bin`` or ``.safetensors``) or a
   Hugging Face snapshot folder or cache (:mod:`.weights`);
2. a preset's Hugging Face repository in the local hub cache; a torchvision model's file in
   torchvision's cache (``$TORCH_HOME/hub/checkpoints/<file>``);
3. a download, only for torchvision's weights when online, or a preset's when asked
   (``download=True``: gated models need the user's Hugging Face token);
4. otherwise a :class:`~napari_deeppt.errors.WeightsNotFoundError` saying which file to put
   where. Random initialisation happens only with ``weights="random"`` (tests, demos) and is
   recorded in the provenance.
"""

from __future__ import annotations

import os
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BundleMismatchError, DeepPTError, WeightsNotFoundError
from .compiled import prepare_model
from .presets import SlowOnCPUWarning, available, require_package, warn_cpu_time
from .specs import EXTRACTORS, IMAGENET_MEAN, IMAGENET_STD, ExtractorSpec, register_extractor
from .weights import (
    apply_state,
    find_in_hub_cache,
    read_state_dict,
    resolve_weights_path,
    weights_file_hash,
)

__all__ = [
    "EXTRACTORS",
    "ExtractorSpec",
    "LoadedExtractor",
    "SlowOnCPUWarning",
    "check_weights",
    "inference_autocast",
    "list_extractors",
    "load_extractor",
    "prepare_model",
    "register_extractor",
    "warn_cpu_time",
    "weights_file_hash",
]


def list_extractors() -> list[str]:
    """The name of every extractor that can be built here (its packages installed).

    ``resnet50`` (DeepPT's) first; the pathology foundation models need timm (Phikon-v2 and
    CONCH v1.5: transformers) and their weights files; ``timm:<model>`` names any timm
    model besides.
    """
    return available()


def _timm_spec(name: str) -> ExtractorSpec:
    try:
        import timm
    except ImportError as exc:
        raise DeepPTError(f"extractor {name!r} needs timm (pip install timm)") from exc
    model_name = name.split(":", 1)[1]
    try:
        probe = timm.create_model(model_name, pretrained=False, num_classes=0)
    except RuntimeError as exc:  # timm: "Unknown model (...)"
        raise DeepPTError(f"extractor {name!r}: timm has no model {model_name!r}") from exc
    config = probe.pretrained_cfg
    size = int(config.get("input_size", (3, 224, 224))[-1])
    return ExtractorSpec(
        name,
        lambda: timm.create_model(model_name, pretrained=False, num_classes=0),
        int(probe.num_features),
        size,
        None,
        tuple(config.get("mean", IMAGENET_MEAN)),
        tuple(config.get("std", IMAGENET_STD)),
        {"timm": model_name},
        package="timm",
    )


def get_spec(name: str) -> ExtractorSpec:
    """The registered extractor ``name`` (``timm:<model>`` works when timm is installed).

    Raises
    ------
    DeepPTError
        An unknown name, or one whose package is not installed (saying which).
    """
    if name in EXTRACTORS:
        require_package(EXTRACTORS[name])
        return EXTRACTORS[name]
    if name.startswith("timm:"):
        return _timm_spec(name)
    raise DeepPTError(
        f"unknown feature extractor {name!r}; available: "
        f"{', '.join(list_extractors())} (or timm:<model> with timm installed)"
    )


@dataclass
class LoadedExtractor:
    """A ready model and where its weights came from.

    Attributes
    ----------
    spec
        What the extractor is (input size, normalisation, width).
    model
        The ``torch.nn.Module``: normalised ``(N, 3, S, S)`` images → ``(N, D)`` features,
        the preset's pooling included.
    weights_source, weights_hash
        Where its weights came from, and the hash features and bundles record.
    """

    spec: ExtractorSpec
    model: Any
    weights_source: str
    weights_hash: str

    def embed(
        self, tiles: Any, *, batch_size: int = 32, stain: Any = None, device: Any = "cpu"
    ) -> np.ndarray:
        """Features of uint8 RGB tiles, as the feature engine makes them.

        Parameters
        ----------
        tiles
            ``(N, H, W, 3)`` uint8 array (any tile size: resized to the preset's input).
        batch_size
            Tiles per forward pass.
        stain
            Stain normalisation (a :class:`~napari_deeppt.params.StainMethod` or target;
            None: none), applied as extraction applies it.
        device
            Where the model runs (``"auto"``: CUDA when present, under bfloat16 autocast as
            in extraction).

        Returns
        -------
        numpy.ndarray
            ``(N, feature_dim)`` float32.
        """
        import torch

        from ..devices import resolve_device
        from .preprocess import preprocess_batch, stain_config

        tiles = np.asarray(tiles)
        if tiles.ndim != 4 or tiles.shape[-1] != 3 or tiles.dtype != np.uint8:
            raise DeepPTError(
                f"embed takes (N, H, W, 3) uint8 RGB tiles, got {tiles.dtype} {tiles.shape}"
            )
        dev = resolve_device(device)
        model = self.model.to(dev).eval()
        config = stain_config(stain, None)
        out = np.empty((len(tiles), self.spec.feature_dim), np.float32)
        with torch.inference_mode(), inference_autocast(dev):
            for start in range(0, len(tiles), batch_size):
                batch = torch.from_numpy(tiles[start : start + batch_size]).to(dev)
                feats = model(preprocess_batch(batch, self.spec, config))
                out[start : start + len(batch)] = feats.float().cpu().numpy()
        return out


def inference_autocast(dev: Any) -> Any:
    """bfloat16 (else float16) autocast on CUDA, where big models need it; nothing elsewhere.

    Parameters
    ----------
    dev
        The ``torch.device`` the model runs on.

    Returns
    -------
    context manager
        ``torch.autocast`` on CUDA (bfloat16 where the GPU supports it), else a no-op.
    """
    import torch

    if dev.type != "cuda":
        return nullcontext()
    return torch.autocast(
        "cuda",
        # emulated bfloat16 (GPUs before Ampere) is slower than float16: native only
        dtype=torch.bfloat16
        if torch.cuda.is_bf16_supported(including_emulation=False)
        else torch.float16,
    )


def _torchvision_weights(spec: ExtractorSpec) -> Any:
    import torchvision

    enum_name, member = spec.weights_name.split(".")  # type: ignore[union-attr]
    return getattr(getattr(torchvision.models, enum_name), member)


def load_extractor(
    name: str = "resnet50",
    weights: str | os.PathLike[str] | None = None,
    *,
    download: bool | None = None,
    seed: int = 0,
) -> LoadedExtractor:
    """Build extractor ``name`` with its weights resolved as the module docstring says.

    Parameters
    ----------
    name
        A name of :func:`list_extractors` (``"resnet50"`` for DeepPT) or ``timm:<model>``.
    weights
        A weights file or Hugging Face snapshot folder or cache, ``"random"`` (seeded random
        initialisation, for tests), or None to use the local caches.
    download
        Allow a download: torchvision's by default unless ``$NAPARI_DEEPPT_OFFLINE`` is set;
        a foundation model's only when True (its Hugging Face token and accepted terms).
    seed
        Seed of the random initialisation.

    Returns
    -------
    LoadedExtractor
        ``.model`` and ``.embed(tiles)``. The last one loaded is kept and handed out again
        for the same spec and weights file (unchanged) or seed, so that a cohort's slides
        and a checked-then-used extractor build a foundation model once.

    Raises
    ------
    WeightsNotFoundError
        No weights, or a file that is unreadable or made for another model
        (:class:`~napari_deeppt.errors.WeightsMismatchError`, naming what does not fit).
    DeepPTError
        An unknown name, or a missing package.
    """
    spec = get_spec(name)
    if not spec.needs_weights:
        if weights is not None and str(weights) != "random":
            raise WeightsNotFoundError(
                f"{weights}: extractor {name} uses no weights (a fixed function); leave the "
                "weights out (--weights)"
            )
        return LoadedExtractor(spec, spec.build().eval(), "none (a fixed function)", "none")
    random = weights is not None and str(weights) == "random"
    path = None if random else _weights_file(spec, weights, download)
    key = _loaded_key(spec, random, path, seed)
    if key is not None and key in _LOADED:
        return _LOADED[key][1]
    loaded = _build(spec, random, path, seed)
    if key is not None:  # keep the last one: a cohort's slides reuse it; models are large
        _LOADED.clear()
        _LOADED[key] = (spec, loaded)
    return loaded


#: The last loaded extractor, by what determines it (see :func:`_loaded_key`), with its spec
#: (kept so that the spec's id in the key stays its own).
_LOADED: dict[tuple[Any, ...], tuple[ExtractorSpec, LoadedExtractor]] = {}


def _loaded_key(
    spec: ExtractorSpec, random: bool, path: Path | None, seed: int
) -> tuple[Any, ...] | None:
    """What a loaded extractor is made of: the spec object itself, and its seed (random
    weights) or its weights file's identity, size and modification time (a rewritten file
    is loaded again). None (never kept) for a download still to do."""
    if random:
        return (id(spec), "random", seed)
    if path is None:
        return None
    stat = path.stat()
    return (id(spec), str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _build(spec: ExtractorSpec, random: bool, path: Path | None, seed: int) -> LoadedExtractor:
    """The model of ``spec`` with random weights (seeded) or those of ``path``."""
    import torch

    # not torch.manual_seed: its dynamo guard imports triton, which can crash a process that
    # already loaded Mesa's LLVM (napari on software GL); the CPU generator is what init uses
    torch.default_generator.manual_seed(seed)
    if random:
        model = spec.build().eval()
        return LoadedExtractor(
            spec, model, f"random initialisation (seed {seed})", f"random-{seed}"
        )
    if "from_folder" in spec.extra:  # built by its own package from the snapshot folder
        assert path is not None
        return LoadedExtractor(
            spec, spec.extra["from_folder"](path.parent), str(path), weights_file_hash(path)
        )
    model = spec.build().eval()
    if path is None:  # torchvision's download
        return _downloaded(spec, model)
    apply_state(model, read_state_dict(path), str(path), spec)
    return LoadedExtractor(spec, model, str(path), weights_file_hash(path))


def _weights_file(spec: ExtractorSpec, weights: Any, download: bool | None) -> Path | None:
    """The weights file to load: given, in a local cache, or downloaded from the hub when
    asked; None for a torchvision download still to do."""
    if weights is not None:
        return resolve_weights_path(weights, spec.hf_repo)
    if spec.hf_repo is not None:
        found = find_in_hub_cache(spec.hf_repo)
        if found is None and download:
            found = _hub_download(spec)
        if found is None:
            raise WeightsNotFoundError(
                f"no weights for {spec.name}: they come from the Hugging Face repository "
                f"{spec.hf_repo} ({spec.licence}). Download them there, then pass the file or "
                "the snapshot folder (weights=PATH; on the command line --weights PATH), or "
                "allow the download with download=True and your Hugging Face token"
            )
        return found
    if spec.weights_name is None:
        raise WeightsNotFoundError(
            f"extractor {spec.name!r} has no known pretrained weights; pass weights=PATH"
        )
    return _torchvision_cached(spec, download)


def _hub_download(spec: ExtractorSpec) -> Path | None:
    """The repository's snapshot downloaded into the hub cache (needs huggingface_hub, a
    token for gated models and the network); None when that fails."""
    try:
        from huggingface_hub import snapshot_download

        patterns = ["*.json", "*.safetensors", "*.bin"]
        folder = snapshot_download(spec.hf_repo, allow_patterns=patterns)
        return resolve_weights_path(folder)
    except Exception as exc:  # offline, gated, no package: the message says what to do
        warnings.warn(f"{spec.hf_repo}: download failed ({exc})", stacklevel=4)
        return None


def _torchvision_cached(spec: ExtractorSpec, download: bool | None) -> Path | None:
    """torchvision's cached file; None to download it; an error when it cannot be had."""
    import torch

    enum = _torchvision_weights(spec)
    filename = enum.url.rsplit("/", 1)[-1]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if cached.exists():
        return cached
    if download is None:
        download = not os.environ.get("NAPARI_DEEPPT_OFFLINE")
    if download:
        return None
    raise _no_torchvision_weights(spec)


def _no_torchvision_weights(spec: ExtractorSpec) -> WeightsNotFoundError:
    import torch

    enum = _torchvision_weights(spec)
    filename = enum.url.rsplit("/", 1)[-1]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    return WeightsNotFoundError(
        f"no weights for {spec.name} ({spec.weights_name}) and they could not be downloaded. "
        f"Put {filename} (from {enum.url}) at {cached}, or pass weights=PATH (a .pth/.pt or "
        ".safetensors state dict; on the command line --weights PATH). weights='random' "
        "runs with random weights, for tests only."
    )


def _downloaded(spec: ExtractorSpec, model: Any) -> LoadedExtractor:
    """torchvision's download of the weights, applied; an error saying what to do instead."""
    import torch

    enum = _torchvision_weights(spec)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / enum.url.rsplit("/", 1)[-1]
    try:
        state = enum.get_state_dict(progress=True, check_hash=True)
    except Exception:  # offline, proxy, server error: say what to do instead
        state = None
    if state is None or not cached.exists():
        raise _no_torchvision_weights(spec)
    apply_state(model, state, enum.url, spec)
    return LoadedExtractor(spec, model, str(cached), weights_file_hash(cached))


def check_weights(
    extractor: str = "resnet50",
    weights: str | os.PathLike[str] | None = None,
    *,
    expected_hash: str | None = None,
    download: bool | None = None,
    seed: int = 0,
) -> str:
    """Resolve and load an extractor's weights once, and return their hash.

    Meant for a driver (a cohort run, a CLI command) before it schedules any slide: bad
    weights then fail once, in the driver, instead of in every worker.

    Parameters
    ----------
    extractor, weights, download, seed
        As for :func:`load_extractor`.
    expected_hash
        The hash the features must have (a model bundle's ``feature["weights_hash"]``).

    Returns
    -------
    str
        The weights hash that :func:`~napari_deeppt.features.extract_features` will record.

    Raises
    ------
    WeightsNotFoundError
        Missing, unreadable or (:class:`~napari_deeppt.errors.WeightsMismatchError`) not
        fitting weights.
    BundleMismatchError
        The weights are not the ones ``expected_hash`` names.
    """
    loaded = load_extractor(extractor, weights, download=download, seed=seed)
    if expected_hash is not None and loaded.weights_hash != expected_hash:
        raise BundleMismatchError(
            f"{loaded.weights_source}: {extractor} weights {loaded.weights_hash}, but the model "
            f"was trained on features from weights {expected_hash}; pass the weights file it "
            "was trained with (--weights PATH)"
        )
    return loaded.weights_hash
