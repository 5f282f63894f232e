"""``-`` reads standard input for stream-shaped inputs, through real shell pipes (issue 20)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
from conftest import SAMPLE, error_lines, needs, run_cli

PHENOCLIP = f"{shlex.quote(sys.executable)} -m phenoclip"


def shell(command: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run a pipeline under bash with pipefail, as a batch script would."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PHENOCLIP_DEBUG", None)
    return subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=600)


def datasets(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f if isinstance(f[k], h5py.Dataset)}


def assert_same_store(a: Path, b: Path) -> None:
    x, y = datasets(a), datasets(b)
    assert sorted(x) == sorted(y)
    for k in x:
        assert x[k].shape == y[k].shape and np.array_equal(x[k], y[k]), k


@needs("bcftools")
def test_vcf_from_a_bcftools_pipe_equals_the_file(tmp_path):
    vcf = SAMPLE / "variants.vcf.gz"
    # the filtered file, written by bcftools, then read by name ...
    subprocess.run(["bcftools", "view", "-m2", "-M2", "-v", "snps", "-Oz", "-o", str(tmp_path / "f.vcf.gz"),
                    str(vcf)], check=True)
    run_cli("preprocess", "variants", "--vcf", tmp_path / "f.vcf.gz", "--out", tmp_path / "file.h5", check=True)
    # ... and the same filter piped in, as uncompressed VCF and as BCF
    for fmt, name in (("v", "pipe_vcf.h5"), ("b", "pipe_bcf.h5")):
        proc = shell(f"bcftools view -m2 -M2 -v snps -O{fmt} {vcf} | "
                     f"{PHENOCLIP} preprocess variants --vcf - --out {name} --maf 0.0", tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert_same_store(tmp_path / name, tmp_path / "file.h5")
        with h5py.File(tmp_path / name, "r") as f:
            assert f.attrs["source"] == "-"
            assert f["dosage"].shape[1] > 1000
        assert (tmp_path / name.replace(".h5", ".log")).exists()
    # nothing of standard input's copy is left beside the outputs
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]


def test_expression_from_zcat_equals_the_file(tmp_path):
    table = SAMPLE / "expression.tsv.gz"
    run_cli("preprocess", "expression", "--table", table, "--out", tmp_path / "file.h5", check=True)
    proc = shell(f"zcat {table} | {PHENOCLIP} preprocess expression --table - --out pipe.h5", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert_same_store(tmp_path / "pipe.h5", tmp_path / "file.h5")
    # --log FILE: the run log goes there too (the only copy when results go to stdout)
    proc = shell(f"zcat {table} | {PHENOCLIP} --log run.log preprocess expression --table - --out logged.h5",
                 tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "run.log").read_text()
    assert "subcommand: preprocess expression" in text and "--table - --out logged.h5" in text
    assert (tmp_path / "logged.log").read_text().splitlines()[2:4] == text.splitlines()[2:4]
    proc = shell(f"zcat {table} | {PHENOCLIP} --log nowhere/run.log preprocess expression --table - --out x.h5",
                 tmp_path)
    assert proc.returncode == 6 and not (tmp_path / "x.h5").exists()
    # a gzip stream piped in as is reads the same
    proc = shell(f"cat {table} | {PHENOCLIP} preprocess expression --table - --out gz.h5", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert_same_store(tmp_path / "gz.h5", tmp_path / "file.h5")


def test_bad_standard_input_is_one_line_naming_it(tmp_path):
    proc = shell(f"{PHENOCLIP} preprocess variants --vcf - --out g.h5 < /dev/null", tmp_path)
    assert proc.returncode == 4
    assert error_lines(proc) == ["phenoclip: error: -: standard input is empty "
                                 "(check the command that pipes into phenoclip)"]
    proc = shell(f"echo 'not a vcf' | {PHENOCLIP} preprocess variants --vcf - --out g.h5", tmp_path)
    assert proc.returncode == 4 and error_lines(proc)[0].startswith("phenoclip: error: -: not a VCF")
    proc = shell(f"printf 'gene\\tA\\tB\\nS1\\t1\\t2\\n' | {PHENOCLIP} preprocess expression --table - --out e.h5",
                 tmp_path)
    assert proc.returncode == 4 and "phenoclip: error: -: " in proc.stderr, proc.stderr
    # no output and no hidden copy of standard input left behind
    assert sorted(os.listdir(tmp_path)) == []
