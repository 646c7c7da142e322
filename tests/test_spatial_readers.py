"""Readers for real spatial transcriptomics layouts (Visium, HEST-1k, legacy ST), on small
folders written here with known answers, and training on what they read."""

from __future__ import annotations

import inspect
import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse

import napari_deeppt
from napari_deeppt.errors import ExpressionTableError, SlideNotFoundError
from napari_deeppt.spatial import SpatialData, read_hest, read_legacy_st, read_visium
from napari_deeppt.testing import default_sample_spec, write_synthetic_slide

h5py = pytest.importorskip("h5py")
anndata = pytest.importorskip("anndata")

FEATURES = {"extractor": "colour-stats", "tile_px": 64, "tile_mpp": 1.0, "stain": None}
FAST = {"outer_folds": 3, "inner_folds": 2, "max_epochs": 20, "patience": 5, "lr": 1e-3}

# One small Visium section with every case: barcode -> (in_tissue, pxl_row, pxl_col)
POSITIONS = {
    "AAAC-1": (1, 100, 200),
    "AAAG-1": (1, 300, 500),
    "AAAT-1": (0, 400, 600),  # off tissue: dropped
    "AACA-1": (1, 500, 700),  # under tissue but not in the matrix: dropped
    "AACC-1": (1, 700, 1500),
}
MATRIX_BARCODES = ["AAAC-1", "AAAG-1", "AAAT-1", "AACC-1", "GGGG-1"]  # GGGG: no position
FEATURES_10X = [("ACTB", "Gene Expression"), ("GAPDH", "Gene Expression")]
FEATURES_10X += [("ACTB", "Gene Expression"), ("CD3", "Antibody Capture")]
# genes × barcodes, as 10x stores them; some zeros so that the matrix is really sparse
COUNTS = np.array(
    [
        [1, 0, 3, 4, 5],
        [0, 20, 30, 0, 50],
        [7, 8, 0, 10, 11],
        [99, 99, 99, 99, 99],
    ]
)
EXPECTED_SPOTS = pd.DataFrame(
    {"x": [200.0, 500.0, 1500.0], "y": [100.0, 300.0, 700.0]},
    index=["AAAC-1", "AAAG-1", "AACC-1"],
)
EXPECTED_COUNTS = pd.DataFrame(
    {"ACTB": [1, 0, 4], "GAPDH": [0, 20, 0], "ACTB-1": [7, 8, 10]},
    index=["AAAC-1", "AAAG-1", "AACC-1"],
)


def write_10x_h5(path, barcodes, features, counts, with_features=True):
    """A 10x feature-barcode matrix (CSC, genes × barcodes) in the Space Ranger ≥ 3 layout."""
    csc = scipy.sparse.csc_matrix(np.asarray(counts, dtype=np.int32))
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m["barcodes"] = np.array(barcodes, dtype="S")
        m["data"], m["indices"], m["indptr"] = csc.data, csc.indices, csc.indptr
        m["shape"] = np.array(csc.shape, dtype=np.int32)
        if with_features:
            m["features/name"] = np.array([name for name, _ in features], dtype="S")
            m["features/id"] = np.array([f"ENSG{i:05d}" for i in range(len(features))], "S")
            m["features/feature_type"] = np.array([kind for _, kind in features], dtype="S")


def write_visium(folder, positions=POSITIONS, layout="new", diameter=89.5, **h5):
    """A Space Ranger output folder: positions in ``layout``, scale factors and matrix."""
    spatial = folder / "spatial"
    spatial.mkdir(parents=True)
    rows = [(b, *values[:1], 0, 0, *values[1:]) for b, values in positions.items()]
    table = pd.DataFrame(
        rows,
        columns=[
            "barcode",
            "in_tissue",
            "array_row",
            "array_col",
            "pxl_row_in_fullres",
            "pxl_col_in_fullres",
        ],
    )
    if layout == "new":
        table.to_csv(spatial / "tissue_positions.csv", index=False)
    elif layout == "old":
        table.to_csv(spatial / "tissue_positions_list.csv", index=False, header=False)
    else:
        table.to_parquet(spatial / "tissue_positions.parquet")
    if diameter is not None:
        factors = {"spot_diameter_fullres": diameter, "tissue_hires_scalef": 0.17}
        (spatial / "scalefactors_json.json").write_text(json.dumps(factors))
    args = {"barcodes": MATRIX_BARCODES, "features": FEATURES_10X, "counts": COUNTS} | h5
    write_10x_h5(folder / "filtered_feature_bc_matrix.h5", **args)
    return folder


