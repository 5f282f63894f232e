"""``phenoclip benchmark``'s frame: suites run in turn, a failing suite is reported while the others
still land in the report, speed ratios are gathered against their targets, the cohort is found."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

import phenoclip_bench as bench
from phenoclip_bench import BenchContext, SuiteFailed, SuiteResult, Table
from phenoclip_bench.cohort import bench_cohort
from phenoclip_bench.report import bold_sentences, speed_ratio_rows
from phenoclip.errors import InconsistentInputError, UsageError
from conftest import SAMPLE, error_lines, run_cli


def _fake_suites(monkeypatch):
    """Three suites: one fine (writes a truth file under work/ like a simulation would), one that
    raises, and one merged from two modules."""

    def good(ctx):
        (ctx.work / "sim").mkdir()
        (ctx.work / "sim" / "truth.json").write_text('{"planted": [1, 2]}')
        return SuiteResult(name="good", tables=[Table("T", ["a", "b"], [[1, 0.12345]], note="n")],
                           metrics={"x": 2.0}, commands=["phenoclip x"], shortfalls=["worse than chance"])

    def bad(ctx):
        raise RuntimeError("disk on fire")

    def part(value):
        return lambda ctx: SuiteResult(name="p", metrics={"seconds": value}, tables=[Table(f"P{value}", ["v"], [[value]])])

    for name, fn in {"good": good, "bad": bad, "p1": part(1.0), "p2": part(2.0)}.items():
        module = types.ModuleType(f"phenoclip_bench._fake_{name}")
        module.run = fn
        monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(bench, "SUITE_MODULES", {"good": ["_fake_good"], "bad": ["_fake_bad"],
                                                 "merged": ["_fake_p1", "_fake_p2"]})


def test_a_failing_suite_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    _fake_suites(monkeypatch)
    out = tmp_path / "report"
    with pytest.raises(SuiteFailed) as err:
        bench.run_suites("all", out, cohort=None, patients=None, variants=None, quick=True, seed=3)
    assert err.value.exit_code == 70 and "bad" in str(err.value)
    readme = (out / "README.md").read_text()
    assert "disk on fire" in readme
    assert "| 1 | 0.123 |" in readme  # the good suite's table, 3 significant digits
    assert "worse than chance" in readme.split("## Where phenoclip falls short")[1]
    results = json.loads((out / "results.json").read_text())
    by = {s["name"]: s for s in results["suites"]}
    assert by["good"]["status"] == "ok" and by["bad"]["status"] == "failed"
    # merged modules keep both measurements, prefixed by module
    assert by["merged"]["metrics"] == {"_fake_p1/seconds": 1.0, "_fake_p2/seconds": 2.0}
    assert [t["title"] for t in by["merged"]["tables"]] == ["P1.0", "P2.0"]
    assert results["context"]["seed"] == 3 and results["versions"]["torch"] != "not installed"
    # scratch removed, the simulated cohort's truth kept and checksummed
    assert not (out / "work").exists()
    assert json.loads((out / "truth" / "sim.json").read_text()) == {"planted": [1, 2]}
    assert results["context"]["truth"]["all"]["truth/sim.json"]


def test_unknown_suite_and_device_are_usage_errors(tmp_path, monkeypatch):
    _fake_suites(monkeypatch)
    with pytest.raises(UsageError, match="unknown suite 'nope'"):
        bench.run_suites("good,nope", tmp_path / "r", cohort=None, patients=None, variants=None, quick=True, seed=0)
    with pytest.raises(UsageError, match="--device"):
        bench.run_suites("good", tmp_path / "r", cohort=None, patients=None, variants=None, quick=True, seed=0,
                         device="tpu")


def test_cli_unknown_suite_exits_2_with_one_line(tmp_path):
    proc = run_cli("benchmark", "--suite", "nope", "--out", tmp_path / "r")
    assert proc.returncode == 2
    assert len(error_lines(proc)) == 1 and "unknown suite 'nope'" in proc.stderr


def test_speed_ratios_are_checked_against_their_targets():
    results = [SuiteResult(name="ingest", metrics={"main_ours_over_plink2_seconds": 3.4}),
               SuiteResult(name="retrieve", metrics={"retrieve_speed/ours_over_faiss": 1.2}),
               SuiteResult(name="pretrain", metrics={"data_wait_share_tiny": 0.02, "ref_over_ours_seconds_L1024": 8.0,
                                                     "ssd_over_ours_seconds_L1024": 0.2,
                                                     "ssd_over_ours_seconds_L2048": 0.3})]
    rows = {r[0].split(":")[0]: r for r in speed_ratio_rows(results)}
    assert rows["VCF ingest, 1,000 x 40,000"][1:] == ["3.40", "<= 3", "NOT met"]
    assert "VCF ingest, 1,000 x 100,000" not in rows  # not measured (--quick): no row
    assert rows["exact top-10 search"][3] == "met"
    assert rows["pretraining (tiny)"][1] == "2.0 %"
    # the longest length measured is the one reported; mamba-ssm's reference (an oracle) has no row
    assert rows["selective scan fwd+bwd at L=2,048"][1:] == ["0.30", "> 1", "NOT met"]
    assert not any("reference" in label for label in rows)


def test_bold_note_passages_become_shortfalls():
    note = "Setup text. **Below the CCA ceiling on R@1: expr-mri.** More. **Not better than random init: gene-mri.**"
    assert bold_sentences(note) == ["Below the CCA ceiling on R@1: expr-mri", "Not better than random init: gene-mri"]
    assert bold_sentences("no shortfall here") == []


def _ctx(tmp_path, cohort):
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return BenchContext(out=tmp_path, cohort=cohort, patients=None, variants=None, quick=True, seed=0, work=work)


def test_cohort_of_stores_is_read_by_schema(tmp_path, sample_stores):
    folder = tmp_path / "stores"
    folder.mkdir()
    # names that do not say the modality: the schema does
    for i, m in enumerate(("gene", "expr", "pheno")):
        (folder / f"s{i}.h5").symlink_to(sample_stores[m])
    (folder / "notes.h5").write_text("not hdf5")
    (folder / "labels.tsv").symlink_to(SAMPLE / "labels.tsv")
    cohort = bench_cohort(_ctx(tmp_path, folder))
    assert {m: p.name for m, p in cohort.stores.items()} == {"gene": "s0.h5", "expr": "s1.h5", "hpo": "s2.h5"}
    assert cohort.labels == folder / "labels.tsv" and cohort.truth is None
    assert cohort.data(["expr", "mri"]) == [str(folder / "s1.h5")]


def test_cohort_folder_of_neither_kind_is_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InconsistentInputError, match="neither two phenoclip stores"):
        bench_cohort(_ctx(tmp_path, empty))
    with pytest.raises(InconsistentInputError, match="not a folder"):
        bench_cohort(_ctx(tmp_path, tmp_path / "missing"))


def test_simulated_cohort_layout_is_preprocessed_once(tmp_path, small_cohort):
    ctx = _ctx(tmp_path, Path(small_cohort["dir"]))
    first = bench_cohort(ctx)
    assert set(first.stores) == {"gene", "expr", "mri", "signal", "hpo"}
    assert first.truth == Path(small_cohort["dir"]) / "truth.json"
    stamp = first.stores["gene"].stat().st_mtime_ns
    assert bench_cohort(ctx).stores["gene"].stat().st_mtime_ns == stamp  # cached, not rewritten


def test_cli_bad_cohort_is_one_line_and_no_report(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_cli("benchmark", "--suite", "classify", "--cohort", empty, "--out", tmp_path / "r")
    assert proc.returncode == 5
    assert len(error_lines(proc)) == 1 and "neither two phenoclip stores" in proc.stderr
    assert not (tmp_path / "r").exists()
