"""The deeppt command line: output a person can read, errors without tracebacks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import quick_train_args
from napari_deeppt.cli import main
from napari_deeppt.samples import cmu1_small_region_path


def test_info_prints_levels_mpp_and_associated(capsys):
    assert main(["info", str(cmu1_small_region_path())]) == 0
    out = capsys.readouterr().out
    assert "0.4990 µm/px (from aperio MPP)" in out
    assert "20×" in out and "240×240" in out and "jpeg" in out
    assert "2220 × 2967" in out
    assert "label (387×463)" in out and "macro (1280×431)" in out


def test_info_json_and_mpp_override(capsys, no_mpp_slide):
    assert main(["info", "--json", str(no_mpp_slide.path)]) == 0
    assert json.loads(capsys.readouterr().out)["mpp"] is None
    assert main(["info", "--json", "--mpp", "0.33", str(no_mpp_slide.path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["mpp"] == 0.33 and info["mpp_source"] == "user"


def test_errors_are_one_line_with_status_2(capsys, tmp_path):
    bad = tmp_path / "bad.svs"
    bad.write_text("not a slide")
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.svs" in err and "Traceback" not in err


def test_demo_writes_overview_pngs(tmp_path, svs_slide):
    from PIL import Image

    assert main(["demo", "--out", str(tmp_path), "--slide", str(svs_slide.path)]) == 0
    assert (tmp_path / "small-tiles.png").exists()
    for name in (
        "small.expression.csv",
        "small.tiles.h5ad",
        "small.expression.png",
        "small.tiles.geojson",
    ):
        assert (tmp_path / name).exists(), name  # the demo model's prediction
    png = tmp_path / "small-overview.png"
    image = Image.open(png)
    assert max(image.size) == 1600
    pixels = image.convert("RGB")
    assert pixels.getpixel((image.width // 2, 5)) > (200, 200, 200)  # glass at the top edge
    assert main(["demo", "--out", str(tmp_path), "--slide", str(svs_slide.path)]) == 0  # rerun


def test_tiles_writes_grid_mask_and_overview_and_never_overwrites(tmp_path, capsys, svs_slide):
    from napari_deeppt.tiles import TileGrid
    from napari_deeppt.tissue import TissueMask

    args = ["tiles", str(svs_slide.path), "--out", str(tmp_path), "--tile-px", "128", "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    grid = TileGrid.load(tmp_path / "small.tiles.csv")
    mask = TissueMask.load(tmp_path / "small.tissue.npz")
    assert f"{len(grid)} tiles of" in out and len(grid) > 10
    assert mask.area_um2 > 0 and (tmp_path / "small.tiles.png").stat().st_size > 1000
    before = (tmp_path / "small.tiles.csv").read_bytes()
    assert main([*args, "--min-tissue", "0.9"]) == 2  # refuses to overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "small.tiles.csv").read_bytes() == before
    assert main([*args, "--min-tissue", "0.9", "--overwrite"]) == 0
    assert len(TileGrid.load(tmp_path / "small.tiles.csv")) < len(grid)
    assert main([*args, "--overwrite", "--geojson"]) == 0
    tissue = json.loads((tmp_path / "small.tissue.geojson").read_text())["features"]
    assert sum(f["properties"]["measurements"]["Area µm^2"] for f in tissue) == pytest.approx(
        mask.area_um2
    )
    tiles = json.loads((tmp_path / "small.tiles.geojson").read_text())["features"]
    assert len(tiles) == len(grid)


def test_tiles_on_a_blank_slide_says_so(tmp_path, capsys):
    from napari_deeppt.testing import SyntheticSlide, write_synthetic_slide

    blank = write_synthetic_slide(
        tmp_path / "blank.svs", SyntheticSlide(2048, 1536, 0.5), level_factors=(4,)
    )
    assert (
        main(
            ["tiles", str(blank.path), "--out", str(tmp_path / "o"), "--quiet", "--tile-px", "256"]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "no tissue found" in captured.err
    assert "0 tiles of" in captured.out


def test_tiles_without_mpp_asks_for_it(tmp_path, capsys, no_mpp_slide):
    assert main(["tiles", str(no_mpp_slide.path), "--out", str(tmp_path), "--quiet"]) == 2
    assert "--mpp" in capsys.readouterr().err


def test_features_writes_exports_then_uses_the_cache(tmp_path, capsys, svs_slide):
    import anndata

    args = [
        "features",
        str(svs_slide.path),
        "--out",
        str(tmp_path / "out"),
        "--quiet",
        "--tile-px",
        "128",
        "--tile-mpp",
        "2.0",
        "--extractor",
        "resnet18",
        "--weights",
        "random",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--formats",
        "npy,csv,h5ad",
    ]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "× 512 features" in first and " in " in first
    features = np.load(tmp_path / "out" / "small.features.npy")
    adata = anndata.read_h5ad(tmp_path / "out" / "small.features.h5ad")
    assert adata.obsm["features"].shape == features.shape
    assert main([*args, "--overwrite"]) == 0
    assert "(from the cache)" in capsys.readouterr().out
    assert main(args) == 2  # no silent overwrite
    w = svs_slide.width
    roi = tmp_path / "left.geojson"
    ring = [[0, 0], [w // 2, 0], [w // 2, svs_slide.height], [0, svs_slide.height], [0, 0]]
    roi.write_text(json.dumps({"type": "Polygon", "coordinates": [ring]}))
    assert main([*args, "--overwrite", "--roi", str(roi)]) == 0  # fewer tiles, recomputed
    assert len(np.load(tmp_path / "out" / "small.features.npy")) < len(features)
    capsys.readouterr()
    grid_csv = tmp_path / "grid.csv"
    grid_csv.write_text("")
    assert main([*args, "--overwrite", "--roi", str(roi), "--tiles", str(grid_csv)]) == 2
    assert "with --tiles the grid is used as is" in capsys.readouterr().err


def test_features_without_weights_offline_is_one_clear_line(
    tmp_path, capsys, svs_slide, monkeypatch
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("NAPARI_DEEPPT_OFFLINE", "1")
    assert main(["features", str(svs_slide.path), "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "resnet50-11ad3fa6.pth" in err and "Traceback" not in err


def test_train_and_predict_commands(tmp_path, capsys):
    from napari_deeppt.testing import write_synthetic_cohort

    cohort = write_synthetic_cohort(tmp_path / "cohort", n_slides=12, seed=3, size=768)
    # slide 0 is trained from the tissue inside a QuPath "Tumor" annotation only
    manifest = pd.read_csv(cohort.manifest)
    ring = [[0, 0], [500, 0], [500, 768], [0, 768], [0, 0]]
    roi = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"classification": {"name": "Tumor"}},
    }
    (cohort.manifest.parent / "slide000.geojson").write_text(json.dumps(roi))
    manifest["roi"] = ["slide000.geojson"] + [""] * (len(manifest) - 1)
    manifest.to_csv(cohort.manifest, index=False)
    model = tmp_path / "m.deeppt"
    args = quick_train_args(cohort, model, tmp_path / "cache")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "significant (Holm–Šidák)" in out and model.exists()
    from napari_deeppt.model.bundle import ModelBundle

    regions = ModelBundle.load(model).training["regions_of_interest"]
    assert regions == {"slides_with_roi": 1, "roi_class": None}
    capsys.readouterr()
    assert main(["info", str(model)]) == 0  # what a model holds, for people and as JSON
    described = capsys.readouterr().out
    assert "8 (DRIVEN0" in described and "colour-stats" in described
    assert "trained on   12 slides" in described and "regions      1 slides" in described
    assert main(["info", "--json", str(model)]) == 0
    assert json.loads(capsys.readouterr().out)["genes"][:1] == ["DRIVEN0"]
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    predict = [
        "predict",
        str(cohort.slides[0].path),
        "--model",
        str(model),
        "--out",
        str(tmp_path / "pred"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--geojson",
        "--quiet",
    ]
    assert main(predict) == 0
    out = capsys.readouterr().out
    assert "slide000.tif: 8 genes" in out
    tiles = json.loads((tmp_path / "pred" / "slide000.tiles.geojson").read_text())["features"]
    assert len(tiles[0]["properties"]["measurements"]) == 8 + 1  # ≤ 100 genes: all, + tissue
    for name in ("slide000.expression.csv", "slide000.tiles.h5ad", "slide000.expression.png"):
        assert (tmp_path / "pred" / name).exists()
    again = [*predict, "--overwrite"]
    assert main([*again, "--geojson-genes", "3"]) == 0
    tiles = json.loads((tmp_path / "pred" / "slide000.tiles.geojson").read_text())["features"]
    assert len(tiles[0]["properties"]["measurements"]) == 3 + 1  # the top 3 + tissue
    capsys.readouterr()
    before = (tmp_path / "pred" / "slide000.tiles.geojson").read_bytes()
    assert main([*again, "--geojson-genes", "DRIVEN0,NOT_A_GENE"]) == 2
    assert "['NOT_A_GENE'] not predicted by" in capsys.readouterr().err
    assert (tmp_path / "pred" / "slide000.tiles.geojson").read_bytes() == before
    (tmp_path / "bad.deeppt").write_bytes(b"x")
    assert (
        main(
            [
                "predict",
                str(cohort.slides[0].path),
                "--model",
                str(tmp_path / "bad.deeppt"),
                "--out",
                str(tmp_path / "p2"),
            ]
        )
        == 2
    )
    assert "not a napari-deeppt model bundle" in capsys.readouterr().err


def test_tiles_inside_qupath_annotations(tmp_path, capsys, svs_slide):
    from napari_deeppt.tiles import TileGrid

    w, h = svs_slide.width, svs_slide.height
    ring = [[0, 0], [w // 2, 0], [w // 2, h], [0, h], [0, 0]]
    annotation = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"classification": {"name": "Tumor"}},
    }
    folder = tmp_path / "rois"
    folder.mkdir()
    (folder / "small.geojson").write_text(json.dumps(annotation))
    args = ["tiles", str(svs_slide.path), "--tile-px", "128", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "all")]) == 0
    assert main([*args, "--out", str(tmp_path / "roi"), "--roi", str(folder)]) == 0
    everything = TileGrid.load(tmp_path / "all" / "small.tiles.csv")
    inside = TileGrid.load(tmp_path / "roi" / "small.tiles.csv")
    assert 0 < len(inside) < len(everything)
    assert (inside.xy[:, 0] + inside.size_level0 / 2 < w // 2).all()
    capsys.readouterr()
    copy = tmp_path / "copy.svs"
    copy.write_bytes(svs_slide.path.read_bytes())
    two = [str(svs_slide.path), str(copy)]
    roi_file = ["--roi", str(folder / "small.geojson")]
    assert main(["tiles", *two, "--out", str(tmp_path / "x"), *roi_file]) == 2
    assert "one per slide" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "y"), "--roi", str(tmp_path)]) == 2
    assert "no small.geojson for small.svs" in capsys.readouterr().err
    out = str(tmp_path / "z")
    assert main([*args, "--out", out, *roi_file, "--roi-class", "Stroma"]) == 2
    assert "no polygon of class 'Stroma'" in capsys.readouterr().err


def test_help_loads_no_heavy_library():
    """`deeppt --help` imports no torch, napari, Qt, dask or Pillow: it answers at once."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from napari_deeppt.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(' '.join(sorted(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "predict" in result.stdout and "response" in result.stdout  # the command list
    loaded = {name.split(".")[0] for name in result.stdout.splitlines()[-1].split()}
    heavy = {"torch", "napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui"}
    assert not loaded & (heavy | {"dask", "PIL", "matplotlib", "anndata"})


