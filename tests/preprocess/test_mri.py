"""preprocess mri: RAS placement, stored geometry, z-scoring, mask round trip, bad input, CLI."""

import gzip
import os

import nibabel as nib
import numpy as np
import pytest

from conftest import error_lines, run_cli
from phenoclip.errors import (EXIT_INCONSISTENT, EXIT_INPUT_MISSING, EXIT_MALFORMED, EXIT_USAGE,
                              InconsistentInputError, InputMissingError, MalformedInputError,
                              UsageError)
from phenoclip.io.nifti import read_volume, write_label_volume
from phenoclip.preprocess.mri import convert_mri, row_info, to_original_space
from phenoclip.store_read import open_store

SPACING = (1.5, 1.0, 2.0)   # mm along the file's axes
SHAPE = (40, 50, 30)

# the same voxel sizes in three on-disk orientations
AFFINES = {
    "LPS": np.array([[-1.5, 0, 0, 30.0], [0, -1.0, 0, 25.0], [0, 0, 2.0, -30.0], [0, 0, 0, 1]]),
    "RAS": np.array([[1.5, 0, 0, -30.0], [0, 1.0, 0, -25.0], [0, 0, 2.0, -30.0], [0, 0, 0, 1]]),
    # axis 0 runs Inferior, axis 1 Left, axis 2 Anterior (a permuted, flipped sagittal-like layout)
    "ILA": np.array([[0, -1.0, 0, 25.0], [0, 0, 2.0, -30.0], [-1.5, 0, 0, 30.0], [0, 0, 0, 1]]),
}
# an oblique acquisition: the LPS grid turned 20 degrees about z and 10 about x (rotated onto the RAS grid)
_a, _b = np.deg2rad(20), np.deg2rad(10)
_ROT = (np.array([[np.cos(_a), -np.sin(_a), 0], [np.sin(_a), np.cos(_a), 0], [0, 0, 1]])
        @ np.array([[1, 0, 0], [0, np.cos(_b), -np.sin(_b)], [0, np.sin(_b), np.cos(_b)]]))
AFFINES["oblique"] = np.block([[_ROT @ AFFINES["LPS"][:3, :3], AFFINES["LPS"][:3, 3:]], [np.zeros((1, 3)), 1]])


def save(path, data, affine):
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


def world(affine, ijk):
    return (affine @ np.r_[np.asarray(ijk, dtype=float), 1.0])[:3]


def phantom(seed=0):
    """Dim noisy head (nonzero everywhere), a bright 8x8x6-voxel cube, and a spherical lesion mask."""
    rng = np.random.default_rng(seed)
    data = (20 + rng.normal(0, 1, SHAPE)).astype(np.float32)
    data[4:12, 6:14, 4:10] = 200.0   # the cube: voxel centre (7.5, 9.5, 6.5) in file order
    return data


def sphere_mask(affine, centre_mm, radius_mm):
    ijk = np.stack(np.indices(SHAPE), -1).reshape(-1, 3).astype(float)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    inside = ((xyz - centre_mm) ** 2).sum(-1) < radius_mm ** 2
    return inside.reshape(SHAPE).astype(np.uint8)


def manifest(tmp_path, rows, header=("sample", "image", "mask")):
    p = tmp_path / "mri.tsv"
    p.write_text("\t".join(header) + "\n" + "".join("\t".join(r) + "\n" for r in rows))
    return p


def leftovers(tmp_path):
    return sorted(n for n in os.listdir(tmp_path) if n.endswith(".h5") or ".tmp-" in n)


