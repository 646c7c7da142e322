"""napari glue: manifest, reader, sample data, placement in µm, no level-0 decode."""

from __future__ import annotations

import numpy as np
import pytest

from napari_deeppt._napari.reader import get_reader, scale_bar
from napari_deeppt.backends.base import LevelSource


def test_manifest_validates_and_is_installed():
    from pathlib import Path

    import npe2

    root = Path(__file__).resolve().parents[2]
    manifest = npe2.PluginManifest.from_file(root / "napari.yaml")
    assert manifest.name == "napari-deeppt"
    installed = npe2.PluginManifest.from_distribution("napari-deeppt")
    assert installed.contributions.readers[0].command == "napari-deeppt.get_reader"
    from importlib.metadata import distribution

    meta = distribution("napari-deeppt").metadata
    assert "Framework :: napari" in meta.get_all("Classifier")


def test_npe2_validate_cli():
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / "npe2"
    result = subprocess.run([str(exe), "validate", "napari-deeppt"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "name", ["a.svs", "a.tif", "a.TIFF", "a.ome.tif", "a.ome.tiff", "a.zarr", "a.ome.zarr/"]
)
def test_reader_claims_slides(name):
    assert get_reader(name) is not None


@pytest.mark.parametrize("name", ["a.png", "a.jpg", "a.czi", ["a.svs", "b.svs"]])
def test_reader_declines_others(name):
    assert get_reader(name) is None


def test_reader_layer_in_micrometres(make_napari_viewer, svs_slide):
    viewer = make_napari_viewer()
    layers = viewer.open(str(svs_slide.path), plugin="napari-deeppt")
    layer = layers[0]
    assert layer.name == "small"
    assert layer.multiscale and layer.rgb
    assert tuple(layer.scale) == pytest.approx((0.5, 0.5))
    assert tuple(str(u) for u in layer.units) == ("micrometer", "micrometer")
    assert layer.metadata["mpp"] == pytest.approx(0.5)
    assert layer.metadata["objective_power"] == 20
    assert layer.metadata["path"] == str(svs_slide.path)
    # a tissue point in µm lands on tissue in the image: world -> data -> pixel value
    region = svs_slide.regions[0]
    world = (region.cy * 0.5, region.cx * 0.5)
    row, col = (round(v) for v in layer.world_to_data(world))
    pixel = np.asarray(layer.data[0][row, col])
    assert pixel.mean() < 200  # stained tissue, not glass
    assert np.asarray(layer.data[0][5, 5]).mean() > 225  # corner is glass


def test_reader_reports_bad_file(make_napari_viewer, tmp_path):
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"II*\x00" + bytes(20))
    viewer = make_napari_viewer()
    with pytest.raises(Exception, match=r"broken\.svs"):
        viewer.open(str(bad), plugin="napari-deeppt")


def test_opening_a_giant_slide_never_decodes_level_0(make_napari_viewer, giant_slide, monkeypatch):
    """100k × 100k px: level 0 would need 30 GB; opening and showing it reads only bits."""
    reads: list[tuple[str, int]] = []
    original = LevelSource.read

    def spy(self, rows, cols):
        reads.append((self.name, (rows.stop - rows.start) * (cols.stop - cols.start)))
        return original(self, rows, cols)

    monkeypatch.setattr(LevelSource, "read", spy)
    viewer = make_napari_viewer()
    layer = viewer.open(str(giant_slide.path), plugin="napari-deeppt")[0]
    viewer.reset_view()
    viewer.window._qt_viewer.canvas.native.repaint()  # draw at least once
    assert layer.data[0].shape == (100_000, 100_000, 3)
    level0_pixels = sum(n for name, n in reads if name == "level 0")
    assert level0_pixels <= 4096 * 4096, f"read {level0_pixels} level-0 pixels"


def test_sample_data(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-deeppt", "synthetic-he")
    layer = viewer.layers["synthetic H&E"]
    assert layer.metadata["synthetic_truth"].tissue_area_um2 > 0
    assert tuple(layer.scale) == pytest.approx((0.5, 0.5))
    viewer.open_sample("napari-deeppt", "cmu1-small-region")
    assert viewer.layers["CMU-1-Small-Region"].metadata["mpp"] == pytest.approx(0.499)


def test_wheel_carries_the_root_manifest(tmp_path):
    """The wheel has napari_deeppt/napari.yaml with the root manifest's content (not a link)."""
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(root),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    wheel = next(tmp_path.glob("napari_deeppt-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert names.count("napari_deeppt/napari.yaml") == 1
        assert zf.read("napari_deeppt/napari.yaml") == (root / "napari.yaml").read_bytes()
        assert "napari_deeppt/data/CMU-1-Small-Region.svs" in names
        entry_points = zf.read(next(n for n in names if n.endswith("entry_points.txt")))
        assert b"napari_deeppt:napari.yaml" in entry_points


def test_opening_a_slide_shows_the_um_scale_bar(make_napari_viewer, svs_slide, no_mpp_slide):
    viewer = make_napari_viewer()
    viewer.open(str(no_mpp_slide.path), plugin="napari-deeppt")
    assert not scale_bar(viewer).visible  # no pixel size: a scale bar would read in pixels
    viewer.open(str(svs_slide.path), plugin="napari-deeppt")
    assert scale_bar(viewer).visible


def test_dropping_an_svs_does_not_ask_which_reader(make_napari_viewer, svs_slide):
    """napari's builtin reader claims .svs too (and would read level 0 whole), so napari asked
    which plugin to use; once this plugin ran, .svs files open with it. A choice the user
    made is kept."""
    from napari.settings import get_settings

    from napari_deeppt._napari.reader import prefer_this_reader

    viewer = make_napari_viewer()
    readers = get_settings().plugins
    readers.extension2reader = {}
    with pytest.raises(Exception, match="Multiple plugins"):
        viewer.open(str(svs_slide.path), plugin=None)  # as a drop does: napari asks
    viewer.open(str(svs_slide.path), plugin="napari-deeppt")  # e.g. chosen once, or a sample
    layers = viewer.open(str(svs_slide.path), plugin=None)  # dropped: no question asked
    assert layers[0].metadata["deeppt_slide"].path == svs_slide.path
    readers.extension2reader = {"*.svs": "napari"}  # the user's own choice stays
    assert prefer_this_reader() == []
    assert readers.extension2reader == {"*.svs": "napari"}