def test_option_defaults_are_the_cores():
    """Every command's defaults are the core's own: a default changes in one place."""
    import inspect

    from napari_deeppt.cli import build_parser
    from napari_deeppt.features import FeatureParams
    from napari_deeppt.model.settings import TrainingSettings
    from napari_deeppt.model.training import train
    from napari_deeppt.response import response_scores
    from napari_deeppt.tiles import TileGridParams
    from napari_deeppt.tissue import TissueParams

    def keyword(function, name):
        return inspect.signature(function).parameters[name].default

    parser = build_parser()
    tiles = parser.parse_args(["tiles", "s.svs", "--out", "o"])
    grid, tissue = TileGridParams(), TissueParams()
    assert (tiles.tile_px, tiles.tile_mpp, tiles.min_tissue) == (
        grid.tile_px,
        grid.mpp,
        grid.min_tissue,
    )
    assert (tiles.stride_px, tiles.edge_filter) == (grid.stride_px, grid.edge_filter)
    assert (tiles.mask_mpp, tiles.min_area_um2, tiles.min_saturation) == (
        tissue.mpp,
        tissue.min_area_um2,
        tissue.min_saturation,
    )
    assert (tiles.exclude_pen, not tiles.keep_dark) == (tissue.exclude_pen, tissue.exclude_dark)
    features = parser.parse_args(["features", "s.svs", "--out", "o"])
    made = FeatureParams()
    for name in ("extractor", "device", "stain", "dtype", "batch_size"):
        assert getattr(features, name) == getattr(made, name), name
    trained = parser.parse_args(["train", "m.csv", "e.csv", "--out", "m.deeppt"])
    for name in ("extractor", "stain", "device"):
        assert getattr(trained, name) == getattr(made, name) == keyword(train, name), name
    for name in ("transform", "rank_by", "tile_mpp"):
        assert getattr(trained, name) == keyword(train, name), name
    settings = TrainingSettings()
    for name in ("max_epochs", "patience", "lr", "batch_slides", "ae_tiles", "regressor_tiles"):
        assert getattr(trained, name) == getattr(settings, name), name
    every = parser.parse_args(["train", "m.csv", "e.csv", "--out", "m", "--ae-tiles", "all"])
    assert every.ae_tiles is None and every.regressor_tiles == settings.regressor_tiles
    # fold counts not given are left to train(), which fits its defaults to the groups
    assert (trained.outer_folds, trained.inner_folds) == (None, None)
    scores = parser.parse_args(["response", "x.csv", "p.csv", "--out", "s.csv"])
    assert scores.quantile == keyword(response_scores, "quantile")
    assert scores.threshold == keyword(response_scores, "threshold")
