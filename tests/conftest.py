"""Shared fixtures: the real CLI entry point run as a subprocess, and small files with known content."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"


def run_cli(*args: str, cwd: str | os.PathLike | None = None, env: dict | None = None,
            check: bool = False) -> subprocess.CompletedProcess:
    """Run ``phenoclip ARGS`` through the real entry point (``python -m phenoclip``)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("PHENOCLIP_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "phenoclip", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"phenoclip {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def assert_data_parallel_equal(one: Path, two: Path) -> None:
    """The weights of a 2-process run (``two``) equal those of one process at twice the batch (``one``).

    Per tensor, the relative difference in norm must be at most 1e-4, and no single weight may differ
    by more than 1e-3 of the tensor's largest. Measured on an AMD EPYC (2026-12-06, pretrain's
    clip,ontology case): 2.4e-6 in norm, but one weight of 7,680 (the expression MLP's first layer)
    off by 1.2e-4 of the largest from the first epoch on, not growing over epochs (1.19e-4, 1.17e-4,
    1.15e-4 after 1, 2, 3): most likely a weight whose gradient sits at rounding level, where the
    order of the ranks' sum decides its sign and AdamW's normalised step moves it by up to the
    learning rate. The max-element bound alone held at 1e-4 on the machines measured before. A
    rank-local loss, per-rank randomness or per-rank batch norm moves every weight of the tensor
    (1e-2 and more), far beyond both bounds.
    """
    from safetensors.torch import load_file

    a, b = load_file(str(one / "model.safetensors")), load_file(str(two / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            d = a[k] - b[k]
            in_norm = float(d.norm() / a[k].norm().clamp(min=1e-12))
            largest = float(d.abs().max() / a[k].abs().max().clamp(min=1e-12))
            assert in_norm <= 1e-4 and largest <= 1e-3, (k, in_norm, largest)


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """The non-empty stderr lines of a failed run (a user error must be exactly one)."""
    return [line for line in proc.stderr.splitlines() if line.strip()]


def needs(tool: str):
    """Skip a test when a reference tool (bcftools, plink2) is absent; scripts/setup.sh installs them."""
    return pytest.mark.skipif(shutil.which(tool) is None, reason=f"{tool} not installed")


def bcftools_dosage(vcf):
    """Independent decoding: bcftools splits multi-allelics, prints GT strings; we count '1's."""
    norm = subprocess.run(["bcftools", "norm", "-m-", "-Ov", str(vcf)], capture_output=True, check=True)
    out = subprocess.run(["bcftools", "query", "-f", "%CHROM\t%POS\t%ALT[\t%GT]\n", "-"],
                         input=norm.stdout, capture_output=True, check=True).stdout.decode()
    rows, keys = [], []
    for line in out.splitlines():
        f = line.split("\t")
        keys.append((f[0], int(f[1]), f[2]))
        dos = []
        for gt in f[3:]:
            alleles = gt.replace("|", "/").split("/")
            dos.append(-1 if "." in alleles else sum(a == "1" for a in alleles))
        rows.append(dos)
    return keys, np.array(rows, dtype=np.int8).T


KNOWN_VCF = """##fileformat=VCFv4.2
##contig=<ID=chr1,length=100000>
##contig=<ID=chrX,length=100000>
##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">
#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\ts1\ts2\ts3\ts4
chr1\t10\trs1\tA\tG\t.\tPASS\t.\tGT\t0|1\t1|1\t.|.\t0|.
chr1\t20\trs2\tC\tA,T\t.\tPASS\t.\tGT\t0|1\t1|2\t2|2\t0|0
chr1\t500\trs4\tG\tC\t.\tPASS\t.\tGT\t1|0\t0|0\t0|0\t0|1
chrX\t30\trs3\tG\tT\t.\tPASS\t.\tGT\t0\t1\t0|1\t.
"""

#: dosage of KNOWN_VCF decoded by hand: rows samples, columns rs1, rs2/A, rs2/T, rs4, rs3
KNOWN_DOSAGE = [
    [1, 1, 0, 1, 0],
    [2, 1, 1, 0, 1],
    [-1, 0, 2, 0, 1],
    [-1, 0, 0, 1, -1],
]


@pytest.fixture
def known_vcf(tmp_path: Path) -> Path:
    p = tmp_path / "known.vcf"
    p.write_text(KNOWN_VCF)
    return p


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory) -> dict:
    """A 64-patient simulated cohort preprocessed into stores: {'dir', 'gene', 'expr', 'mri', 'signal', 'pheno'}."""
    from phenoclip.data.simulate import SimulationSettings, simulate_cohort
    from phenoclip.preprocess.cohort import preprocess_cohort

    root = tmp_path_factory.mktemp("cohort")
    cohort = root / "sim"
    simulate_cohort(cohort, SimulationSettings(patients=64, seed=3, variants=400, genes=60, volume_shape=(32, 40, 32),
                                             signal_seconds=6.0, signal_rate=100.0))
    stores = {"dir": cohort, **preprocess_cohort(cohort, root, signal_window=5.0)}
    return stores


@pytest.fixture(scope="session")
def sample_stores(tmp_path_factory) -> dict:
    """The bundled data/sample cohort preprocessed into stores (as scripts/run_sample.sh does)."""
    from phenoclip.preprocess.cohort import preprocess_cohort

    return preprocess_cohort(SAMPLE, tmp_path_factory.mktemp("sample_stores"))


@pytest.fixture(scope="session")
def sample_checkpoint(sample_stores, tmp_path_factory) -> Path:
    """``phenoclip pretrain`` defaults (tiny preset, 100 epochs, CLIP) on all five modalities of the
    sample cohort, as ``make sample`` runs it: about two minutes, shared by the learning tests of
    pretrain, finetune and retrieve."""
    from phenoclip.pretrain.settings import PretrainSettings
    from phenoclip.pretrain.run import run_pretrain

    modalities = ["gene", "expr", "mri", "signal", "hpo"]
    data = [str(sample_stores[m if m != "hpo" else "pheno"]) for m in modalities]
    out = tmp_path_factory.mktemp("sample_checkpoint") / "clip"
    run_pretrain(PretrainSettings(modalities=modalities, data=data, seed=0), out, log=lambda s: None)
    return out