def assert_known_section(data, image, prefix=""):
    assert isinstance(data, SpatialData)
    assert list(data.spots.columns[:4]) == ["slide", "x", "y", "spot_id"]
    ids = [prefix + b for b in EXPECTED_SPOTS.index]
    assert list(data.spots["spot_id"]) == ids
    np.testing.assert_array_equal(data.spots[["x", "y"]].to_numpy(), EXPECTED_SPOTS.to_numpy())
    assert set(data.spots["slide"]) == {str(image.resolve())}
    expected = EXPECTED_COUNTS.set_axis(ids)
    pd.testing.assert_frame_equal(data.counts, expected, check_dtype=False, check_names=False)


def one_line_refusal(error_type, match, call, *args, **kwargs):
    with pytest.raises(error_type, match=match) as caught:
        call(*args, **kwargs)
    assert "\n" not in str(caught.value)
    return str(caught.value)


# -- Visium ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["new", "old", "parquet"])
def test_read_visium_layouts_give_the_known_spots_and_counts(tmp_path, svs_slide, layout):
    if layout == "parquet":
        pytest.importorskip("pyarrow")
    folder = write_visium(tmp_path / "section", layout=layout)
    data = read_visium(folder, svs_slide.path)
    assert_known_section(data, svs_slide.path)
    assert data.spot_diameter_px == 89.5
    assert "3 spots × 3 genes" in repr(data)


def test_read_visium_finds_outs_and_10x_download_names_and_prefixes_ids(tmp_path, svs_slide):
    outs = write_visium(tmp_path / "sample1" / "outs", diameter=None)
    named = outs / "Breast_Section_1_filtered_feature_bc_matrix.h5"
    (outs / "filtered_feature_bc_matrix.h5").rename(named)
    data = read_visium(tmp_path / "sample1", svs_slide.path, sample="s1")
    assert_known_section(data, svs_slide.path, prefix="s1_")
    assert data.spot_diameter_px is None


def test_read_visium_refuses_missing_and_unreadable_files(tmp_path, svs_slide):
    empty = tmp_path / "empty"
    empty.mkdir()
    message = one_line_refusal(
        ExpressionTableError, "no spatial/tissue_positions.csv", read_visium, empty, svs_slide.path
    )
    assert str(empty) in message
    folder = write_visium(tmp_path / "a")
    (folder / "filtered_feature_bc_matrix.h5").unlink()
    one_line_refusal(
        ExpressionTableError,
        "no filtered_feature_bc_matrix.h5",
        read_visium,
        folder,
        svs_slide.path,
    )
    (folder / "filtered_feature_bc_matrix.h5").write_text("not HDF5")
    one_line_refusal(
        ExpressionTableError, "not a readable 10x HDF5 matrix", read_visium, folder, svs_slide.path
    )
    folder = write_visium(tmp_path / "b", with_features=False)
    one_line_refusal(
        ExpressionTableError, "lacks matrix/features/name", read_visium, folder, svs_slide.path
    )
    folder = write_visium(tmp_path / "c")
    (folder / "spatial" / "scalefactors_json.json").write_text("{not json")
    one_line_refusal(
        ExpressionTableError,
        "not a readable scale factors JSON",
        read_visium,
        folder,
        svs_slide.path,
    )
    folder = write_visium(tmp_path / "d")
    positions = folder / "spatial" / "tissue_positions.csv"
    pd.read_csv(positions).drop(columns="pxl_col_in_fullres").to_csv(positions, index=False)
    one_line_refusal(
        ExpressionTableError, r"lacks column\(s\) \['pxl_col_in_fullres'\]", read_visium, folder,
        svs_slide.path,
    )  # fmt: skip
    message = one_line_refusal(
        SlideNotFoundError, "no such image", read_visium, folder, tmp_path / "full.tif"
    )
    assert "full.tif" in message


