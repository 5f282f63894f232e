import h5py
import numpy as np
import pytest

from phenoclip.errors import InconsistentInputError, MalformedInputError, OutputError
from phenoclip.store_read import open_store
from phenoclip.store_schema import SCHEMAS
from phenoclip.store_write import create_store


def test_round_trip_and_lazy_reads(tmp_path):
    path = tmp_path / "x.h5"
    values = np.arange(5 * 7, dtype=np.float32).reshape(5, 7)
    with create_store(path, "expression", [f"s{i}" for i in range(5)], attrs={"transform": "none"}) as w:
        w.array("genes", [f"g{i}" for i in range(7)])
        w.per_sample("values", values)
    with open_store(path, expect="expression") as s:
        assert s.schema == "expression" and s.version == SCHEMAS["expression"]
        assert s.samples == ["s0", "s1", "s2", "s3", "s4"]
        assert s.strings("genes")[3] == "g3"
        np.testing.assert_array_equal(s.read("values", 2), values[2])
        # out-of-order fancy reads come back in the asked order
        np.testing.assert_array_equal(s.read("values", [4, 0, 2]), values[[4, 0, 2]])
        assert s["values"].chunks[0] == 1  # one sample per chunk
        assert s["values"].compression == "gzip"
        assert s.attrs["transform"] == "none"
        assert "phenoclip_version" in s.attrs and "created" in s.attrs and "command" in s.attrs


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "x.h5"
    with pytest.raises(RuntimeError):
        with create_store(path, "expression", ["a", "b"]) as w:
            w.per_sample("values", np.zeros((2, 3), np.float32))
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_duplicate_samples_refused(tmp_path):
    with pytest.raises(MalformedInputError, match="duplicate sample ID 'a'"):
        with create_store(tmp_path / "x.h5", "expression", ["a", "b", "a"]):
            pass
    assert list(tmp_path.iterdir()) == []


def test_missing_output_folder(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        with create_store(tmp_path / "nope" / "x.h5", "expression", ["a"]):
            pass


@pytest.mark.parametrize("schema,version,match", [
    ("mystery", 1, "unknown store schema 'mystery'"),
    ("expression", 99, "newer than this phenoclip reads"),
])
def test_refuses_unknown_schema_and_newer_version(tmp_path, schema, version, match):
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f.attrs["phenoclip_schema"] = schema
        f.attrs["schema_version"] = version
        f["samples"] = np.array([b"a"])
    with pytest.raises(MalformedInputError, match=match):
        open_store(path)


def test_refuses_foreign_files(tmp_path):
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = 1
    with pytest.raises(MalformedInputError, match="not a phenoclip store"):
        open_store(plain)
    text = tmp_path / "t.h5"
    text.write_text("hello")
    with pytest.raises(MalformedInputError, match="not an HDF5 file"):
        open_store(text)


def test_wrong_schema_for_caller(tmp_path):
    path = tmp_path / "x.h5"
    with create_store(path, "signals", ["a"]) as w:
        w.per_sample("signals", np.zeros((1, 1, 4), np.float32))
    with pytest.raises(InconsistentInputError, match="expected genotypes"):
        open_store(path, expect="genotypes")


def test_parallel_direct_chunk_writes_read_back_exactly(tmp_path):
    """write_rows compresses whole-row chunks itself; h5py must read back exactly what was written."""
    rng = np.random.default_rng(0)
    dosage = rng.integers(-1, 3, size=(37, 5000)).astype(np.int8)
    haps = rng.integers(-1, 2, size=(37, 2, 5000)).astype(np.int8)
    floats = rng.normal(size=(37, 11)).astype(np.float32)  # shuffle filter on: takes the h5py path
    with create_store(tmp_path / "x.h5", "genotypes", [f"s{i}" for i in range(37)]) as w:
        for name, arr in (("dosage", dosage), ("haplotypes", haps), ("values", floats)):
            w.per_sample(name, shape=arr.shape, dtype=arr.dtype)
            w.write_rows(name, 0, arr[:20], threads=2)
            w.write_rows(name, 20, arr[20:], threads=2)
    with h5py.File(tmp_path / "x.h5") as f:
        np.testing.assert_array_equal(f["dosage"][:], dosage)
        np.testing.assert_array_equal(f["haplotypes"][:], haps)
        np.testing.assert_array_equal(f["values"][:], floats)
        assert f["dosage"].compression == "gzip"


def _store_with(path, build):
    """A valid expression store of 4 samples x 3 genes whose 'values' come from ``build(f)``."""
    with create_store(path, "expression", [f"s{i}" for i in range(4)], attrs={"transform": "none"}) as w:
        w.array("genes", ["g0", "g1", "g2"])
        build(w.h5)


@pytest.mark.parametrize("kind", ["external_storage", "virtual", "external_link", "soft_link"])
def test_stores_that_read_outside_the_file_are_refused(tmp_path, kind):
    """An HDF5 dataset can keep its values in another file (external raw storage, virtual
    datasets, external links): read as a store, /etc/passwd would become expression values."""
    from conftest import error_lines, run_cli

    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(12, dtype=np.float32).tobytes())
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["values"] = np.ones((4, 3), np.float32)

    def build(h5):
        if kind == "external_storage":
            h5.create_dataset("values", shape=(4, 3), dtype=np.float32, external=[(str(secret), 0, 48)])
        elif kind == "virtual":
            layout = h5py.VirtualLayout(shape=(4, 3), dtype=np.float32)
            layout[:] = h5py.VirtualSource(str(other), "values", shape=(4, 3))
            h5.create_virtual_dataset("values", layout)
        elif kind == "external_link":
            h5["values"] = h5py.ExternalLink(str(other), "/values")
        else:
            h5["data"] = np.zeros((4, 3), np.float32)
            h5["values"] = h5py.SoftLink("/data")

    path = tmp_path / "expr.h5"
    _store_with(path, build)
    with pytest.raises(MalformedInputError, match="must live inside the file"):
        open_store(path)
    proc = run_cli("pretrain", "--modalities", "expr", "--objective", "scarf", "--data", path, "--out",
                   tmp_path / "pre")
    assert proc.returncode == 4, proc.stderr
    [line] = error_lines(proc)
    assert str(path) in line and "/values" in line
    assert not (tmp_path / "pre").exists()
