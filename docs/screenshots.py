"""README screenshots of the four napari-deeppt docks, taken from real use in napari.

It drives a napari window as a user would: opens the CMU-1-Small-Region slide with the
napari-deeppt reader, opens each dock from the plugin's manifest, fills its fields, clicks its
button (the dock's ``run()``), waits for the worker with Qt's event loop, raises the dock's
tab and saves the whole window as a JPEG in ``docs/``:

- ``napari-tissue.jpg``: *Tissue & tiles* after detecting tissue and cutting 64 µm tiles;
- ``napari-features.jpg``: *Extract features* (the DEMO model's ``colour-stats`` extractor);
- ``napari-predict.jpg``: *Predict expression* with the DEMO model bundle;
- ``napari-response.jpg``: *Treatment response* against a cohort predicted by the same DEMO
  model (synthetic slides, ``deeppt run``) and a made-up partner table, with a drug's tile map.

Run from the repository root, on a virtual display::

    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1600x1000x24" \\
        .venv/bin/python docs/screenshots.py [--preview /tmp/shots/preview.png]

``--preview`` also saves the *Preview normalisation* window. The synthetic cohort lives in
``--work`` (default: a ``deeppt-screenshots`` folder in the temporary directory); features are
extracted into an empty cache, as on a first use.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "napari-deeppt"
WINDOW = (1600, 1000)
#: Width of the docks' tab area per shot (napari's default, ~390 px, cuts the Predict dock
#: once a bundle is chosen, and the drugs table needs 720 px for all its columns).
DOCK_WIDTH = {"tissue": 500, "features": 500, "predict": 600, "response": 720}
MAX_BYTES = 300_000
ZOOM_OUT = 0.85

#: Drugs and partner genes made up for the DEMO model's synthetic genes (not real biology).
PARTNERS = """drug,partner,type
DEMO drug 1,DRIVEN0,SL
DEMO drug 1,DRIVEN1,SL
DEMO drug 1,NOISE0,SR
DEMO drug 2,DRIVEN2,SL
DEMO drug 2,DRIVEN3,SR
DEMO drug 3,DRIVEN1,SL
DEMO drug 3,DRIVEN3,SL
DEMO drug 3,ERBB2,SL
DEMO drug 4,NOISE1,SL
DEMO drug 4,DRIVEN0,SR
"""


def find_slide() -> Path:
    """The real CMU-1-Small-Region slide: the shared copy, else the bundled one."""
    from napari_deeppt.samples import cmu1_small_region_path

    for path in (
        ROOT.parent / "shared" / "data" / "CMU-1-Small-Region.svs",
        Path("/work/shared/data/CMU-1-Small-Region.svs"),
    ):
        if path.is_file():
            return path
    return cmu1_small_region_path()


def prepare_cohort(work: Path, bundle: Path) -> tuple[Path, Path]:
    """A cohort predicted by the DEMO model (``deeppt run`` on synthetic slides) and a
    partner table, in ``work``; a rerun reuses the slides and the results made with the same
    bundle (``deeppt run`` resumes) and recomputes the others."""
    from napari_deeppt.testing import write_synthetic_cohort

    work.mkdir(parents=True, exist_ok=True)
    partners = work / "partners.csv"
    partners.write_text(PARTNERS)
    run = work / "run"
    cohort = write_synthetic_cohort(work / "cohort", n_slides=16, seed=7)
    deeppt = Path(sys.executable).with_name("deeppt")
    command = [str(deeppt), "run", str(cohort.manifest), "--model", str(bundle)]
    command += ["--out", str(run), "--scheduler", "serial", "--quiet"]
    subprocess.run(command, check=True)
    return run / "cohort_expression.csv", partners


def wait(widget: Any, timeout: float = 900.0) -> None:
    """Let Qt run until the dock's job has finished (its ``_job`` is None again)."""
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    deadline = time.monotonic() + timeout
    while getattr(widget, "_job", None) is not None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{type(widget).__name__} still running after {timeout:.0f} s")
        app.processEvents()
        time.sleep(0.02)
    settle()


def settle(seconds: float = 0.5) -> None:
    """Process events for a moment so layers, overlays and docks are drawn."""
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)


def check(widget: Any, what: str) -> str:
    """The dock's status line, after making sure it reports no error."""
    status = str(widget.status.value)
    print(f"{what}: {status}")
    if status.startswith("error") or "cancel" in status:
        raise SystemExit(f"{what} failed: {status}")
    return status


def open_dock(viewer: Any, name: str) -> tuple[Any, Any]:
    """Open a dock of the plugin as the Plugins menu does."""
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    settle()  # the docks tab themselves together after the current event
    return dock, widget