def test_read_visium_refuses_positions_of_another_run(tmp_path, svs_slide):
    other = {f"TTTT-{i}": values for i, values in enumerate(POSITIONS.values())}
    folder = write_visium(tmp_path / "s", positions=other)
    one_line_refusal(
        ExpressionTableError,
        r"none of its 4 barcodes under tissue is in the matrix",
        read_visium,
        folder,
        svs_slide.path,
    )


def test_read_visium_refuses_spots_outside_the_image(tmp_path, svs_slide):
    """Coordinates of a larger image (or a downscaled image given) are refused, not clipped."""
    scaled = {b: (t, 10 * r, 10 * c) for b, (t, r, c) in POSITIONS.items()}
    folder = write_visium(tmp_path / "s", positions=scaled)
    message = one_line_refusal(
        ExpressionTableError, "2 of 3 spots lie outside", read_visium, folder, svs_slide.path
    )
    assert "2048×1536 px" in message and "AAAG-1" in message and "AAAC-1" not in message


# -- HEST-1k --------------------------------------------------------------------------------------
@pytest.fixture
def small_tif(tiff_slide):
    return tiff_slide  # a 2048 × 1536 pyramidal TIFF, as HEST-1k's images are


def write_hest(root, image, sparse=True, in_tissue=None, uns=None, name="TENX1"):
    """HEST-1k's layout: ``st/<id>.h5ad`` and ``wsis/<id>.tif``."""
    (root / "st").mkdir(parents=True)
    (root / "wsis").mkdir()
    shutil.copy(image.path, root / "wsis" / f"{name}.tif")
    values = EXPECTED_COUNTS.to_numpy().astype(np.float32)
    obs = pd.DataFrame(index=list(EXPECTED_COUNTS.index))
    if in_tissue is not None:
        obs["in_tissue"] = in_tissue
    with warnings.catch_warnings():  # anndata warns of the repeated gene name
        warnings.simplefilter("ignore", UserWarning)
        adata = anndata.AnnData(
            X=scipy.sparse.csr_matrix(values) if sparse else values,
            obs=obs,
            var=pd.DataFrame(index=["ACTB", "GAPDH", "ACTB"]),  # a repeated gene name
            uns=uns or {},
        )
    adata.obsm["spatial"] = EXPECTED_SPOTS[["x", "y"]].to_numpy()
    path = root / "st" / f"{name}.h5ad"
    adata.write_h5ad(path)
    return path


@pytest.mark.parametrize("sparse", [True, False])
def test_read_hest_finds_its_image_and_reads_the_known_section(tmp_path, small_tif, sparse):
    h5ad = write_hest(tmp_path, small_tif, sparse=sparse)
    data = read_hest(h5ad)
    assert_known_section(data, tmp_path / "wsis" / "TENX1.tif")
    assert data.spot_diameter_px is None


def test_read_hest_keeps_spots_under_tissue_and_reads_the_spot_diameter(tmp_path, small_tif):
    uns = {"spatial": {"lib": {"scalefactors": {"spot_diameter_fullres": 40.0}}}}
    h5ad = write_hest(tmp_path, small_tif, in_tissue=[1, 0, 1], uns=uns)
    data = read_hest(h5ad, image=small_tif.path, sample="h")
    assert list(data.spots["spot_id"]) == ["h_AAAC-1", "h_AACC-1"]
    assert set(data.spots["slide"]) == {str(small_tif.path.resolve())}
    assert data.counts.loc["h_AACC-1", "ACTB-1"] == 10
    assert data.spot_diameter_px == 40.0
    h5ad = write_hest(tmp_path / "meta", small_tif, name="MEND1")
    (tmp_path / "meta" / "metadata").mkdir()
    meta = {"spot_diameter": 55.0, "pixel_size_um_estimated": 0.5}
    (tmp_path / "meta" / "metadata" / "MEND1.json").write_text(json.dumps(meta))
    assert read_hest(h5ad).spot_diameter_px == 110.0


