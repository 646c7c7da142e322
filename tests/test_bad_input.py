"""Bad input: each gets a clear error naming the file and the problem; nothing is written."""

from __future__ import annotations

import os
import shutil
import tracemalloc

import numpy as np
import pytest
import tifffile

from napari_deeppt import (
    NotRGBError,
    SlideFormatError,
    SlideNotFoundError,
    SlideReadError,
    open_slide,
)


def test_missing_path(tmp_path):
    with pytest.raises(SlideNotFoundError, match="no such file"):
        open_slide(tmp_path / "nothing.svs")


def test_not_a_tiff(tmp_path):
    path = tmp_path / "image.svs"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(SlideFormatError, match=r"image\.svs.*not a TIFF"):
        open_slide(path)


def test_directory_that_is_not_zarr(tmp_path):
    (tmp_path / "folder.zarr").mkdir()
    with pytest.raises(SlideFormatError, match="not a Zarr store"):
        open_slide(tmp_path / "folder.zarr")


def test_zarr_that_is_not_ome(tmp_path):
    import zarr

    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w").create_array(
        "data", shape=(4, 4), dtype="u1"
    )
    with pytest.raises(SlideFormatError, match="not an OME-Zarr image"):
        open_slide(tmp_path / "plain.zarr")


def test_truncated_file_names_file_and_tile(svs_slide, tmp_path):
    path = tmp_path / "truncated.svs"
    data = svs_slide.path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    try:
        slide = open_slide(path)
    except SlideFormatError as exc:  # the header lies beyond the cut
        assert "truncated.svs" in str(exc)
        return
    with pytest.raises(SlideReadError) as info:
        np.asarray(slide.levels[0])  # every tile
    message = str(info.value)
    assert "truncated.svs" in message and "level 0" in message and "tile at row" in message


def test_corrupt_tile_names_file_and_tile(svs_slide, tmp_path):
    path = tmp_path / "corrupt.svs"
    shutil.copy(svs_slide.path, path)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        index = 9  # row 1, column 1 of 8 tiles per row (2048 / 256)
        offset, count = page.dataoffsets[index], page.databytecounts[index]
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\x00" * count)
    slide = open_slide(path)
    assert slide.read_region(0, 0, 256, 256).shape == (256, 256, 3)  # other tiles are fine
    with pytest.raises(SlideReadError) as info:
        slide.read_region(0, 0, 600, 600)
    message = str(info.value)
    assert "corrupt.svs" in message
    assert "tile at row 256, column 256" in message


def test_grayscale_and_fluorescence_open_but_are_refused_by_he_pipeline(tmp_path):
    gray = tmp_path / "gray.tif"
    tifffile.imwrite(gray, np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    fluo = tmp_path / "fluo.ome.tif"
    tifffile.imwrite(fluo, np.zeros((4, 64, 80), np.uint16), metadata={"axes": "CYX"})
    for path, channels in ((gray, 1), (fluo, 4)):
        slide = open_slide(path)
        assert slide.n_channels == channels and not slide.is_rgb
        assert slide.read_region(0, 0, 8, 8).shape == (8, 8, channels)
        with pytest.raises(NotRGBError, match=f"{path.name}.*{channels} channel"):
            slide.require_rgb()
    assert open_slide(fluo).levels[0].shape == (64, 80, 4)


def test_huge_non_pyramidal_tiff_opens_lazily(tmp_path):
    """A 30000² uncompressed single-strip TIFF (2.7 GB, written sparse) opens in bounded memory."""
    path = tmp_path / "huge.tif"
    tifffile.imwrite(path, shape=(30000, 30000, 3), dtype=np.uint8, photometric="rgb")
    tracemalloc.start()
    slide = open_slide(path)
    region = slide.read_region(15000, 15000, 512, 512)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert region.shape == (512, 512, 3)
    assert peak < 100 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    assert slide.n_stored_levels == 1
    assert max(slide.level_dimensions[-1]) <= 2048  # derived, lazily


def test_reading_writes_nothing_in_the_users_folder(svs_slide, zarr_slide, tmp_path):
    folder = tmp_path / "user"
    folder.mkdir()
    shutil.copy(svs_slide.path, folder / "a.svs")
    shutil.copytree(zarr_slide.path, folder / "b.ome.zarr")

    def snapshot():
        return {
            (
                root,
                name,
                os.stat(os.path.join(root, name)).st_mtime_ns,
                os.stat(os.path.join(root, name)).st_size,
            )
            for root, _, files in os.walk(folder)
            for name in files
        }

    before = snapshot()
    for name in ("a.svs", "b.ome.zarr"):
        slide = open_slide(folder / name)
        slide.read_region(0, 0, 300, 300)
        slide.get_thumbnail(256)
        slide.close()
    assert snapshot() == before


def test_an_argument_of_the_wrong_kind_is_one_line_in_the_api(tmp_path, svs_slide):
    """A dict, list, number or None where a slide, manifest, spot table or bundle path
    belongs is a DeepPTError (InputTypeError) saying what was expected, never pathlib's
    'expected str, bytes or os.PathLike object'."""
    import napari_deeppt as dp
    from napari_deeppt.errors import DeepPTError, InputTypeError

    calls = [
        (lambda: dp.open_slide({}), r"the slide must be a file path \(or a Slide\), not dict"),
        (lambda: dp.open_slide(None), "not NoneType"),
        (lambda: dp.predict(svs_slide.path, None), "model bundle must be a .deeppt file"),
        (lambda: dp.run_cohort({}, "m.deeppt", tmp_path / "o"), "a CSV file path or a DataFrame"),
        (lambda: dp.train([1], "e.csv", tmp_path / "m.deeppt"), "not list"),
        (lambda: dp.predict_spots(3, "m.deeppt"), "spot table must be a file path"),
        (lambda: dp.tile_response("s.svs", None, None), r"needs a Prediction .*not str"),
    ]
    for call, message in calls:
        with pytest.raises(InputTypeError, match=message) as info:
            call()
        assert isinstance(info.value, DeepPTError) and isinstance(info.value, TypeError)
    assert not list(tmp_path.iterdir())


def test_an_empty_file_says_it_is_empty(tmp_path):
    path = tmp_path / "copied.svs"
    path.write_bytes(b"")
    with pytest.raises(SlideFormatError, match=r"copied\.svs: the file is empty \(0 bytes\)"):
        open_slide(path)