@pytest.mark.parametrize("orientation", sorted(AFFINES))
def test_bright_cube_lands_where_ras_says(tmp_path, orientation):
    affine = AFFINES[orientation]
    save(tmp_path / "a.nii.gz", phantom(), affine)
    out = tmp_path / "mri.h5"
    summary = convert_mri(manifest(tmp_path, [("a", "a.nii.gz")], ("sample", "image")), out,
                          spacing=(2.0, 2.0, 2.0), shape=(32, 32, 24))
    assert summary["samples"] == 1
    with open_store(out, "volumes") as st:
        img = st.read("images", 0)[0]
        grid = st.read("affine", 0)
        assert img.shape == (32, 32, 24) and img.dtype == np.float32
        assert st.attrs["orientation"] == "RAS"
        np.testing.assert_allclose(st["spacing"][...], [2.0, 2.0, 2.0])
        np.testing.assert_allclose(st.read("original_affine", 0), affine, atol=1e-5)
        np.testing.assert_array_equal(st.read("original_shape", 0), SHAPE)
        np.testing.assert_allclose(st.read("original_spacing", 0), SPACING, rtol=1e-6)
    # the grid: diagonal 2 mm RAS, its centre voxel on the centre of the field of view
    np.testing.assert_allclose(grid[:3, :3], np.diag([2.0, 2.0, 2.0]))
    fov_centre = world(affine, (np.array(SHAPE) - 1) / 2)
    np.testing.assert_allclose(world(grid, (np.array([32, 32, 24]) - 1) / 2), fov_centre, atol=1e-4)  # float32 sform
    # the cube's centroid on the grid is where its world position says (within a fifth of a voxel)
    expected = np.linalg.solve(grid, np.r_[world(affine, (7.5, 9.5, 6.5)), 1])[:3]
    bright = np.argwhere(img > img.max() / 2)
    np.testing.assert_allclose(bright.mean(0), expected, atol=0.2)
    # z-score: the cube's interior equals (200 - mean) / std of the original nonzero voxels
    data = phantom()
    mean, std = data.mean(dtype=np.float64), data.std(dtype=np.float64)
    centre = tuple(np.round(expected).astype(int))
    assert img[centre] == pytest.approx((200 - mean) / std, rel=1e-3)


def test_lps_cube_side(tmp_path):
    """Orientation sanity without the affine algebra: an LPS file's low indices are Right/Anterior."""
    save(tmp_path / "a.nii", phantom(), AFFINES["LPS"])
    out = tmp_path / "mri.h5"
    convert_mri(manifest(tmp_path, [("a", "a.nii")], ("sample", "image")), out, spacing=(1.5, 1.0, 2.0),
                shape=SHAPE)
    with open_store(out) as st:
        img = st.read("images", 0)[0]
    bright = np.argwhere(img > img.max() / 2).mean(0)
    # same grid size and spacing, so RAS just flips axes 0 and 1: 7.5 -> 39 - 7.5, 9.5 -> 49 - 9.5
    np.testing.assert_allclose(bright, [SHAPE[0] - 1 - 7.5, SHAPE[1] - 1 - 9.5, 6.5], atol=1e-6)


def test_mask_round_trip_and_write_back(tmp_path):
    affine = AFFINES["LPS"]
    centre = world(affine, (20, 22, 15))
    mask = sphere_mask(affine, centre, 9.0)
    save(tmp_path / "a.nii.gz", phantom(), affine)
    save(tmp_path / "a_mask.nii.gz", mask, affine)
    save(tmp_path / "b.nii.gz", phantom(1), affine)
    out = tmp_path / "mri.h5"
    summary = convert_mri(manifest(tmp_path, [("a", "a.nii.gz", "a_mask.nii.gz"), ("b", "b.nii.gz", "")]), out,
                          spacing=(2.0, 2.0, 2.0), shape=(32, 32, 32))
    assert summary == {**summary, "samples": 2, "with_mask": 1, "without_mask": 1}
    with open_store(out) as st:
        np.testing.assert_array_equal(st["mask_present"][...], [1, 0])
        assert st["masks"].dtype == np.uint8 and st["masks"].shape == (2, 1, 32, 32, 32)
        assert st.read("masks", 1).max() == 0
        grid_mask, info = st.read("masks", 0), row_info(st, 0)
    assert set(np.unique(grid_mask)) == {0, 1}
    back = to_original_space(grid_mask, info)
    assert back.shape == SHAPE and back.dtype == np.uint8
    dice = 2 * np.sum(back & mask) / (back.sum() + mask.sum())
    assert dice > 0.9
    # written back in the patient's space: same affine, same voxels as the mapped array
    path = write_label_volume(tmp_path / "pred.nii.gz", back, info["original_affine"], like=tmp_path / "a.nii.gz")
    img = nib.load(path)
    np.testing.assert_allclose(img.affine, affine, atol=1e-5)
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(img.dataobj), back)