def test_read_hest_refusals(tmp_path, small_tif):
    h5ad = write_hest(tmp_path, small_tif)
    (tmp_path / "wsis" / "TENX1.tif").unlink()
    message = one_line_refusal(ExpressionTableError, "no image TENX1.tif", read_hest, h5ad)
    assert "wsis" in message
    one_line_refusal(ExpressionTableError, "no such .h5ad", read_hest, tmp_path / "x.h5ad")
    (tmp_path / "bad.h5ad").write_text("not hdf5")
    one_line_refusal(
        ExpressionTableError, "not a readable .h5ad", read_hest, tmp_path / "bad.h5ad",
        small_tif.path,
    )  # fmt: skip
    adata = anndata.AnnData(X=np.ones((2, 2), np.float32))
    adata.write_h5ad(tmp_path / "flat.h5ad")
    one_line_refusal(
        ExpressionTableError, r"no obsm\['spatial'\]", read_hest, tmp_path / "flat.h5ad",
        small_tif.path,
    )  # fmt: skip
    one_line_refusal(SlideNotFoundError, "no such image", read_hest, h5ad, tmp_path / "no.tif")
    adata = anndata.read_h5ad(h5ad)
    adata.obsm["spatial"] = adata.obsm["spatial"].astype(float)
    adata.obsm["spatial"][1, 0] = np.nan  # never "lies outside the image"
    adata.write_h5ad(tmp_path / "nan.h5ad")
    one_line_refusal(
        ExpressionTableError, r"1 spot\(s\) have no position .*AAAG-1", read_hest,
        tmp_path / "nan.h5ad", small_tif.path,
    )  # fmt: skip


# -- legacy ST ------------------------------------------------------------------------------------
SELECTION = """x\ty\tnew_x\tnew_y\tpixel_x\tpixel_y\tselected
10\t5\t10.02\t5.01\t200.0\t100.0\t1
11\t5\t11.01\t5.0\t500.0\t300.0\t1
12\t5\t12.0\t5.0\t600.0\t400.0\t0
13\t6\t13.0\t6.0\t700.0\t500.0\t1
14\t7\t14.0\t7.0\t1500.0\t700.0\t1
"""


def write_legacy_st(folder, genes_by_rows=False):
    folder.mkdir(parents=True, exist_ok=True)
    counts = EXPECTED_COUNTS.set_axis(["10x5", "11x5", "14x7"])
    counts.loc["12x5"] = [5, 5, 5]  # has counts, but not selected
    counts.loc["99x99"] = [1, 1, 1]  # has counts, not in the selection table
    (counts.T if genes_by_rows else counts).to_csv(folder / "counts.tsv", sep="\t")
    (folder / "spots.tsv").write_text(SELECTION)  # 13x6 selected but without counts
    return folder / "counts.tsv", folder / "spots.tsv"


@pytest.mark.parametrize("genes_by_rows", [False, True])
def test_read_legacy_st_joins_grid_positions_and_keeps_selected_spots(
    tmp_path, svs_slide, genes_by_rows
):
    counts, spots = write_legacy_st(tmp_path, genes_by_rows)
    data = read_legacy_st(counts, spots, svs_slide.path)
    assert list(data.spots["spot_id"]) == ["10x5", "11x5", "14x7"]
    np.testing.assert_array_equal(data.spots[["x", "y"]].to_numpy(), EXPECTED_SPOTS.to_numpy())
    expected = EXPECTED_COUNTS.set_axis(["10x5", "11x5", "14x7"])
    pd.testing.assert_frame_equal(data.counts, expected, check_dtype=False, check_names=False)


def test_read_legacy_st_refusals(tmp_path, svs_slide):
    counts, spots = write_legacy_st(tmp_path)
    (tmp_path / "other.tsv").write_text("x\ty\tpixel_x\tpixel_y\n1\t1\t10\t10\n2\t2\t20\t20\n")
    message = one_line_refusal(
        ExpressionTableError, "none of its 2 selected spots", read_legacy_st, counts,
        tmp_path / "other.tsv", svs_slide.path,
    )  # fmt: skip
    assert "1x1" in message and "10x5" in message
    (tmp_path / "cols.tsv").write_text("x\ty\tselected\n10\t5\t1\n")
    one_line_refusal(
        ExpressionTableError, r"lacks column\(s\) \['pixel_x', 'pixel_y'\]", read_legacy_st,
        counts, tmp_path / "cols.tsv", svs_slide.path,
    )  # fmt: skip
    (tmp_path / "text.tsv").write_text("\tACTB\tGAPDH\n10x5\t1\tlots\n")
    one_line_refusal(
        ExpressionTableError, r"non-numeric counts for gene\(s\) \['GAPDH'\]", read_legacy_st,
        tmp_path / "text.tsv", spots, svs_slide.path,
    )  # fmt: skip
    one_line_refusal(
        ExpressionTableError, "no such counts file", read_legacy_st, tmp_path / "no.tsv", spots,
        svs_slide.path,
    )  # fmt: skip


