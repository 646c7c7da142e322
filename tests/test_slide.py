"""Lazy slide reading: formats, geometry, pixels equal to tifffile's own decode, metadata."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_deeppt import MissingMppError, open_slide
from napari_deeppt.samples import cmu1_small_region_path
from napari_deeppt.slide import resize_rgb


@pytest.mark.parametrize(
    ("fixture", "fmt", "n_levels", "mpp_source", "associated"),
    [
        ("svs_slide", "aperio-svs", 2, "aperio MPP", {"thumbnail", "label", "macro"}),
        ("ome_tiff_slide", "ome-tiff", 3, "OME PhysicalSizeX/Y", {"label"}),
        ("tiff_slide", "pyramidal-tiff", 2, "TIFF resolution tags", {"image1"}),
        ("zarr_slide", "ome-zarr", 3, "OME-Zarr coordinateTransformations", set()),
    ],
)
def test_open_formats(request, fixture, fmt, n_levels, mpp_source, associated):
    truth = request.getfixturevalue(fixture)
    slide = open_slide(truth.path)
    assert slide.format == fmt
    assert slide.dimensions == (truth.width, truth.height)
    assert slide.level_count == n_levels
    assert slide.mpp == pytest.approx(truth.mpp, rel=1e-3)
    assert slide.mpp_source == mpp_source
    assert set(slide.associated_images) == associated
    assert slide.is_rgb
    for level in slide.levels:  # lazy (dask), (H, W, 3) uint8
        assert type(level).__name__ == "Array"
        assert level.dtype == np.uint8 and level.shape[2] == 3
    # downsample follows level sizes exactly
    for (w, h), (dx, dy) in zip(slide.level_dimensions, slide.downsamples_xy):
        assert dx == pytest.approx(truth.width / w)
        assert dy == pytest.approx(truth.height / h)


def test_associated_images_are_not_levels(svs_slide):
    slide = open_slide(svs_slide.path)
    level_shapes = {lv.shape for lv in slide.levels}
    for name, image in slide.associated_images.items():
        assert image.shape not in level_shapes, name
    label = np.asarray(slide.associated_images["label"])
    assert label.shape == (300, 300, 3)


def test_read_region_equals_tifffile_full_decode_real_svs():
    path = cmu1_small_region_path()
    full = tifffile.imread(path)
    slide = open_slide(path)
    assert slide.mpp == pytest.approx(0.499)
    assert slide.objective_power == 20
    assert np.array_equal(slide.read_region(0, 0, 2220, 2967), full)
    assert np.array_equal(slide.read_region(1003, 517, 333, 257), full[517:774, 1003:1336])
    assert np.array_equal(np.asarray(slide.levels[0][100:400, 200:300]), full[100:400, 200:300])


@pytest.mark.parametrize("fixture", ["svs_slide", "ome_tiff_slide", "tiff_slide"])
def test_read_region_every_level_equals_tifffile(request, fixture):
    truth = request.getfixturevalue(fixture)
    slide = open_slide(truth.path)
    with tifffile.TiffFile(truth.path) as tif:
        main = tif.series[0]
        stored = [main.levels[i].asarray() for i in range(len(main.levels))]
    for level, full in enumerate(stored):
        ds = slide.downsamples_xy[level]
        x, y = int(96 * ds[0]), int(40 * ds[1])  # level-0 coordinates
        region = slide.read_region(x, y, 150, 110, level=level)
        assert np.array_equal(region, full[40:150, 96:246]), f"level {level}"


def test_ome_zarr_equals_direct_zarr(zarr_slide):
    import zarr

    slide = open_slide(zarr_slide.path)
    group = zarr.open_group(str(zarr_slide.path), mode="r")
    for level in range(3):
        direct = np.asarray(group[str(level)][:, 10:70, 20:90]).transpose(1, 2, 0)
        ds = slide.downsamples_xy[level]
        region = slide.read_region(round(20 * ds[0]), round(10 * ds[1]), 70, 60, level=level)
        assert np.array_equal(region, direct)


def test_synthetic_pixels_match_their_truth(zarr_slide):
    """Lossless storage: the slide holds exactly what the generator rendered."""
    slide = open_slide(zarr_slide.path)
    expected = zarr_slide.render(300, 200, 64, 48)
    assert np.array_equal(slide.read_region(300, 200, 64, 48), expected)


def test_read_region_outside_is_filled(svs_slide):
    slide = open_slide(svs_slide.path)
    w, h = slide.dimensions
    region = slide.read_region(w - 10, h - 20, 40, 50)
    inside = slide.read_region(w - 10, h - 20, 10, 20)
    assert np.array_equal(region[:20, :10], inside)
    assert (region[20:] == 255).all() and (region[:, 10:] == 255).all()
    assert (slide.read_region(-100, -100, 50, 50, fill=0) == 0).all()


def test_read_region_rejects_bad_level(svs_slide):
    slide = open_slide(svs_slide.path)
    with pytest.raises(IndexError, match="levels 0–1"):
        slide.read_region(0, 0, 10, 10, level=5)


def test_read_region_at_mpp_picks_level_then_resizes(ome_tiff_slide):
    slide = open_slide(ome_tiff_slide.path)  # levels at 0.5, 1.0, 2.0 µm/px
    with tifffile.TiffFile(ome_tiff_slide.path) as tif:
        level1 = tif.series[0].levels[1].asarray()
    # 1.0 µm/px is stored exactly: no resize, equals level 1
    out = slide.read_region_at_mpp(200, 100, 120, 80, mpp=1.0)
    assert np.array_equal(out, level1[50:130, 100:220])
    # 1.5 µm/px: read from level 1 (the coarsest as fine as asked), then resized
    out = slide.read_region_at_mpp(200, 100, 120, 80, mpp=1.5)
    expected = resize_rgb(level1[50:170, 100:280], 120, 80)
    assert out.shape == (80, 120, 3)
    assert np.array_equal(out, expected)


def test_single_level_slide_gets_lazy_derived_levels(slide_dir, small_spec):
    from napari_deeppt import write_synthetic_slide

    spec = small_spec.__class__(width=5000, height=2600, mpp=0.25, regions=small_spec.regions)
    truth = write_synthetic_slide(
        slide_dir / "single.tif",
        spec,
        format="tiff",
        level_factors=(),
        compression="zlib",
        associated=False,
    )
    slide = open_slide(truth.path)
    assert slide.n_stored_levels == 1
    assert slide.level_dimensions == [(5000, 2600), (1250, 650)]
    assert slide.level_info(1).derived and not slide.level_info(0).derived
    level0 = tifffile.imread(truth.path)
    block = level0[400:480, 800:880].reshape(20, 4, 20, 4, 3).mean(axis=(1, 3))
    region = slide.read_region(800, 400, 20, 20, level=1)
    assert np.abs(region.astype(float) - block).max() <= 0.5


def test_mpp_override_and_magnification(svs_slide, no_mpp_slide):
    assert open_slide(svs_slide.path, mpp=0.3).mpp == 0.3
    assert open_slide(svs_slide.path, mpp=0.3).mpp_source == "user"
    slide = open_slide(no_mpp_slide.path, magnification=40)
    assert slide.mpp == pytest.approx(0.25)
    assert slide.mpp_source == "user magnification"
    with pytest.raises(ValueError, match="positive"):
        open_slide(svs_slide.path, mpp=-1)


def test_missing_mpp_opens_then_asks_for_it(no_mpp_slide):
    slide = open_slide(no_mpp_slide.path)
    assert slide.mpp is None
    assert slide.level_info(0).mpp is None
    with pytest.raises(MissingMppError) as info:
        slide.read_region_at_mpp(0, 0, 10, 10, mpp=0.5)
    message = str(info.value)
    assert str(no_mpp_slide.path) in message
    assert "mpp=" in message and "magnification" in message


@pytest.mark.parametrize(
    ("unit", "resolution", "expected"),
    [("INCH", 25400 / 0.25, 0.25), ("CENTIMETER", 1e4 / 0.5, 0.5)],
)
def test_mpp_from_resolution_tags(tmp_path, unit, resolution, expected):
    path = tmp_path / "res.tif"
    tifffile.imwrite(
        path,
        np.full((64, 64, 3), 200, np.uint8),
        photometric="rgb",
        resolution=(resolution, resolution),
        resolutionunit=unit,
    )
    slide = open_slide(path)
    assert slide.mpp == pytest.approx(expected)
    assert slide.mpp_source == "TIFF resolution tags"


def test_screen_dpi_is_not_a_pixel_size(tmp_path):
    path = tmp_path / "dpi.tif"
    tifffile.imwrite(
        path,
        np.full((64, 64, 3), 200, np.uint8),
        photometric="rgb",
        resolution=(72, 72),
        resolutionunit="INCH",
    )
    with pytest.warns(UserWarning, match="72 dpi"):
        slide = open_slide(path)
    assert slide.mpp is None


def test_ome_units_are_converted(tmp_path):
    path = tmp_path / "nm.ome.tif"
    tifffile.imwrite(
        path,
        np.full((64, 64, 3), 200, np.uint8),
        photometric="rgb",
        metadata={
            "axes": "YXS",
            "PhysicalSizeX": 250.0,
            "PhysicalSizeXUnit": "nm",
            "PhysicalSizeY": 250.0,
            "PhysicalSizeYUnit": "nm",
        },
    )
    assert open_slide(path).mpp == pytest.approx(0.25)


def test_info_lists_everything(svs_slide):
    info = open_slide(svs_slide.path).info()
    assert info["objective_power"] == 20
    assert info["compression"] == "jpeg"
    assert [lv["tile"] for lv in info["levels"]] == [(256, 256), (256, 256)]
    assert info["associated_images"]["label"] == (300, 300, 3)


def test_direct_tile_decoder_fallback_equals_zarr_path(svs_slide, monkeypatch):
    """If tifffile's zarr store is unusable (its API changed), tiles are decoded directly."""
    import napari_deeppt.backends.tiff as tiff_backend

    expected = open_slide(svs_slide.path).read_region(300, 200, 700, 500)

    def broken(store):
        raise TypeError("simulated zarr API change")

    monkeypatch.setattr(tiff_backend, "_zarr_open_array", broken)
    slide = open_slide(svs_slide.path)
    assert isinstance(slide._sources[0].array, tiff_backend.TiffTileArray)
    np.testing.assert_array_equal(slide.read_region(300, 200, 700, 500), expected)
    np.testing.assert_array_equal(
        np.asarray(slide.levels[0][:300, :300]), tifffile.imread(svs_slide.path)[:300, :300]
    )