def test_a_lesion_smaller_than_the_grid_is_counted(tmp_path):
    mask = np.zeros(SHAPE, np.uint8)
    mask[20, 25, 15] = 1
    save(tmp_path / "a.nii.gz", phantom(), AFFINES["LPS"])
    save(tmp_path / "m.nii.gz", mask, AFFINES["LPS"])
    summary = convert_mri(manifest(tmp_path, [("a", "a.nii.gz", "m.nii.gz")]), tmp_path / "mri.h5",
                          spacing=(5, 5, 5), shape=(12, 12, 12))
    assert summary["masks_emptied"] == 1 and summary["with_mask"] == 1


def test_inverse_is_exact_on_a_matching_grid():
    from phenoclip.preprocess.mri import preprocess_volume

    affine = AFFINES["LPS"]
    mask = sphere_mask(affine, world(affine, (20, 25, 15)), 10.0)
    r = preprocess_volume(phantom(), affine, spacing=(1.5, 1.0, 2.0), shape=SHAPE, mask=mask)
    back = to_original_space(r["mask"][None], {"affine": r["affine"], "original_affine": affine,
                                               "original_shape": SHAPE})
    np.testing.assert_array_equal(back, mask)


def test_singleton_4d_is_squeezed(tmp_path):
    save(tmp_path / "a.nii.gz", phantom()[..., None], AFFINES["RAS"])
    data, _, info = read_volume(tmp_path / "a.nii.gz")
    assert data.shape == SHAPE and info.squeezed and info.orientation == "RAS"
    summary = convert_mri(manifest(tmp_path, [("a", "a.nii.gz")], ("sample", "image")), tmp_path / "mri.h5",
                          spacing=(2, 2, 2), shape=(16, 16, 16))
    assert summary["squeezed_4d"] == 1


