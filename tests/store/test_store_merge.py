"""Preprocessing across jobs (issue 19): ``--part K --num-parts N`` and ``preprocess merge`` give the
store one job would have written, dataset for dataset."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pysam
from conftest import SAMPLE, error_lines, needs, run_cli

from phenoclip.errors import EXIT_INCONSISTENT, EXIT_USAGE

VCF = SAMPLE / "variants.vcf.gz"
SCORES = ("--pgs", SAMPLE / "pgs" / "PGS_SIM001.txt", "--genes", SAMPLE / "genes.bed")


def datasets(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def assert_same_store(merged: Path, single: Path, close: tuple[str, ...] = ()) -> None:
    """Every dataset equal; those in ``close`` (float sums in another order) to float32 rounding."""
    got, want = datasets(merged), datasets(single)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].shape == want[name].shape and got[name].dtype == want[name].dtype, name
        if name in close:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-6, err_msg=name)
        else:
            assert np.array_equal(got[name], want[name], equal_nan=want[name].dtype.kind == "f"), name
    with h5py.File(merged, "r") as m, h5py.File(single, "r") as s:
        for key in ("sites_read", "variants_read", "multiallelic_split", "phased", "filters"):
            if key in s.attrs:
                assert str(m.attrs[key]) == str(s.attrs[key]), key


def run_parts(tmp_path: Path, n: int, *args) -> list[Path]:
    for k in range(n):
        run_cli("preprocess", "variants", *args, "--out", tmp_path / "g.h5", "--part", k, "--num-parts", n,
                check=True)
    parts = [tmp_path / f"g.part{k}.h5" for k in range(n)]
    assert all(p.exists() for p in parts) and not (tmp_path / "g.h5").exists()
    random.Random(0).shuffle(parts)  # merge puts them in part order itself
    return parts


def test_vcf_parts_by_genome_length_merge_into_the_single_job_store(tmp_path):
    parts = run_parts(tmp_path, 4, "--vcf", VCF, *SCORES)
    widths = [h5py.File(p, "r")["dosage"].shape[1] for p in parts]
    assert min(widths) > 100 and sum(widths) == 2001
    run_cli("preprocess", "merge", *parts, "--out", tmp_path / "merged.h5", check=True)
    run_cli("preprocess", "variants", "--vcf", VCF, *SCORES, "--out", tmp_path / "one.h5", check=True)
    assert_same_store(tmp_path / "merged.h5", tmp_path / "one.h5", close=("pgs",))


@needs("plink2")
def test_pgen_parts_merge_into_the_single_job_store(tmp_path):
    subprocess.run(["plink2", "--vcf", VCF, "--vcf-half-call", "missing", "--output-chr", "chrM", "--make-pgen",
                    "--out", tmp_path / "p", "--silent"], check=True)
    opts = ("--pfile", tmp_path / "p", "--maf", "0.02", "--region", "chr1", "--region", "chr2", *SCORES)
    parts = run_parts(tmp_path, 3, *opts)
    run_cli("preprocess", "merge", *parts, "--out", tmp_path / "merged.h5", check=True)
    run_cli("preprocess", "variants", *opts, "--out", tmp_path / "one.h5", check=True)
    assert_same_store(tmp_path / "merged.h5", tmp_path / "one.h5", close=("pgs",))
    assert "haplotypes" in datasets(tmp_path / "merged.h5")


def test_a_deletion_across_a_part_boundary_is_read_by_one_part_only(tmp_path):
    rows = [("10", "A", "G"), ("498", "ACGTA", "A"), ("499", "C", "T"), ("600", "G", "C")]
    text = ("##fileformat=VCFv4.2\n##contig=<ID=chr1,length=1000>\n"
            '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n'
            "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\ta\tb\n"
            + "".join(f"chr1\t{p}\t.\t{r}\t{a}\t.\tPASS\t.\tGT\t0/1\t1/1\n" for p, r, a in rows))
    (tmp_path / "d.vcf").write_text(text)
    vcf = pysam.tabix_index(str(tmp_path / "d.vcf"), preset="vcf", force=True)
    parts = run_parts(tmp_path, 2, "--vcf", vcf)
    # genome [1, 500] and [501, 1000]: the deletion at 498 overlaps part 1's region but starts in part 0
    assert [h5py.File(p, "r")["dosage"].shape[1] for p in sorted(parts)] == [3, 1]
    run_cli("preprocess", "merge", *parts, "--out", tmp_path / "merged.h5", check=True)
    run_cli("preprocess", "variants", "--vcf", vcf, "--out", tmp_path / "one.h5", check=True)
    assert_same_store(tmp_path / "merged.h5", tmp_path / "one.h5")


def test_one_job_per_region_merges_in_the_order_given(tmp_path):
    stores = []
    for chrom in ("chr1", "chr2", "chrX"):
        stores.append(tmp_path / f"{chrom}.h5")
        run_cli("preprocess", "variants", "--vcf", VCF, "--region", chrom, "--out", stores[-1], check=True)
    run_cli("preprocess", "merge", *stores, "--out", tmp_path / "merged.h5", check=True)
    run_cli("preprocess", "variants", "--vcf", VCF, "--region", "chr1", "--region", "chr2", "--region", "chrX",
            "--out", tmp_path / "one.h5", check=True)
    assert_same_store(tmp_path / "merged.h5", tmp_path / "one.h5")
    with h5py.File(tmp_path / "merged.h5", "r") as f:
        assert f.attrs["filters"].startswith("regions=chr1,chr2,chrX ")


def test_missing_repeated_and_foreign_parts_are_refused(tmp_path):
    parts = sorted(run_parts(tmp_path, 3, "--vcf", VCF))
    other = tmp_path / "other"
    other.mkdir()
    foreign = run_cli("preprocess", "variants", "--vcf", VCF, "--maf", "0.1", "--out", other / "g.h5", "--part", 1,
                      "--num-parts", 3, check=True)
    assert foreign.returncode == 0
    for given, says in (([parts[0], parts[1]], "part(s) 2 of 3 missing"),
                        ([parts[0], parts[0], parts[1], parts[2]], "is part 0"),
                        ([parts[0], other / "g.part1.h5", parts[2]], "another run")):
        proc = run_cli("preprocess", "merge", *given, "--out", tmp_path / "m.h5")
        assert proc.returncode == EXIT_INCONSISTENT and says in proc.stderr and len(error_lines(proc)) == 1
        assert not (tmp_path / "m.h5").exists()


def test_part_options_are_checked_before_any_work(tmp_path):
    for args, says in ((("--part", "3", "--num-parts", "3"), "--part must be 0 .. --num-parts - 1"),
                       (("--part", "0"), "go together"),
                       (("--part", "0", "--num-parts", "2", "--every-kth", "3"), "--every-kth"),
                       (("--part", "0", "--num-parts", "2", "--region", "chr1"), "--region and --num-parts")):
        proc = run_cli("preprocess", "variants", "--vcf", VCF, "--out", tmp_path / "g.h5", *args)
        assert proc.returncode == EXIT_USAGE and says in proc.stderr and len(error_lines(proc)) == 1, proc.stderr
    assert not list(tmp_path.glob("g*.h5"))


def test_stores_of_disjoint_samples_merge_by_samples(tmp_path):
    manifest = (SAMPLE / "signals" / "manifest.tsv").read_text().splitlines()
    rows = [line.split("\t") for line in manifest[1:]]
    rows = [f"{s}\t{SAMPLE / 'signals' / p}" for s, p in rows]
    halves = {"a": rows[: len(rows) // 3], "b": rows[len(rows) // 3:], "all": rows}
    for name, part in halves.items():
        (tmp_path / f"{name}.tsv").write_text("\n".join([manifest[0], *part]) + "\n")
        run_cli("preprocess", "signals", "--manifest", tmp_path / f"{name}.tsv", "--out", tmp_path / f"{name}.h5",
                check=True)
    run_cli("preprocess", "merge", tmp_path / "a.h5", tmp_path / "b.h5", "--out", tmp_path / "m.h5", check=True)
    assert_same_store(tmp_path / "m.h5", tmp_path / "all.h5")
    # genotype stores of disjoint samples: allele frequencies are the cohort's, so one job is not their sum
    for name, ids in (("k1", "P0001\nP0002\n"), ("k2", "P0003\nP0005\n")):
        (tmp_path / f"{name}.txt").write_text(ids)
        run_cli("preprocess", "variants", "--vcf", VCF, "--keep", tmp_path / f"{name}.txt",
                "--out", tmp_path / f"{name}.h5", check=True)
    proc = run_cli("preprocess", "merge", tmp_path / "k1.h5", tmp_path / "k2.h5", "--out", tmp_path / "km.h5")
    assert proc.returncode == EXIT_INCONSISTENT and "variants/alt_freq" in proc.stderr and len(error_lines(proc)) == 1