# -- several sections, the package's names ---------------------------------------------------------
def test_sections_concatenate_on_shared_genes_and_refuse_clashing_ids(tmp_path, svs_slide):
    a = read_visium(write_visium(tmp_path / "a"), svs_slide.path, sample="a")
    counts, spots = write_legacy_st(tmp_path / "st")
    b = read_legacy_st(counts, spots, svs_slide.path, sample="b")
    b = SpatialData(b.spots, b.counts.drop(columns="GAPDH"), b.source)
    both = SpatialData.concat([a, b])
    assert len(both.spots) == 6 and both.spots["spot_id"].is_unique
    assert list(both.counts.columns) == ["ACTB", "ACTB-1"]
    assert list(both.counts.index) == list(both.spots["spot_id"])
    assert both.counts.loc["b_14x7", "ACTB-1"] == 10 and both.spot_diameter_px is None
    with pytest.raises(ExpressionTableError, match="occur in more than one section"):
        SpatialData.concat([a, a])


def test_the_readers_are_public_names():
    for name in ("read_visium", "read_hest", "read_legacy_st", "SpatialData"):
        assert name in napari_deeppt.__all__
        assert getattr(napari_deeppt, name) is getattr(napari_deeppt.spatial, name)


# -- training on what the readers read ------------------------------------------------------------
@pytest.fixture(scope="module")
def visium_sections(tmp_path_factory):
    """Three Visium sections on three synthetic slides; a driven gene follows tissue type."""
    root = tmp_path_factory.mktemp("visium")
    sections = []
    for k in range(3):
        spec = default_sample_spec(width=1024, height=768, mpp=0.5, seed=10 + k)
        slide = write_synthetic_slide(root / f"sec{k}.svs", spec, level_factors=(4,))
        ys, xs = np.mgrid[48:768:96, 48:1024:96]
        kind = spec.tissue_type_map(xs.ravel(), ys.ravel())
        barcodes = [f"B{i:03d}-1" for i in range(kind.size)]
        positions = {
            b: (int(t >= 0), int(y), int(x))
            for b, t, x, y in zip(barcodes, kind, xs.ravel(), ys.ravel())
        }
        rng = np.random.default_rng(k)
        driven = 2.0 ** (3 + 2 * np.clip(kind, 0, None)) + rng.poisson(2, kind.size)
        counts = np.vstack([driven, rng.poisson(20, (2, kind.size))]).round()
        features = [("DRIVEN", "Gene Expression"), ("N1", "Gene Expression")]
        features += [("N2", "Gene Expression")]
        folder = write_visium(
            root / f"section{k}", positions, barcodes=barcodes, features=features, counts=counts
        )
        sections.append((folder, slide.path, int((kind >= 0).sum())))
    return sections


def test_read_visium_then_train_writes_a_bundle(visium_sections, tmp_path):
    from napari_deeppt.model.bundle import ModelBundle
    from napari_deeppt.model.training import train

    parts = [read_visium(f, image, sample=f.name) for f, image, _ in visium_sections]
    data = SpatialData.concat(parts)
    assert len(data.spots) == sum(n for *_, n in visium_sections)
    data.spots.to_csv(tmp_path / "spots.csv", index=False)
    data.counts.to_csv(tmp_path / "counts.csv")
    out = tmp_path / "st.deeppt"
    result = train(
        tmp_path / "spots.csv",
        tmp_path / "counts.csv",
        out,
        cache_dir=tmp_path / "cache",
        progress=False,
        **FEATURES,
        **FAST,
    )
    assert out.is_file() and out.with_suffix(".sections.csv").is_file()
    assert list(result.heldout.index) == list(data.spots["spot_id"])
    assert sorted(result.sections.columns) == ["sec0", "sec1", "sec2"]
    bundle = ModelBundle.load(out)
    assert bundle.feature["mode"] == "spots" and bundle.genes == ["DRIVEN", "N1", "N2"]


