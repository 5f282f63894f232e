"""PLINK 1, PLINK 2 and BGEN genotypes in (issue 19): the store equals the one its VCF gives.

Each fileset is plink2's own conversion of the VCF (``--make-bed``, ``--make-pgen``,
``--export bgen-1.2``), so the comparison is against the field's reference converter, not
against files we wrote ourselves. Known differences, by construction of the formats:
PLINK stores a haploid call as homozygous diploid (chrX is left out of the dosage comparison),
and ``--vcf-half-call missing`` turns a half-call's called allele into missing too (haplotypes
are compared where the VCF call is whole).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import SAMPLE, error_lines, needs, run_cli

from phenoclip.errors import EXIT_INCONSISTENT, EXIT_MALFORMED, EXIT_USAGE
from phenoclip.io.bgen import hard_calls

VCF = SAMPLE / "variants.vcf.gz"
AUTOSOMES = ("--region", "chr1", "--region", "chr2")
PLINK = ("plink2", "--vcf-half-call", "missing", "--output-chr", "chrM", "--silent")


def store(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        out = {k: f[k][()] for k in ("samples", "dosage", "variants/chrom", "variants/pos", "variants/id",
                                     "variants/ref", "variants/alt", "variants/alt_freq", "variants/missing_rate")}
        for k in ("haplotypes", "expected_dosage", "pgs"):
            if k in f:
                out[k] = f[k][()]
        out["attrs"] = dict(f.attrs)
    return out


def assert_same_genotypes(got: dict, want: dict) -> None:
    for k in ("samples", "variants/chrom", "variants/pos", "variants/id", "variants/ref", "variants/alt",
              "dosage", "variants/alt_freq", "variants/missing_rate"):
        assert got[k].shape == want[k].shape and np.array_equal(got[k], want[k]), k
    assert got["dosage"].shape[1] > 1000


@pytest.fixture(scope="module")
def split_vcf(tmp_path_factory) -> Path:
    """The sample VCF with multi-allelic sites split (PLINK 1 and BGEN hold biallelic variants only)."""
    if subprocess.run(["which", "bcftools"], capture_output=True).returncode:
        pytest.skip("bcftools not installed")
    out = tmp_path_factory.mktemp("split") / "split.vcf.gz"
    subprocess.run(["bcftools", "norm", "-m-", "-Oz", "-o", str(out), str(VCF)], check=True, capture_output=True)
    subprocess.run(["bcftools", "index", "-t", str(out)], check=True)
    return out


def preprocess(tmp_path: Path, name: str, *args) -> dict:
    out = tmp_path / f"{name}.h5"
    run_cli("preprocess", "variants", *args, "--out", out, check=True)
    return store(out)


@needs("plink2")
def test_pgen_store_equals_the_vcf_store_multiallelic_and_phase_included(tmp_path):
    subprocess.run([*PLINK, "--vcf", VCF, "--make-pgen", "--out", tmp_path / "p"], check=True)
    opts = (*AUTOSOMES, "--pgs", SAMPLE / "pgs" / "PGS_SIM001.txt")
    got = preprocess(tmp_path, "pgen", "--pfile", tmp_path / "p", *opts)
    want = preprocess(tmp_path, "vcf", "--vcf", VCF, *opts)
    assert_same_genotypes(got, want)
    assert got["attrs"]["multiallelic_split"] == want["attrs"]["multiallelic_split"] > 0
    np.testing.assert_allclose(got["pgs"], want["pgs"], rtol=1e-6)
    # phase survives the .pgen; a half-call is whole-missing there, so compare whole calls
    assert got["attrs"]["phased"] and want["attrs"]["phased"]
    whole = np.repeat((want["dosage"] >= 0)[:, None, :], 2, axis=1)
    assert np.array_equal(got["haplotypes"][whole], want["haplotypes"][whole])
    assert got["attrs"]["input_format"] == "pfile"


@needs("plink2")
def test_bed_store_equals_the_vcf_store_with_filters_and_sample_selection(tmp_path, split_vcf):
    subprocess.run([*PLINK, "--vcf", split_vcf, "--make-bed", "--out", tmp_path / "b"], check=True)
    keep = tmp_path / "keep.txt"
    keep.write_text("0 P0003\n0 P0001\n0 P0010\n0 P0100\n0 P0150\n0 P0200\n")
    opts = (*AUTOSOMES, "--keep", keep, "--maf", "0.05", "--max-missing", "0.1", "--every-kth", "2")
    got = preprocess(tmp_path, "bed", "--bfile", tmp_path / "b", *opts)
    want = preprocess(tmp_path, "vcf", "--vcf", split_vcf, *opts)
    for k in ("samples", "variants/pos", "variants/ref", "variants/alt", "dosage"):
        assert np.array_equal(got[k], want[k]), k
    assert got["samples"].size == 5 and 0 < got["dosage"].shape[1] < 2000
    assert not got["attrs"]["phased"] and "haplotypes" not in got


@needs("plink2")
@pytest.mark.parametrize("version,order", [("1.2", "ref-first"), ("1.2", "ref-last"), ("1.1", "ref-first"),
                                           ("1.3", "ref-last")])
def test_bgen_store_equals_the_vcf_store(tmp_path, split_vcf, version, order):
    # BGEN 1.1 carries no sample IDs: the .sample file's ID_2 column names the samples
    subprocess.run([*PLINK, "--vcf", split_vcf, "--export", f"bgen-{version}", order, "--out", tmp_path / "g"],
                   check=True)
    got = preprocess(tmp_path, "bgen", "--bgen", tmp_path / "g.bgen", "--sample", tmp_path / "g.sample",
                     "--bgen-ref", order.split("-")[1], "--expected-dosage", *AUTOSOMES)
    want = preprocess(tmp_path, "vcf", "--vcf", split_vcf, *AUTOSOMES)
    assert_same_genotypes(got, want)
    # hard calls of exact probabilities are the expected dosages themselves
    called = want["dosage"] >= 0
    assert np.array_equal(got["expected_dosage"][called], want["dosage"][called].astype(np.float32))
    assert np.isnan(got["expected_dosage"][~called]).all() and (~called).any()
    assert got["attrs"]["bgen_ref"] == order.split("-")[1] and got["attrs"]["hard_call_threshold"] == 0.1


def test_hard_calls_follow_plink2s_threshold():
    expected = np.array([0.0, 0.1, 0.11, 0.95, 1.5, 1.9, 2.0, np.nan])
    assert hard_calls(expected).tolist() == [0, 0, -1, 1, -1, 2, 2, -1]


@needs("plink2")
def test_bgen_without_a_stated_ref_allele_is_refused(tmp_path, split_vcf):
    subprocess.run([*PLINK, "--vcf", split_vcf, "--export", "bgen-1.2", "--out", tmp_path / "g"], check=True)
    proc = run_cli("preprocess", "variants", "--bgen", tmp_path / "g.bgen", "--out", tmp_path / "x.h5")
    assert proc.returncode == EXIT_USAGE
    assert len(error_lines(proc)) == 1 and "--bgen-ref first" in proc.stderr
    assert not (tmp_path / "x.h5").exists()


def test_exactly_one_genotype_input(tmp_path):
    proc = run_cli("preprocess", "variants", "--vcf", VCF, "--bfile", tmp_path / "b", "--out", tmp_path / "x.h5")
    assert proc.returncode == EXIT_USAGE and "--vcf and --bfile" in proc.stderr
    proc = run_cli("preprocess", "variants", "--out", tmp_path / "x.h5")
    assert proc.returncode == EXIT_USAGE and len(error_lines(proc)) == 1


@needs("plink2")
def test_broken_plink_filesets_get_one_line(tmp_path, split_vcf):
    subprocess.run([*PLINK, "--vcf", split_vcf, "--make-bed", "--out", tmp_path / "b"], check=True)
    bim = (tmp_path / "b.bim").read_text().splitlines()
    # a .bim short of one variant: the .bed no longer matches it
    (tmp_path / "b.bim").write_text("\n".join(bim[:-1]) + "\n")
    proc = run_cli("preprocess", "variants", "--bfile", tmp_path / "b", "--out", tmp_path / "x.h5")
    assert proc.returncode in (EXIT_INCONSISTENT, EXIT_MALFORMED), proc.stderr
    assert len(error_lines(proc)) == 1 and "b.bed" in proc.stderr
    # a .bim row with a column missing
    (tmp_path / "b.bim").write_text("\n".join(bim[:5] + ["chr1 rsX 0 100 A"] + bim[6:]) + "\n")
    proc = run_cli("preprocess", "variants", "--bfile", tmp_path / "b", "--out", tmp_path / "x.h5")
    assert proc.returncode == EXIT_MALFORMED and "line 6" in proc.stderr and len(error_lines(proc)) == 1
    assert not (tmp_path / "x.h5").exists()


@needs("plink2")
def test_truncated_or_corrupt_genotype_files_are_one_line_exit_4(tmp_path, split_vcf):
    subprocess.run([*PLINK, "--vcf", split_vcf, "--export", "bgen-1.2", "ref-first", "--out", tmp_path / "g"],
                   check=True)
    subprocess.run([*PLINK, "--vcf", VCF, "--make-pgen", "--out", tmp_path / "p"], check=True)
    data = (tmp_path / "g.bgen").read_bytes()
    (tmp_path / "g.bgen").write_bytes(data[:len(data) // 2])          # cut in the middle of a variant
    pgen = bytearray((tmp_path / "p.pgen").read_bytes())
    for i in range(len(pgen) // 4, len(pgen), 7):                       # genotype records overwritten
        pgen[i] = (pgen[i] * 31 + 7) % 256
    (tmp_path / "p.pgen").write_bytes(bytes(pgen))
    for args, name in ((("--bgen", tmp_path / "g.bgen", "--bgen-ref", "first"), "g.bgen"),
                       (("--pfile", tmp_path / "p"), "p.pgen")):
        proc = run_cli("preprocess", "variants", *args, "--out", tmp_path / "x.h5")
        assert proc.returncode == EXIT_MALFORMED, proc.stderr
        assert len(error_lines(proc)) == 1 and name in proc.stderr and "truncated or corrupt" in proc.stderr
        assert not (tmp_path / "x.h5").exists()