def _truncated(tmp_path):
    save(tmp_path / "full.nii.gz", phantom(), AFFINES["LPS"])
    raw = (tmp_path / "full.nii.gz").read_bytes()
    (tmp_path / "bad.nii.gz").write_bytes(raw[: len(raw) // 2])


BAD_IMAGES = {
    "2d": (lambda p: save(p / "bad.nii.gz", np.ones((20, 20), np.float32), np.eye(4)), MalformedInputError, "2D"),
    "single-slice": (lambda p: save(p / "bad.nii.gz", np.random.rand(20, 20, 1), np.eye(4)), MalformedInputError,
                     "single slice"),
    "4d": (lambda p: save(p / "bad.nii.gz", np.random.rand(10, 10, 10, 3), np.eye(4)), MalformedInputError,
           "3 volumes"),
    "nan": (lambda p: save(p / "bad.nii.gz", np.where(np.arange(1000).reshape(10, 10, 10) == 5, np.nan, 1.0),
                           np.eye(4)), MalformedInputError, "NaN"),
    "constant": (lambda p: save(p / "bad.nii.gz", np.full((10, 10, 10), 3.0), np.eye(4)), MalformedInputError,
                 "blank"),
    "truncated": (_truncated, MalformedInputError, "truncated or corrupt gzip"),
    "not-nifti": (lambda p: (p / "bad.nii.gz").write_bytes(gzip.compress(b"hello, not an image" * 10)),
                  MalformedInputError, "NIfTI"),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_image_is_refused_and_leaves_nothing(tmp_path, case):
    make, cls, words = BAD_IMAGES[case]
    save(tmp_path / "good.nii.gz", phantom(), AFFINES["LPS"])
    make(tmp_path)
    m = manifest(tmp_path, [("good", "good.nii.gz"), ("bad", "bad.nii.gz")], ("sample", "image"))
    with pytest.raises(cls) as err:
        convert_mri(m, tmp_path / "mri.h5", spacing=(2, 2, 2), shape=(16, 16, 16))
    assert err.value.exit_code == EXIT_MALFORMED
    line = err.value.line()
    assert "\n" not in line and "bad.nii.gz" in line and words in line
    assert leftovers(tmp_path) == []


def test_truncated_uncompressed_nifti(tmp_path):
    (tmp_path / "bad.nii").write_bytes(nib.Nifti1Image(phantom(), np.eye(4)).to_bytes()[:20000])
    with pytest.raises(MalformedInputError) as err:
        read_volume(tmp_path / "bad.nii")
    assert "truncated NIfTI" in err.value.line() and err.value.exit_code == EXIT_MALFORMED


def test_mask_that_does_not_match_its_image(tmp_path):
    save(tmp_path / "a.nii.gz", phantom(), AFFINES["LPS"])
    save(tmp_path / "small.nii.gz", np.zeros((20, 20, 20), np.uint8), AFFINES["LPS"])
    save(tmp_path / "moved.nii.gz", np.zeros(SHAPE, np.uint8), AFFINES["RAS"])
    for mask, words in (("small.nii.gz", "mask shape 20x20x20 differs"), ("moved.nii.gz", "mask affine differs")):
        with pytest.raises(InconsistentInputError) as err:
            convert_mri(manifest(tmp_path, [("a", "a.nii.gz", mask)]), tmp_path / "mri.h5")
        assert err.value.exit_code == EXIT_INCONSISTENT
        assert words in err.value.line() and mask in err.value.line()
        assert leftovers(tmp_path) == []


def test_manifest_naming_an_absent_file(tmp_path):
    save(tmp_path / "a.nii.gz", phantom(), AFFINES["LPS"])
    m = manifest(tmp_path, [("a", "a.nii.gz"), ("b", "missing.nii.gz")], ("sample", "image"))
    with pytest.raises(InputMissingError) as err:
        convert_mri(m, tmp_path / "mri.h5")
    assert err.value.exit_code == EXIT_INPUT_MISSING and "missing.nii.gz" in err.value.line()
    assert leftovers(tmp_path) == []


def test_impossible_grid_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError) as err:
        convert_mri(tmp_path / "none.tsv", tmp_path / "mri.h5", spacing=(2, 0, 2), shape=(8, 8, 8))
    assert err.value.exit_code == EXIT_USAGE


def test_cli_mri_writes_store_and_log(tmp_path):
    affine = AFFINES["LPS"]
    save(tmp_path / "a.nii.gz", phantom(), affine)
    save(tmp_path / "a_mask.nii.gz", sphere_mask(affine, world(affine, (20, 25, 15)), 8), affine)
    m = manifest(tmp_path, [("a", "a.nii.gz", "a_mask.nii.gz")])
    proc = run_cli("preprocess", "mri", "--manifest", m, "--out", tmp_path / "mri.h5", "--spacing", "2",
                   "--shape", "24,24,16")
    assert proc.returncode == 0, proc.stderr
    log = (tmp_path / "mri.log").read_text()
    assert "preprocess mri" in log and "samples=1" in log
    with open_store(tmp_path / "mri.h5", "volumes") as st:
        assert st["images"].shape == (1, 1, 24, 24, 16) and st.read("masks", 0).sum() > 0
        assert "preprocess mri" in st.attrs["command"]


def test_cli_mri_bad_input_is_one_line(tmp_path):
    save(tmp_path / "a.nii.gz", np.where(np.arange(1000).reshape(10, 10, 10) == 5, np.inf, 1.0), np.eye(4))
    m = manifest(tmp_path, [("a", "a.nii.gz")], ("sample", "image"))
    proc = run_cli("-q", "preprocess", "mri", "--manifest", m, "--out", tmp_path / "mri.h5")
    assert proc.returncode == EXIT_MALFORMED
    lines = error_lines(proc)
    assert len(lines) == 1 and lines[0].startswith("phenoclip: error:") and "a.nii.gz" in lines[0]
    assert leftovers(tmp_path) == [] and not (tmp_path / "mri.log").exists()


def test_a_header_claiming_more_voxels_than_memory_is_refused(tmp_path):
    """68 bytes of .nii.gz whose header says 2000^3 float32 voxels: refused before allocating 30+ GB."""
    import gzip

    header = nib.Nifti1Header()
    header.set_data_shape((2000, 2000, 2000))
    header.set_data_dtype(np.float32)
    header.set_sform(np.eye(4), 1)
    (tmp_path / "huge.nii.gz").write_bytes(gzip.compress(header.binaryblock + b"\0" * 1004))
    assert (tmp_path / "huge.nii.gz").stat().st_size < 1024
    m = manifest(tmp_path, [("a", "huge.nii.gz")], ("sample", "image"))
    proc = run_cli("preprocess", "mri", "--manifest", m, "--out", tmp_path / "mri.h5")
    assert proc.returncode == EXIT_MALFORMED
    [line] = error_lines(proc)
    assert "huge.nii.gz" in line and "2000x2000x2000" in line and "of memory" in line
    assert leftovers(tmp_path) == []


def test_the_same_image_stored_in_any_voxel_order_gives_the_same_store(tmp_path):
    """The same physical scan stored LPS, RAS and PIR must preprocess to the same store: the
    nearest-neighbour steps (foreground, masks) used to round exact half-voxel ties by the
    storage order (up to 6,000 of 110,000 voxels differed)."""
    rng = np.random.default_rng(1)
    shape = (40, 44, 36)   # even sizes on a 1 mm grid resampled to 2 mm: grid centres fall on half voxels
    data = np.zeros(shape, np.float32)
    data[5:35, 6:40, 4:32] = 50 + rng.normal(0, 5, (30, 34, 28))
    data[12:20, 14:22, 10:16] = 200
    mask = np.zeros(shape, np.uint8)
    mask[11:21, 13:23, 9:17] = 1
    ras = nib.Nifti1Image(data, np.array([[1.0, 0, 0, -20], [0, 1, 0, -22], [0, 0, 1, -18], [0, 0, 0, 1]]))
    ras_mask = nib.Nifti1Image(mask, ras.affine)
    stores = {}
    for code in ("RAS", "LPS", "PIR"):
        ornt = nib.orientations.axcodes2ornt(code)
        nib.save(ras.as_reoriented(ornt), str(tmp_path / f"{code}.nii.gz"))
        nib.save(ras_mask.as_reoriented(ornt), str(tmp_path / f"{code}_mask.nii.gz"))
        (tmp_path / f"{code}.tsv").write_text(f"sample\timage\tmask\na\t{code}.nii.gz\t{code}_mask.nii.gz\n")
        stores[code] = tmp_path / f"{code}.h5"
        convert_mri(tmp_path / f"{code}.tsv", stores[code], spacing=(2.0, 2.0, 2.0), shape=(24, 24, 20))
    with open_store(stores["RAS"]) as ref:
        image, masks, grid = ref.read("images", 0), ref.read("masks", 0), ref.read("affine", 0)
    assert masks.sum() > 0 and (image == 0).sum() > 0
    for code in ("LPS", "PIR"):
        with open_store(stores[code]) as st:
            np.testing.assert_array_equal(st.read("masks", 0), masks)
            np.testing.assert_array_equal(st.read("images", 0) == 0, image == 0)   # the foreground
            np.testing.assert_allclose(st.read("images", 0), image, atol=1e-5)
            np.testing.assert_allclose(st.read("affine", 0), grid, atol=1e-6)