def test_train_takes_the_readers_dataframes(visium_sections, tmp_path):
    from napari_deeppt.model.training import train

    data = SpatialData.concat([read_visium(f, i, sample=f.name) for f, i, _ in visium_sections])
    result = train(
        data.spots,
        data.counts,
        tmp_path / "df.deeppt",
        cache_dir=tmp_path / "cache",
        progress=False,
        **FEATURES,
        **FAST,
    )
    assert list(result.heldout.index) == list(data.spots["spot_id"])


# -- the command line -----------------------------------------------------------------------------
def cli_args(visium_sections, out, cache):
    args = ["train"]
    for folder, image, _ in visium_sections:
        args += ["--visium", str(folder), "--image", str(image)]
    args += ["--out", str(out), "--cache-dir", str(cache), "--quiet", "--stain", "none"]
    args += ["--extractor", "colour-stats", "--tile-px", "64", "--tile-mpp", "1.0"]
    for name, value in FAST.items():
        args += ["--" + name.replace("_", "-"), str(value)]
    return args


def test_cli_trains_on_repeated_visium_sections(visium_sections, tmp_path, capsys):
    from napari_deeppt.cli import main

    out = tmp_path / "cli.deeppt"
    assert main(cli_args(visium_sections, out, tmp_path / "cache")) == 0
    printed = capsys.readouterr().out
    assert printed.count("read ") == 3 and "3 sections (section0, section1, section2)" in printed
    heldout = pd.read_csv(out.with_suffix(".heldout.csv"), index_col=0)
    expected = [f"section{k}" for k, (*_, n) in enumerate(visium_sections) for _ in range(n)]
    assert [i.split("_")[0] for i in heldout.index] == expected
    assert "wrote" in printed and out.is_file()


def test_cli_refuses_section_misuse_in_one_line(visium_sections, tmp_path, capsys):
    from napari_deeppt.cli import main

    folder, image, _ = visium_sections[0]
    out = ["--out", str(tmp_path / "m.deeppt")]
    cases = {
        "not both": ["m.csv", "e.csv", "--visium", str(folder), "--image", str(image)],
        "give MANIFEST EXPRESSION": [],
        "comes before any --visium": ["--image", str(image), "--visium", str(folder)],
        "give its full-resolution --image": ["--visium", str(folder)],
        "already has --image a": ["--visium", str(folder), "--image", "a", "--image", "b"],
    }
    for expected, given in cases.items():
        assert main(["train", *given, *out]) == 2, expected
        err = capsys.readouterr().err
        assert err.startswith("error: ") and expected in err and err.count("\n") == 1, err
    assert not (tmp_path / "m.deeppt").exists()


def test_cli_tile_px_defaults_to_trains_own():
    """Spots get train()'s 224 px tiles, not the slide grid's 512, unless --tile-px is given."""
    from napari_deeppt.cli import build_parser
    from napari_deeppt.model.training import train

    args = build_parser().parse_args(["train", "--visium", "d", "--image", "i", "--out", "m"])
    assert args.tile_px == inspect.signature(train).parameters["tile_px"].default
    assert args.sections == [("--visium", "d"), ("--image", "i")]


def test_cli_reads_hest_and_legacy_st_sections_under_their_names(tmp_path, small_tif, capsys):
    """--hest finds its image beside it; each section's spot ids carry its file's stem."""
    from napari_deeppt.cli.train import _read_sections

    h5ad = write_hest(tmp_path / "hest", small_tif)
    counts, spots = write_legacy_st(tmp_path / "st")
    sections = [("--hest", [str(h5ad)], None), ("--legacy-st", [counts, spots], small_tif.path)]
    data = _read_sections(sections)
    assert list(data.spots["spot_id"]) == [
        *(f"TENX1_{b}" for b in EXPECTED_SPOTS.index),
        "counts_10x5",
        "counts_11x5",
        "counts_14x7",
    ]
    assert "2 sections (TENX1, counts): 3 shared genes" in capsys.readouterr().out