def test_jpeg2000_tiles(tmp_path, small_spec):
    """Aperio also stores JPEG 2000 tiles; imagecodecs decodes them through tifffile."""
    from napari_deeppt import write_synthetic_slide

    truth = write_synthetic_slide(
        tmp_path / "j2k.svs",
        small_spec,
        compression="jpeg2000",
        level_factors=(4,),
        associated=False,
    )
    slide = open_slide(truth.path)
    assert "jpeg2000" in slide.compression
    full = tifffile.imread(truth.path)
    np.testing.assert_array_equal(slide.read_region(100, 50, 400, 300), full[50:350, 100:500])


def test_ome_tiff_with_levels_as_separate_series(tmp_path, small_spec):
    path = tmp_path / "series.ome.tif"
    base = small_spec.render(0, 0, 1024, 768)
    with tifffile.TiffWriter(path, ome=True) as tw:
        for factor in (1, 2, 4):
            image = base[::factor, ::factor]
            tw.write(
                image,
                photometric="rgb",
                tile=(256, 256),
                metadata={
                    "axes": "YXS",
                    "PhysicalSizeX": 0.5 * factor,
                    "PhysicalSizeY": 0.5 * factor,
                    "Name": f"level {factor}",
                },
            )
    slide = open_slide(path)
    assert slide.level_dimensions == [(1024, 768), (512, 384), (256, 192)]
    assert slide.mpp == pytest.approx(0.5)
    assert not slide.associated_images
    np.testing.assert_array_equal(
        slide.read_region(64, 32, 100, 80, level=2), base[::4, ::4][8:88, 16:116]
    )


