"""The core never imports Qt or napari; `import napari_deeppt` stays light."""

from __future__ import annotations

import ast
import pkgutil
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import napari_deeppt

CORE_MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(napari_deeppt.__path__, "napari_deeppt.")
    if "._napari" not in m.name
)
GUI_MODULES = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "vispy")


def _imported_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {name.split(".")[0] for name in out.stdout.split()}


def test_core_modules_found():
    assert "napari_deeppt.slide" in CORE_MODULES and "napari_deeppt.cli" in CORE_MODULES


def test_core_never_imports_qt_or_napari():
    statement = "\n".join(f"import {name}" for name in CORE_MODULES)
    leaked = _imported_after(statement) & set(GUI_MODULES)
    assert not leaked, f"core modules import GUI packages: {leaked}"


def test_package_import_is_light():
    heavy = _imported_after("import napari_deeppt") & {
        "torch",
        "dask",
        "napari",
        "zarr",
        "tifffile",
        "pandas",
    }
    assert not heavy


@pytest.mark.skipif(
    shutil.which("lint-imports") is None
    and not (__import__("pathlib").Path(sys.executable).parent / "lint-imports").exists(),
    reason="import-linter not installed",
)
def test_import_linter_contract():
    from pathlib import Path

    exe = Path(sys.executable).parent / "lint-imports"
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([str(exe)], capture_output=True, text=True, cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_qt_contract_covers_every_layer_below_napari():
    """The forbidden-Qt contract lists exactly the layers under _napari (the layers contract is
    exhaustive, so import-linter itself refuses a top-level module placed in no layer)."""
    import re
    from pathlib import Path

    import tomllib

    root = Path(__file__).resolve().parents[1]
    contracts = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["importlinter"][
        "contracts"
    ]
    layers = next(c for c in contracts if c["type"] == "layers")
    forbidden = next(c for c in contracts if c["type"] == "forbidden")
    assert layers["exhaustive"] is True
    below = {m for layer in layers["layers"][1:] for m in re.split(r"[|:]", layer)}
    assert {f"napari_deeppt.{m.strip()}" for m in below} == set(forbidden["source_modules"])
    top_level = {".".join(name.split(".")[:2]) for name in CORE_MODULES}
    assert top_level <= set(forbidden["source_modules"])


def test_every_public_name_resolves_and_is_declared_once():
    """The names in __init__.pyi all import (lazy_loader finds each), and nothing else is
    exported: a renamed or moved function breaks this test, not a user's script."""
    names = set(napari_deeppt.__all__)
    assert {"open_slide", "train", "predict", "run_cohort", "__version__"} <= names
    for name in names:
        assert getattr(napari_deeppt, name) is not None
    with pytest.raises(AttributeError):
        napari_deeppt.not_a_public_name  # noqa: B018


def _code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function's code, its docstring left out."""
    body = node.body
    if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:] or body
    return body[-1].end_lineno - body[0].lineno + 1


def test_files_and_functions_stay_small():
    """The developers' brief: files under 500 lines, functions under 80 (docstrings aside)."""
    source = Path(napari_deeppt.__file__).parent
    long_files, long_functions = [], []
    for path in sorted(source.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) >= 500:
            long_files.append(str(path.relative_to(source)))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _code_lines(node) >= 80:
                long_functions.append(f"{path.relative_to(source)}:{node.lineno} {node.name}")
    assert len(long_files) + len(long_functions) == 0, long_files + long_functions
    assert len(list(source.rglob("*.py"))) > 50  # the walk found the package


def _documented_parameters(doc: str) -> set[str]:
    """The names a numpydoc Parameters section describes (``a, b : int`` lines; ``**kw``)."""
    if "Parameters\n----------\n" not in doc:
        return set()
    section = doc.split("Parameters\n----------\n", 1)[1]
    section = re.split(r"\n\S[^\n]*\n-{3,}\n", section)[0]  # up to the next section
    names = set()
    for line in section.splitlines():
        if line and not line[0].isspace():
            for item in line.split(" : ")[0].split(","):
                names.add(item.strip().replace("\\", "").lstrip("*"))
    return names


def test_the_public_api_documents_its_parameters():
    """Every function of ``napari_deeppt.__all__`` that takes arguments has a numpydoc
    docstring naming each in its Parameters section (what the console's help shows)."""
    import inspect

    undocumented = []
    functions = 0
    for name in sorted(napari_deeppt.__all__):
        obj = inspect.unwrap(getattr(napari_deeppt, name))
        if not inspect.isfunction(obj):
            continue
        functions += 1
        documented = _documented_parameters(inspect.getdoc(obj) or "")
        for parameter in inspect.signature(obj).parameters.values():
            if parameter.kind is not parameter.VAR_POSITIONAL and parameter.name not in documented:
                undocumented.append(f"{name}({parameter.name})")
    assert functions > 20
    assert not undocumented, undocumented


def test_core_modules_document_their_public_functions():
    """Every plain function a core module lists in its ``__all__`` (and defines) names each of
    its parameters in a numpydoc Parameters section; the CLI is documented by its --help."""
    import importlib
    import inspect

    undocumented = []
    functions = 0
    for module_name in CORE_MODULES:
        if module_name == "napari_deeppt.cli" or module_name.startswith("napari_deeppt.cli."):
            continue
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            obj = inspect.unwrap(getattr(module, name, None))  # functools.cache's too
            if not inspect.isfunction(obj) or obj.__module__ != module_name:
                continue
            functions += 1
            documented = _documented_parameters(inspect.getdoc(obj) or "")
            for parameter in inspect.signature(obj).parameters.values():
                starred = parameter.kind is parameter.VAR_POSITIONAL
                if not starred and parameter.name not in documented:
                    undocumented.append(f"{module_name}.{name}({parameter.name})")
    assert functions > 100
    assert not undocumented, undocumented
