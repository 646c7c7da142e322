"""Pathology foundation models beside DeepPT's ResNet50, as named presets.

Each preset has its published architecture (timm), input size, normalisation, token pooling
and embedding width, and the Hugging Face repository its weights come from. Weights are
read only from local files (a state dict, a snapshot folder or the hub cache); most of
these models are gated and non-commercial: the user accepts the terms on the model's page
and downloads the files. Phikon-v2 and CONCH v1.5 are built by ``transformers`` from
their snapshot folder, and only when it is installed.

HEST-Benchmark (Jaume et al., NeurIPS 2024) is why they are here: mean Pearson R over nine
cancers, PCA-256 + ridge on 224 px patches at 0.5 µm/px — ResNet50 (ImageNet) 0.326,
H-optimus-0 0.415, UNI v1.5 0.409, Virchow2 0.398, UNI 0.386, GigaPath 0.385, CONCH 0.371.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from pathlib import Path
from typing import Any

from ..errors import DeepPTError
from .specs import EXTRACTORS, ExtractorSpec, register_extractor

__all__ = [
    "H_OPTIMUS_MEAN",
    "H_OPTIMUS_STD",
    "PRESETS",
    "SlowOnCPUWarning",
    "available",
    "cpu_seconds_per_tile",
    "missing_package",
    "require_package",
    "warn_cpu_time",
]

#: H-optimus-0 and -1 (Bioptimus) normalise with their own training set's statistics.
H_OPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
H_OPTIMUS_STD = (0.211883, 0.230117, 0.177517)
_GATED_NC = "CC-BY-NC-ND 4.0, non-commercial; gated: accept the terms on its Hugging Face page"


def _vit(arch: str, pooling: str = "token", **options: Any) -> Any:
    """A build function for timm's ``arch`` with the preset's settings (timm on first use)."""

    def build() -> Any:
        from .vit import build_vit

        return build_vit(arch, pooling, **dict(options))

    build.arch, build.pooling, build.options = arch, pooling, options  # type: ignore[attr-defined]
    return build


_VIT_G = {"img_size": 224, "init_values": 1e-5}
_PRESETS = [
    ExtractorSpec(
        "uni",
        _vit("vit_large_patch16_224", img_size=224, init_values=1e-5, dynamic_img_size=True),
        1024,
        hf_repo="MahmoodLab/UNI",
        licence=_GATED_NC,
        gmacs=61.6,
        package="timm",
        extra={"architecture": "ViT-L/16", "pooling": "class token"},
    ),
    ExtractorSpec(
        "uni2-h",
        _vit(
            "vit_giant_patch14_224",
            img_size=224,
            patch_size=14,
            depth=24,
            num_heads=24,
            init_values=1e-5,
            embed_dim=1536,
            mlp_ratio=2.66667 * 2,
            no_embed_class=True,
            swiglu=True,
            reg_tokens=8,
            dynamic_img_size=True,
        ),
        1536,
        hf_repo="MahmoodLab/UNI2-h",
        licence=_GATED_NC,
        gmacs=180.0,
        package="timm",
        extra={"architecture": "ViT-H/14, 8 registers", "pooling": "class token"},
    ),
    ExtractorSpec(
        "virchow2",
        _vit(
            "vit_huge_patch14_224",
            "token+mean",
            img_size=224,
            init_values=1e-5,
            mlp_ratio=5.3375,
            swiglu=True,
            reg_tokens=4,
            dynamic_img_size=True,
        ),
        2560,
        hf_repo="paige-ai/Virchow2",
        licence=_GATED_NC,
        gmacs=165.0,
        package="timm",
        extra={"architecture": "ViT-H/14, 4 registers", "pooling": "class token + patch mean"},
    ),
    *(
        ExtractorSpec(
            f"h-optimus-{version}",  # Bioptimus' two releases share one architecture
            _vit("vit_giant_patch14_reg4_dinov2", **_VIT_G, dynamic_img_size=False),
            1536,
            mean=H_OPTIMUS_MEAN,
            std=H_OPTIMUS_STD,
            hf_repo=f"bioptimus/H-optimus-{version}",
            licence=licence,
            gmacs=295.0,
            package="timm",
            extra={"architecture": "ViT-g/14, 4 registers", "pooling": "class token"},
        )
        for version, licence in (
            (0, "Apache-2.0; accept the terms on its Hugging Face page"),
            (1, "non-commercial; gated: accept the terms on its Hugging Face page"),
        )
    ),
    ExtractorSpec(
        "prov-gigapath",
        _vit(
            "vit_giant_patch14_dinov2",
            img_size=224,
            patch_size=16,
            embed_dim=1536,
            depth=40,
            num_heads=24,
            init_values=1e-5,
            mlp_ratio=5.33334,
        ),
        1536,
        hf_repo="prov-gigapath/prov-gigapath",
        licence="Apache-2.0; gated: accept the terms on its Hugging Face page",
        gmacs=223.0,
        package="timm",
        extra={"architecture": "ViT-g/16", "pooling": "class token"},
    ),
]


def _phikon_v2(folder: Path) -> Any:
    """Phikon-v2 (Owkin) from its snapshot folder: the class token of ``transformers``'
    DINOv2 model."""
    import torch
    from transformers import AutoModel

    class ClassToken(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = AutoModel.from_pretrained(str(folder), local_files_only=True)

        def forward(self, x: Any) -> Any:
            return self.trunk(pixel_values=x).last_hidden_state[:, 0]

    return ClassToken().eval()


def _conch_v15(folder: Path) -> Any:
    """CONCH v1.5 (Mahmood lab) from the TITAN snapshot folder that ships it (its remote
    code, run from the local folder)."""
    from transformers import AutoModel

    titan = AutoModel.from_pretrained(str(folder), trust_remote_code=True, local_files_only=True)
    model, _ = titan.return_conch()
    return model.eval()


def _needs_folder(name: str) -> Any:
    def build() -> Any:
        raise DeepPTError(
            f"{name} is built from its Hugging Face snapshot folder (its config.json and "
            "weights): pass that folder as the weights; random weights are not offered"
        )

    return build


_PRESETS += [
    ExtractorSpec(
        "phikon-v2",
        _needs_folder("phikon-v2"),
        1024,
        hf_repo="owkin/phikon-v2",
        licence="Owkin non-commercial licence; see its Hugging Face page",
        gmacs=61.6,
        package="transformers",
        extra={
            "architecture": "ViT-L/16 (DINOv2)",
            "pooling": "class token",
            "from_folder": _phikon_v2,
        },
    ),
    ExtractorSpec(
        "conch-v1.5",
        _needs_folder("conch-v1.5"),
        768,
        input_size=448,
        hf_repo="MahmoodLab/TITAN",
        licence=_GATED_NC + " (TITAN's repository)",
        gmacs=250.0,
        package="transformers",
        extra={
            "architecture": "ViT-L/16 at 448 px",
            "pooling": "CONCH's image embedding",
            "from_folder": _conch_v15,
        },
    ),
]
PRESETS: tuple[str, ...] = tuple(spec.name for spec in _PRESETS)
for _spec in _PRESETS:
    register_extractor(_spec)


@functools.cache
def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def missing_package(spec: ExtractorSpec) -> str | None:
    """The package ``spec`` needs that is not installed, or None.

    Parameters
    ----------
    spec
        An :class:`~napari_deeppt.features.specs.ExtractorSpec`; its ``package`` is checked.

    Returns
    -------
    str or None
    """
    return spec.package if spec.package and not _installed(spec.package) else None


def available() -> list[str]:
    """Every registered extractor whose packages are installed, in registry order."""
    return [name for name, spec in EXTRACTORS.items() if missing_package(spec) is None]


def require_package(spec: ExtractorSpec) -> None:
    """Refuse an extractor whose package is missing, saying how to install it.

    Parameters
    ----------
    spec
        An :class:`~napari_deeppt.features.specs.ExtractorSpec`.

    Raises
    ------
    DeepPTError
        Its package is not installed (the message gives the ``pip install`` line).
    """
    if (package := missing_package(spec)) is not None:
        raise DeepPTError(
            f"extractor {spec.name!r} needs the {package} package, which is not installed: "
            f"pip install {package}"
        )


#: Billions of multiply-accumulates a CPU thread does per second in a transformer's forward
#: pass, for the time a CPU run of a foundation model will take (UNI's ViT-L, fp32, on this
#: project's 2-core AVX2 machine: 2.1 s a tile, 30 GMAC/s for two threads while another
#: two-thread job ran, so about 30 per thread alone). An estimate, said as one.
CPU_GMACS_PER_THREAD = 30.0
#: Above this a CPU run is announced with its expected time.
_SLOW_GMACS = 20.0


class SlowOnCPUWarning(UserWarning):
    """A large model on the CPU: the expected time, said before starting."""


def cpu_seconds_per_tile(spec: ExtractorSpec, threads: int | None = None) -> float:
    """The expected seconds per tile of ``spec`` on this CPU (``threads``: torch's).

    Parameters
    ----------
    spec
        An :class:`~napari_deeppt.features.specs.ExtractorSpec`; its ``gmacs`` per tile.
    threads
        CPU threads; None: ``torch.get_num_threads()``.

    Returns
    -------
    float
        An estimate: ``gmacs / (CPU_GMACS_PER_THREAD · threads)``.
    """
    import torch

    threads = threads or torch.get_num_threads()
    return spec.gmacs / (CPU_GMACS_PER_THREAD * max(threads, 1))


def warn_cpu_time(spec: ExtractorSpec, device: Any, n_tiles: int) -> None:
    """Say the expected time before a large model (a foundation model) runs on the CPU.

    Warns with :class:`SlowOnCPUWarning` when ``device`` is the CPU, the model needs at least
    20 GMACs a tile and there are tiles; otherwise says nothing.

    Parameters
    ----------
    spec
        An :class:`~napari_deeppt.features.specs.ExtractorSpec`.
    device
        A ``torch.device`` or its name.
    n_tiles
        How many tiles it will embed.
    """
    if getattr(device, "type", str(device)) != "cpu" or spec.gmacs < _SLOW_GMACS or not n_tiles:
        return
    import torch

    per_tile = cpu_seconds_per_tile(spec)
    minutes = per_tile * n_tiles / 60
    warnings.warn(
        f"{spec.name} on the CPU: about {per_tile:.1f} s a tile with "
        f"{torch.get_num_threads()} threads, so about {minutes:,.0f} min for {n_tiles:,} "
        "tiles; a CUDA GPU (bfloat16) takes a small fraction of that",
        SlowOnCPUWarning,
        stacklevel=3,
    )
