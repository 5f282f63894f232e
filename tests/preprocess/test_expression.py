"""preprocess expression: transforms, orientation, gene selection, bad input."""

import gzip

import numpy as np
import pytest

from conftest import error_lines, run_cli
from phenoclip.errors import MalformedInputError
from phenoclip.preprocess.expression import convert_expression
from phenoclip.store_read import open_store

COUNTS = np.array([[10, 0, 90], [1, 1, 8], [0, 50, 50]], dtype=float)


def write_table(path, values=COUNTS, samples=("a", "b", "c"), genes=("G1", "G2", "G3"), sep="\t", corner="sample"):
    lines = [sep.join([corner, *genes])]
    lines += [sep.join([s, *[f"{v:g}" for v in row]]) for s, row in zip(samples, values)]
    text = "\n".join(lines) + "\n"
    if str(path).endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("transform,expected", [
    ("none", COUNTS),
    ("log1p", np.log1p(COUNTS)),
    ("cpm-log1p", np.log1p(COUNTS / COUNTS.sum(axis=1, keepdims=True) * 1e6)),
])
def test_transforms(tmp_path, transform, expected):
    table = write_table(tmp_path / "e.tsv.gz")
    convert_expression(table, tmp_path / "e.h5", transform=transform)
    with open_store(tmp_path / "e.h5", expect="expression") as s:
        assert s.samples == ["a", "b", "c"] and s.strings("genes") == ["G1", "G2", "G3"]
        np.testing.assert_allclose(s["values"][:], expected, rtol=1e-6)
        assert s.attrs["transform"] == transform
        np.testing.assert_allclose(s["gene_mean"][:], expected.mean(axis=0), rtol=1e-5)


def test_genes_as_rows_csv_and_top_genes(tmp_path):
    table = write_table(tmp_path / "e.csv", values=COUNTS.T, samples=("G1", "G2", "G3"), genes=("a", "b", "c"),
                        sep=",", corner="gene")
    convert_expression(table, tmp_path / "e.h5", transform="none", genes_as_rows=True, top_genes=2)
    with open_store(tmp_path / "e.h5") as s:
        assert s.samples == ["a", "b", "c"]
        # variances: G1 20.2, G2 544.2, G3 1121.6 -> keep G2, G3 in table order
        assert s.strings("genes") == ["G2", "G3"]
        np.testing.assert_allclose(s["values"][:], COUNTS[:, 1:])


def test_non_numeric_cell_named(tmp_path):
    table = tmp_path / "e.tsv"
    table.write_text("sample\tG1\tG2\na\t1\t2\nb\t3\tNA?\n")
    with pytest.raises(MalformedInputError, match=r"non-numeric value 'NA\?' at line 3, column 'G2'"):
        convert_expression(table, tmp_path / "e.h5")
    assert not (tmp_path / "e.h5").exists()


def test_cli_bad_inputs(tmp_path):
    ok = write_table(tmp_path / "ok.tsv")
    dup = write_table(tmp_path / "dup.tsv", samples=("a", "b", "a"))
    trunc = tmp_path / "t.tsv.gz"
    trunc.write_bytes(gzip.compress(("sample\tG\n" + "".join(f"s{i}\t{i}\n" for i in range(5000))).encode())[:500])
    neg = write_table(tmp_path / "neg.tsv", values=-COUNTS)
    out = tmp_path / "out"
    out.mkdir()
    cases = [(tmp_path / "absent.tsv", 3, "does not exist"), (dup, 4, "duplicate sample ID 'a'"),
             (trunc, 4, "truncated or corrupt gzip"), (neg, 4, "negative values")]
    for path, code, text in cases:
        proc = run_cli("preprocess", "expression", "--table", path, "--out", out / "e.h5")
        assert proc.returncode == code, proc.stderr
        lines = error_lines(proc)
        assert len(lines) == 1 and text in lines[0] and str(path) in lines[0], proc.stderr
        assert list(out.iterdir()) == []
    proc = run_cli("preprocess", "expression", "--table", ok, "--out", out / "e.h5", "--top-genes", "9")
    assert proc.returncode == 5 and "--top-genes 9" in proc.stderr
    proc = run_cli("preprocess", "expression", "--table", ok, "--out", out / "e.h5")
    assert proc.returncode == 0 and (out / "e.log").exists()


def test_values_beyond_float32_are_refused(tmp_path):
    """1e39 is a valid float64 and infinity in the float32 store: refused, naming sample and gene."""
    table = write_table(tmp_path / "big.tsv", values=np.array([[1, 2, 3], [4, 1e39, 6], [7, 8, 9]], dtype=float))
    proc = run_cli("preprocess", "expression", "--table", table, "--out", tmp_path / "e.h5", "--transform", "none")
    assert proc.returncode == 4
    [line] = error_lines(proc)
    assert "sample 'b', gene 'G2'" in line and "float32" in line
    assert not (tmp_path / "e.h5").exists()
    # log1p brings it into range: accepted
    proc = run_cli("preprocess", "expression", "--table", table, "--out", tmp_path / "e.h5")
    assert proc.returncode == 0, proc.stderr


def test_nan_in_a_store_is_refused_before_training(tmp_path):
    """A store edited or written outside phenoclip with a NaN: named, instead of NaN losses and scores."""
    import h5py

    rng = np.random.default_rng(0)
    table = write_table(tmp_path / "e.tsv", values=rng.random((30, 3)) * 10,
                        samples=[f"p{i}" for i in range(30)])
    store = tmp_path / "e.h5"
    assert run_cli("preprocess", "expression", "--table", table, "--out", store).returncode == 0
    with h5py.File(store, "r+") as f:
        f["values"][7, 1] = np.nan
    proc = run_cli("pretrain", "--modalities", "expr", "--objective", "scarf", "--data", store, "--out",
                   tmp_path / "pre", "--epochs", "1")
    assert proc.returncode == 4, proc.stderr
    [line] = error_lines(proc)
    assert "sample 'p7'" in line and "NaN or infinite" in line and str(store) in line


@pytest.mark.parametrize("corner, rows, flag, text", [
    ("gene_id", ("G1", "G2", "G3"), [], "add --genes-as-rows"),            # featureCounts-style header
    ("id", ("ENSG00000141510", "ENSG00000012048.21", "ENSG00000139618"), [], "add --genes-as-rows"),
    ("sample", ("a", "b", "c"), ["--genes-as-rows"], "drop --genes-as-rows"),
])
def test_a_table_read_the_wrong_way_round_is_refused(tmp_path, corner, rows, flag, text):
    """Silently transposed, every gene became a patient: the header or Ensembl IDs give it away."""
    table = write_table(tmp_path / "e.tsv", samples=rows, corner=corner)
    proc = run_cli("preprocess", "expression", "--table", table, "--out", tmp_path / "e.h5", *flag)
    assert proc.returncode == 4
    [line] = error_lines(proc)
    assert text in line and str(table) in line
    assert not (tmp_path / "e.h5").exists()
