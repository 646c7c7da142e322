"""napari glue: the only package that imports napari or Qt.

Docks, the reader, sample data and :mod:`~napari_deeppt._napari.console` (the core steps
called with layers, for napari's console) convert layers to core inputs, call one core
function, and add layers from its result; the core never calls back into a viewer.
"""

from __future__ import annotations


def guard_against_triton_llvm_clash() -> bool:
    """Keep torch from importing triton in a process that already mapped Mesa's LLVM.

    torchvision imports ``torch._dynamo``, which imports triton when it is installed; loading
    triton's native library after Mesa's llvmpipe (software OpenGL: VMs, remote desktops, CI)
    has loaded ``libLLVM`` crashes the process. napari-deeppt needs no triton (it never
    compiles inside napari), so in that situation triton is hidden from this process.
    Returns True when the guard was applied.
    """
    import sys

    if "triton" in sys.modules:
        return False
    try:
        with open("/proc/self/maps") as maps:
            llvm_loaded = "libLLVM" in maps.read()
    except OSError:
        return False
    if llvm_loaded:
        sys.modules["triton"] = None  # type: ignore[assignment]  # import triton → ImportError
    return llvm_loaded


guard_against_triton_llvm_clash()
