"""Every command in the README runs as written: its shell blocks, extracted from README.md and run in
order in a fresh folder (the examples build on one another, from `phenoclip simulate` on). The text
is never edited for the test; only the number of epochs is capped through PHENOCLIP_MAX_EPOCHS."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys

import pytest

from conftest import needs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: blocks not run here, each with where it is checked instead
NOT_RUN = {
    "make sample": "the quick start: CI runs `make test` on a clean clone, and the sample job is "
                   "scripts/run_sample.sh, run by tests/finetune/test_finetune.py's end-to-end test",
    "phenoclip benchmark": "the benchmark suites take 15-60 minutes; tests/bench/test_bench_*.py run each suite small",
}


def readme_blocks() -> list[str]:
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    return [m.group(1) for m in re.finditer(r"```(?:bash|sh)\n(.*?)```", text, flags=re.S)]


def test_every_readme_block_is_run_or_accounted_for():
    blocks = readme_blocks()
    assert len(blocks) >= 8
    skipped = [b for b in blocks if any(key in b for key in NOT_RUN)]
    assert len(skipped) == len(NOT_RUN), [b[:60] for b in skipped]


@pytest.mark.slow
@needs("plink2")
def test_readme_commands_run_as_written(tmp_path):
    # `phenoclip` on PATH is this checkout's code, whatever else is installed
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "phenoclip"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -m phenoclip \"$@\"\n")
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": REPO,
           "PHENOCLIP_MAX_EPOCHS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("PHENOCLIP_DEBUG", None)
    work = tmp_path / "work"
    work.mkdir()
    for block in readme_blocks():
        if any(key in block for key in NOT_RUN):
            continue
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=work, env=env, capture_output=True,
                              text=True, timeout=1800)
        assert proc.returncode == 0, f"README block failed (exit {proc.returncode}):\n{block}\n{proc.stderr[-3000:]}"
    # the chain produced what the README says it does
    for path in ("cohort/variants.vcf.gz", "gene.h5", "chr1.h5", "runs/pre/model.safetensors", "runs/ft/metrics.tsv",
                 "preds.tsv", "hits.tsv", "emb_gwas.log", "attr.tsv", "merged.h5", "runs/seg/metrics.tsv"):
        assert (work / path).exists(), path