@pytest.mark.parametrize("fixture", ["svs_slide", "ome_tiff_slide"])
def test_tiled_rgb_levels_are_decoded_directly_with_zarrs_pixels(request, fixture, monkeypatch):
    """A tiled, compressed RGB level is read straight from its TIFF tiles (faster than
    tifffile's zarr store, issue 15), with exactly the pixels the zarr path gives."""
    import napari_deeppt.backends.tiff as tiff_backend

    path = request.getfixturevalue(fixture).path
    slide = open_slide(path)
    assert isinstance(slide._sources[0].array, tiff_backend.TiffTileArray)
    direct = [slide.read_region(300, 200, 700, 500), slide.read_region(0, 0, 512, 512, level=1)]
    monkeypatch.setattr(tiff_backend, "_decode_directly", lambda *args: False)
    through_zarr = open_slide(path)
    assert not isinstance(through_zarr._sources[0].array, tiff_backend.TiffTileArray)
    np.testing.assert_array_equal(direct[0], through_zarr.read_region(300, 200, 700, 500))
    np.testing.assert_array_equal(direct[1], through_zarr.read_region(0, 0, 512, 512, level=1))


def test_direct_tile_reads_from_many_threads_equal_serial_reads(svs_slide):
    """The direct TIFF decoder shares one file handle between reader threads: reads must be
    serialised (seek + read), never interleaved into another tile's bytes."""
    from concurrent.futures import ThreadPoolExecutor

    slide = open_slide(svs_slide.path)
    rng = np.random.default_rng(0)
    w, h = slide.dimensions
    corners = [(int(rng.integers(0, w - 300)), int(rng.integers(0, h - 300))) for _ in range(48)]
    serial = [slide.read_region(x, y, 300, 300) for x, y in corners]
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(lambda c: slide.read_region(c[0], c[1], 300, 300), corners))
    for a, b in zip(serial, threaded, strict=True):
        np.testing.assert_array_equal(a, b)