def shoot(viewer: Any, dock: Any, path: Path, width: int) -> Path:
    """Raise ``dock``'s tab, give it ``width`` px (as dragging the splitter would) and save
    the window as a JPEG under ``MAX_BYTES``."""
    from PIL import Image
    from qtpy.QtCore import Qt

    dock.raise_()
    viewer.window._qt_window.resizeDocks([dock], [width], Qt.Orientation.Horizontal)
    settle()
    viewer.reset_view()  # the canvas changed size: fit the slide again
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari 0.9
    camera.zoom *= ZOOM_OUT  # leave the corners to the colour bar and scale bar
    settle(1.0)
    rgba = viewer.screenshot(canvas_only=False, flash=False)
    image = Image.fromarray(rgba[..., :3])
    for quality in (85, 80, 75, 70, 65, 60):
        image.save(path, "JPEG", quality=quality, optimize=True, progressive=True)
        if path.stat().st_size < MAX_BYTES:
            break
    print(f"wrote {path} ({image.width}×{image.height}, {path.stat().st_size // 1024} KiB)")
    return path


def hide(viewer: Any, *suffixes: str) -> None:
    """Hide the layers whose names end with one of ``suffixes``."""
    for layer in viewer.layers:
        if layer.name.endswith(suffixes):
            layer.visible = False


def tissue_and_tiles(viewer: Any, out: Path, preview: Path | None) -> Any:
    """Detect tissue and cut 64 µm tiles (the DEMO model's tile size); the stain preview."""
    dock, widget = open_dock(viewer, "Tissue & tiles")
    widget.tile_px.value = 64
    widget.tile_mpp.value = 1.0
    widget.run()
    wait(widget)
    check(widget, "Tissue & tiles")
    shoot(viewer, dock, out / "napari-tissue.jpg", DOCK_WIDTH["tissue"])
    if preview is not None:
        widget.preview_n.value = 8
        widget.preview()
        wait(widget)
        check(widget, "Preview normalisation")
        settle(1.0)
        preview.parent.mkdir(parents=True, exist_ok=True)
        widget.preview_window.dialog.grab().save(str(preview))
        print(f"wrote {preview}")
        widget.preview_window.dialog.close()
    return widget


def extract_features(viewer: Any, out: Path) -> None:
    """Features of the tiles with the DEMO model's extractor; the embedding layer."""
    dock, widget = open_dock(viewer, "Extract features")
    widget.extractor.value = "colour-stats"
    widget.stain.value = "none"
    widget.run()
    wait(widget)
    check(widget, "Extract features")
    shoot(viewer, dock, out / "napari-features.jpg", DOCK_WIDTH["features"])


def predict_expression(viewer: Any, out: Path, bundle: Path) -> Any:
    """Predict with the DEMO bundle (its own tiles); the gene map and the top-genes table."""
    dock, widget = open_dock(viewer, "Predict expression")
    widget.bundle.value = str(bundle)
    widget.top_n.value = 8
    widget.run()
    wait(widget)
    check(widget, "Predict expression")
    hide(viewer, " tissue", " tiles", " feature embedding")
    settle()
    shoot(viewer, dock, out / "napari-predict.jpg", DOCK_WIDTH["predict"])
    return widget


def treatment_response(viewer: Any, out: Path, cohort: Path, partners: Path) -> None:
    """Score the drugs against the cohort; the best-scored drug's tile map."""
    dock, widget = open_dock(viewer, "Treatment response")
    widget.cohort.value = str(cohort)
    widget.partners.value = str(partners)
    widget.run()
    settle()
    check(widget, "Treatment response")
    widget.show_map()
    settle()
    check(widget, "Treatment response map")
    shoot(viewer, dock, out / "napari-response.jpg", DOCK_WIDTH["response"])


def main(argv: list[str] | None = None) -> int:
    """Make the inputs, open napari and take the four screenshots."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where the JPEGs go")
    parser.add_argument(
        "--work",
        type=Path,
        default=Path(tempfile.gettempdir()) / "deeppt-screenshots",
        help="folder for the demo cohort (made once, reused)",
    )
    parser.add_argument("--preview", type=Path, default=None, help="save the stain preview")
    args = parser.parse_args(argv)

    from napari_deeppt.samples import demo_bundle

    bundle = demo_bundle(progress=False)
    cohort, partners = prepare_cohort(args.work, bundle)
    # an empty cache from here on, so the docks extract the features as on a first use
    cache = tempfile.TemporaryDirectory(prefix="deeppt-screenshots-cache-")
    os.environ["NAPARI_DEEPPT_CACHE"] = cache.name

    import napari

    viewer = napari.Viewer(title="napari-deeppt")
    window = viewer.window._qt_window
    window.resize(*WINDOW)
    window.move(0, 0)
    viewer.open(str(find_slide()), plugin=PLUGIN)
    settle()

    args.out.mkdir(parents=True, exist_ok=True)
    tissue_and_tiles(viewer, args.out, args.preview)
    extract_features(viewer, args.out)
    predict_expression(viewer, args.out, bundle)
    treatment_response(viewer, args.out, cohort, partners)
    viewer.close()
    cache.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
