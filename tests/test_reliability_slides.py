"""Failure modes of reading slides and of the feature cache, and the guarantee for each.

Every slide here is written by the test, so what should come back is known: two slides that
differ only where the grid reads, files cut short or with a tile's byte count too small.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_deeppt import open_slide
from napari_deeppt.errors import SlideFormatError, SlideReadError
from napari_deeppt.features import extract_features
from napari_deeppt.testing import default_sample_spec, write_synthetic_slide
from napari_deeppt.tiles import make_tile_grid

COLOUR_STATS = {"extractor": "colour-stats", "stain": None, "progress": False}
MPP = 0.5


def _resolution(mpp: float = MPP) -> dict[str, object]:
    return {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}


def _tile_grid(slide, tile_px: int, mpp: float, rows: range, cols: range):
    """A grid (all tiles kept) restricted to the tiles whose level-0 corner is in the ranges."""
    grid = make_tile_grid(slide, tile_px=tile_px, mpp=mpp, min_tissue=0.0)
    x, y = grid.xy[:, 0], grid.xy[:, 1]
    keep = (x >= cols.start) & (x < cols.stop) & (y >= rows.start) & (y < rows.stop)
    return grid.subset(np.flatnonzero(keep))


# -- the feature cache follows content ------------------------------------------------------


@pytest.fixture(scope="module")
def uncompressed_pair(tmp_path_factory) -> tuple[Path, Path]:
    """Two uncompressed (memory-mapped) TIFFs of one size, colours swapped in rows 500–2400."""
    folder = tmp_path_factory.mktemp("uncompressed")
    image = default_sample_spec(width=1024, height=2900, mpp=MPP, seed=5).render(0, 0, 1024, 2900)
    swapped = image.copy()
    swapped[500:2400] = swapped[500:2400, :, ::-1]
    paths = folder / "a.tif", folder / "b.tif"
    for path, pixels in zip(paths, (image, swapped)):
        tifffile.imwrite(path, pixels, photometric="rgb", **_resolution())
    assert os.path.getsize(paths[0]) == os.path.getsize(paths[1])
    return paths


@pytest.mark.parametrize("grid_mpp", [MPP, 4 * MPP], ids=["stored-level", "derived-level"])
def test_slides_differing_only_in_the_middle_never_share_a_cache_entry(
    uncompressed_pair, grid_mpp, tmp_path
):
    """Two slides that differ only in the middle never share a feature-cache entry."""
    first, second = (open_slide(p) for p in uncompressed_pair)
    grid = _tile_grid(first, 64, grid_mpp, rows=range(600, 2300), cols=range(0, 1024))
    level = first.best_level_for_downsample(grid_mpp / MPP)
    assert first.level_info(level).derived == (grid_mpp != MPP)
    a = extract_features(first, grid, cache_dir=tmp_path, **COLOUR_STATS)
    b = extract_features(second, grid, cache_dir=tmp_path, **COLOUR_STATS)
    assert not b.from_cache
    assert not np.allclose(a.features, b.features)
    assert first.content_digest(grid) != second.content_digest(grid)


@pytest.fixture(scope="module")
def jpeg_svs(tmp_path_factory) -> Path:
    spec = default_sample_spec(width=4096, height=3072, mpp=MPP, seed=3)
    folder = tmp_path_factory.mktemp("svs")
    return write_synthetic_slide(folder / "big.svs", spec, format="svs", level_factors=(4,)).path


def _replace_tile_in_place(path: Path, index: int) -> None:
    """Overwrite one level-0 JPEG tile with a flat one padded to the same length.

    JPEG allows 0xFF fill bytes before a marker, so the file keeps its size, its directory
    and every other byte.
    """
    from imagecodecs import jpeg8_encode

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        shape = (page.tilelength, page.tilewidth, 3)
    flat = jpeg8_encode(np.full(shape, (40, 10, 90), np.uint8), level=90)
    assert flat.endswith(b"\xff\xd9") and len(flat) < count
    stream = flat[:-2] + b"\xff" * (count - len(flat)) + b"\xff\xd9"
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(stream)


def test_jpeg_slides_differing_in_one_middle_tile_never_share_a_cache_entry(jpeg_svs, tmp_path):
    """A JPEG slide whose one middle tile changed (same size) is never served the old features."""
    changed = tmp_path / "changed.svs"
    shutil.copy(jpeg_svs, changed)
    with tifffile.TiffFile(jpeg_svs) as tif:
        page = tif.pages[0]
        per_row = -(-page.imagewidth // page.tilewidth)
        size = os.path.getsize(jpeg_svs)
        # a tile whose bytes lie well inside the file: neither its first nor its last MiB
        index = next(
            i
            for i, (o, n) in enumerate(zip(page.dataoffsets, page.databytecounts))
            if o > (1 << 20) + 4096 and o + n < size - (1 << 20) - 4096
        )
    _replace_tile_in_place(changed, index)
    assert os.path.getsize(changed) == size
    row, col = (index // per_row) * 256, (index % per_row) * 256
    original, other = open_slide(jpeg_svs), open_slide(changed)
    assert not np.array_equal(
        original.read_region(col, row, 256, 256), other.read_region(col, row, 256, 256)
    )
    grid = _tile_grid(original, 256, MPP, rows=range(row - 256, row + 257), cols=range(0, 4096))
    a = extract_features(original, grid, cache_dir=tmp_path, **COLOUR_STATS)
    b = extract_features(other, grid, cache_dir=tmp_path, **COLOUR_STATS)
    assert not b.from_cache
    assert not np.allclose(a.features, b.features)


def test_identical_content_at_another_path_hits_the_cache(jpeg_svs, tmp_path):
    """A byte-identical copy of a slide at another path is served from the cache."""
    copy = tmp_path / "elsewhere" / "renamed.svs"
    copy.parent.mkdir()
    shutil.copy(jpeg_svs, copy)
    original = open_slide(jpeg_svs)
    grid = _tile_grid(original, 256, 2 * MPP, rows=range(1024, 2048), cols=range(1024, 3072))
    first = extract_features(original, grid, cache_dir=tmp_path, **COLOUR_STATS)
    again = extract_features(open_slide(copy), grid, cache_dir=tmp_path, **COLOUR_STATS)
    assert again.from_cache and not first.from_cache
    np.testing.assert_array_equal(again.features, first.features)


@pytest.fixture(scope="module")
def zarr_pair(tmp_path_factory) -> tuple[Path, Path, tuple[int, int]]:
    """Two OME-Zarr slides (128 px chunks); level 0 chunk (8, 8) is inverted in the second."""
    import zarr

    folder = tmp_path_factory.mktemp("zarr")
    spec = default_sample_spec(width=2048, height=1536, mpp=MPP, seed=3)
    first = write_synthetic_slide(folder / "a.ome.zarr", spec, format="ome-zarr", tile=128).path
    second = folder / "b.ome.zarr"
    shutil.copytree(first, second)
    array = zarr.open_array(str(second / "0"), mode="r+")
    block = array[:, 1024:1152, 1024:1152]
    array[:, 1024:1152, 1024:1152] = 255 - block
    return first, second, (1024, 1024)


def test_ome_zarr_differing_in_one_chunk_never_share_a_cache_entry(zarr_pair, tmp_path):
    """Two OME-Zarr slides that differ in one chunk never share a feature-cache entry."""
    first, second, (row, _) = zarr_pair
    a_slide, b_slide = open_slide(first), open_slide(second)
    grid = _tile_grid(a_slide, 128, MPP, rows=range(row - 256, row + 257), cols=range(0, 2048))
    a = extract_features(a_slide, grid, cache_dir=tmp_path, **COLOUR_STATS)
    b = extract_features(b_slide, grid, cache_dir=tmp_path, **COLOUR_STATS)
    assert not b.from_cache
    assert not np.allclose(a.features, b.features)


def test_a_change_the_grid_does_not_read_may_hit(zarr_pair, tmp_path):
    """The content digest covers exactly the chunks a grid reads: others may change freely."""
    first, second, (row, col) = zarr_pair
    a_slide, b_slide = open_slide(first), open_slide(second)
    away = _tile_grid(a_slide, 128, MPP, rows=range(0, 512), cols=range(0, 2048))
    assert len(away)
    assert a_slide.content_digest(away) == b_slide.content_digest(away)
    copy = tmp_path / "copy.ome.zarr"
    shutil.copytree(first, copy)
    near = _tile_grid(a_slide, 128, MPP, rows=range(row, row + 1), cols=range(col, col + 1))
    assert open_slide(copy).content_digest(near) == a_slide.content_digest(near)
    assert b_slide.content_digest(near) != a_slide.content_digest(near)


# -- a cut or short tile is an error, never grey rows -----------------------------------------


@pytest.fixture(scope="module")
def jpeg_tiff(tmp_path_factory) -> Path:
    """A single-level JPEG-tiled TIFF, 1024×768 px in 256 px tiles (3 rows of 4)."""
    image = default_sample_spec(width=1024, height=768, mpp=MPP, seed=1).render(0, 0, 1024, 768)
    path = tmp_path_factory.mktemp("jpeg") / "tiles.tif"
    tifffile.imwrite(
        path, image, tile=(256, 256), compression="jpeg", photometric="rgb", **_resolution()
    )
    return path


def _byte_counts(path: Path) -> tuple[int, list[int], str]:
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags["TileByteCounts"]
        return tag.valueoffset, list(tif.pages[0].databytecounts), tif.byteorder


def _short_tile_copy(jpeg_tiff: Path, folder: Path, index: int) -> Path:
    path = folder / "short.tif"
    shutil.copy(jpeg_tiff, path)
    valueoffset, counts, byteorder = _byte_counts(path)
    with open(path, "r+b") as fh:
        fh.seek(valueoffset + 4 * index)
        fh.write(struct.pack(f"{byteorder}I", counts[index] // 2))
    return path


def _cut_copy(jpeg_tiff: Path, folder: Path, size: int) -> Path:
    path = folder / "cut.tif"
    shutil.copy(jpeg_tiff, path)
    os.truncate(path, size)
    return path


def _assert_names_tile(error: pytest.ExceptionInfo, path: Path, row: int, col: int) -> None:
    message = str(error.value)
    assert str(path) in message and "level 0" in message
    assert f"row {row}, column {col}" in message and "truncated" in message


def test_a_tile_with_a_short_byte_count_is_an_error(jpeg_tiff, tmp_path):
    """A JPEG tile whose byte count is too small raises, naming the file, level and tile."""
    path = _short_tile_copy(jpeg_tiff, tmp_path, index=5)  # row 1, column 1
    slide, intact = open_slide(path), open_slide(jpeg_tiff)
    with pytest.raises(SlideReadError) as error:
        slide.read_region(256, 256, 256, 256)
    _assert_names_tile(error, path, 256, 256)
    with pytest.raises(SlideReadError):
        slide.read_region(200, 200, 100, 100)  # a window that only partly covers it
    np.testing.assert_array_equal(
        slide.read_region(0, 0, 512, 256), intact.read_region(0, 0, 512, 256)
    )


def test_a_file_cut_inside_its_last_tile_is_an_error(jpeg_tiff, tmp_path):
    """A file cut in the middle of a tile's data raises for that tile; earlier tiles read."""
    _, counts, _ = _byte_counts(jpeg_tiff)
    path = _cut_copy(jpeg_tiff, tmp_path, os.path.getsize(jpeg_tiff) - counts[-1] // 2)
    slide, intact = open_slide(path), open_slide(jpeg_tiff)
    with pytest.raises(SlideReadError) as error:
        slide.read_region(768, 512, 256, 256)
    _assert_names_tile(error, path, 512, 768)
    np.testing.assert_array_equal(
        slide.read_region(0, 0, 1024, 512), intact.read_region(0, 0, 1024, 512)
    )


def test_the_jpeg_batch_reader_refuses_a_short_tile(jpeg_tiff, tmp_path):
    """The batched (GPU/CPU) JPEG path raises for a short tile instead of decoding grey rows."""
    from napari_deeppt.features.gpu.jpeg import JpegTileReader

    path = _short_tile_copy(jpeg_tiff, tmp_path, index=5)
    slide = open_slide(path)
    grid = make_tile_grid(open_slide(jpeg_tiff), tile_px=256, mpp=MPP, min_tissue=0.0)
    reader = JpegTileReader.for_grid(slide, grid)
    assert reader is not None
    hit = int(np.flatnonzero((grid.xy[:, 0] == 256) & (grid.xy[:, 1] == 256))[0])
    with pytest.raises(SlideReadError) as error:
        reader.read_batch([hit], "cpu")
    _assert_names_tile(error, path, 256, 256)
    with pytest.raises(SlideReadError):
        extract_features(slide, grid, gpu_decode=True, cache_dir=tmp_path, **COLOUR_STATS)
    assert reader.read_batch([0], "cpu").shape == (1, 256, 256, 3)


def test_a_file_cut_before_its_directory_says_truncated(jpeg_tiff, tmp_path, capsys, caplog):
    """A file cut before its image directory says it is truncated, in one line, and no more."""
    caplog.set_level(logging.DEBUG)
    with tifffile.TiffFile(jpeg_tiff) as tif:
        ifd = tif.pages[0].offset
    path = _cut_copy(jpeg_tiff, tmp_path, ifd)
    with pytest.raises(SlideFormatError) as error:
        open_slide(path, mpp=MPP)
    message = str(error.value)
    assert message.startswith(str(path)) and "\n" not in message
    assert f"truncated ({ifd} bytes; its directory at offset {ifd} is past the end)" in message
    assert "re-copy" in message
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    assert not [r for r in caplog.records if r.name.startswith("tifffile")]


def test_a_pyramid_cut_before_a_later_directory_says_truncated(tmp_path, capsys, caplog):
    """A pyramid cut before a later level's directory is refused, not opened with fewer levels."""
    caplog.set_level(logging.DEBUG)
    spec = default_sample_spec(width=2048, height=1536, mpp=MPP, seed=3)
    svs = write_synthetic_slide(tmp_path / "p.svs", spec, format="svs", level_factors=(4,)).path
    with tifffile.TiffFile(svs) as tif:
        second = tif.pages[1].offset
    cut = _cut_copy(svs, tmp_path, second - 100)
    with pytest.raises(SlideFormatError, match="truncated") as error:
        open_slide(cut)
    assert str(error.value).startswith(str(cut))
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    assert not [r for r in caplog.records if r.name.startswith("tifffile")]


def test_an_ome_zarr_missing_a_level_says_so(zarr_pair, tmp_path):
    """An OME-Zarr copy without one of its level arrays is refused in one line naming it."""
    first, _, _ = zarr_pair
    copy = tmp_path / "partial.ome.zarr"
    shutil.copytree(first, copy)
    (copy / "0" / ".zarray").unlink()
    with pytest.raises(SlideFormatError) as error:
        open_slide(copy)
    message = str(error.value)
    assert message.startswith(str(copy)) and "'0'" in message and "re-copy" in message


def test_an_uncompressed_slide_digest_reads_only_the_rows_the_grid_reads(uncompressed_pair):
    """An uncompressed single-strip TIFF is digested by the rows read, not the whole file."""
    first, second = (open_slide(p) for p in uncompressed_pair)
    with tifffile.TiffFile(uncompressed_pair[0]) as tif:
        assert len(tif.pages[0].dataoffsets) == 1  # one strip holds every row
    top = _tile_grid(first, 64, MPP, rows=range(0, 256), cols=range(0, 1024))
    middle = _tile_grid(first, 64, MPP, rows=range(448, 480), cols=range(0, 1024))
    assert first.content_digest(top) == second.content_digest(top)  # rows 0–319 are equal
    assert first.content_digest(middle) != second.content_digest(middle)  # reach row 543


def _aperio_described_tiff(path: Path, mpp: str) -> Path:
    """A TIFF written by tifffile (its own layout) whose description is Aperio's."""
    pixels = np.full((256, 256, 3), 200, np.uint8)
    description = (
        "Aperio Image Library v12.0.0\n256x256 [0,0 256x256] (128x128) JPEG/RGB Q=70"
        f"|AppMag = 20|MPP = {mpp}"
    )
    tifffile.imwrite(path, pixels, tile=(128, 128), photometric="rgb", description=description)
    return path


def test_an_aperio_description_on_another_layout_opens_with_its_pixel_size(tmp_path):
    """A TIFF tifffile reads as its own layout but described as Aperio (an exported SVS)
    opens with the description's pixel size, not a StopIteration traceback; an MPP of inf
    is no pixel size (the objective's estimate, with a warning), never an infinite one."""
    slide = open_slide(_aperio_described_tiff(tmp_path / "export.svs", "0.25"))
    assert slide.dimensions == (256, 256) and slide.mpp == 0.25
    assert slide.read_region(0, 0, 8, 8)[0, 0].tolist() == [200, 200, 200]
    with pytest.warns(UserWarning, match="estimated 0.5 µm/px from its 20× objective"):
        slide = open_slide(_aperio_described_tiff(tmp_path / "inf.svs", "inf"))
    assert slide.mpp == 0.5


def test_a_pixel_size_that_is_not_a_positive_number_is_none_or_refused(tmp_path):
    """An OME-Zarr scale of 0 or infinity is no pixel size (never 0 or inf µm/px); mpp= or
    magnification= that is not a positive finite number is refused in one line."""
    import json

    path = tmp_path / "zero.zarr"
    write_synthetic_slide(path, default_sample_spec(512, 512, 0.5), format="ome-zarr")
    assert open_slide(path).mpp == 0.5
    attrs = json.loads((path / ".zattrs").read_text())
    for scale in (0.0, float("inf")):
        attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] = [
            1.0, scale, scale
        ]  # fmt: skip
        (path / ".zattrs").write_text(json.dumps(attrs))
        assert open_slide(path).mpp is None
    slide_file = _aperio_described_tiff(tmp_path / "s.svs", "0.25")
    for value in (float("inf"), 0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match=r"mpp \(µm per level-0 pixel\) must be a positive"):
            open_slide(slide_file, mpp=value)
        with pytest.raises(ValueError, match="magnification must be a positive number"):
            open_slide(_aperio_described_tiff(tmp_path / "none.svs", "none"), magnification=value)
        with pytest.raises(ValueError, match="magnification must be a positive number"):
            open_slide(slide_file, magnification=value)  # also where the file has a pixel size
