"""``--suite ingest``: genotypes -> HDF5 throughput and memory against references, and CLI start-up time.

References, measured in the same run on the same file, each given the same ``THREADS``:
``plink2 --make-pgen --vcf-half-call missing`` (the target: phenoclip's VCF -> store within 3x
its time), a bare cyvcf2 loop that only fills the same dosage matrix (htslib decompressing on
the same threads), and ``bcftools query`` decoding every GT. phenoclip also reads plink2's own
PLINK 1, PLINK 2 and BGEN conversions of the file (``--bfile``, ``--pfile``, ``--bgen``): their
per-variant rates are what ``docs/hpc.md`` plans a biobank run from. Start-up:
``phenoclip --help`` against ``python -c pass``. Every figure is the wall time of a separate
process; peak memory is that process' maximum resident set size.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

from phenoclip_bench import BenchContext, SuiteResult, Table
from phenoclip_bench.measure import best_of, measure, python_cmd
from phenoclip_bench.vcfgen import write_benchmark_vcf
from phenoclip.progress import info

#: threads every tool gets (the 2 cores of the machines this suite is reported from)
THREADS = 2
#: phenoclip's VCF -> store may take at most this many times plink2 --make-pgen's time
PLINK2_TARGET = 3.0

BARE_LOOP = """
import sys, numpy as np
from cyvcf2 import VCF
vcf = VCF(sys.argv[1], threads=int(sys.argv[3])); n = int(sys.argv[2])
lut = np.array([0, 1, -1, 2], dtype=np.int8)  # cyvcf2 gt_types: HOM_REF, HET, UNKNOWN, HOM_ALT
out = np.empty((len(vcf.samples), n), dtype=np.int8)
for j, rec in enumerate(vcf):
    out[:, j] = lut[rec.gt_types]
"""


def _phenoclip(*args: str) -> list[str]:
    return [sys.executable, "-m", "phenoclip", "--quiet", *args, "--threads", str(THREADS)]


def _plink2(*args: str) -> list[str]:
    return ["plink2", *args, "--threads", str(THREADS), "--silent"]


def _throughput_rows(ctx: BenchContext, vcf: str, n_samples: int, n_variants: int, label: str) -> tuple[list, dict]:
    rows, metrics = [], {}
    w = ctx.work
    runs = {
        "phenoclip preprocess variants --vcf": _phenoclip("preprocess", "variants", "--vcf", vcf,
                                                          "--out", str(w / f"ingest_{label}.h5")),
        "bare cyvcf2 loop (dosage only)": [*python_cmd(BARE_LOOP), vcf, str(n_variants), str(THREADS)],
    }
    if shutil.which("bcftools"):
        # bcftools query has no --threads (it decodes on one)
        runs["bcftools query GT (1 thread)"] = ["bcftools", "query", "-f", "[%GT\\t]\\n", vcf,
                                     "-o", str(w / "q.txt")]
    have_plink2 = shutil.which("plink2") is not None
    if have_plink2:
        runs["plink2 --make-pgen"] = _plink2("--vcf", vcf, "--vcf-half-call", "missing", "--make-pgen",
                                             "--out", str(w / f"pg_{label}"))
    results = {}
    for name, cmd in runs.items():
        info(f"ingest: {name} on {n_samples} x {n_variants}")
        # best of 3 where a run is short enough for timing noise to matter; the same for every tool
        m = best_of(3, cmd) if n_variants <= 50000 else measure(cmd)
        if m.returncode != 0:
            raise RuntimeError(f"{name} failed: {m.stderr.strip().splitlines()[-1:]}")
        results[name] = m
    if have_plink2:
        # plink2's own conversions of the same file, read back by phenoclip (not timed: the inputs)
        for args in (("--make-bed",), ("--export", "bgen-1.2", "ref-first")):
            subprocess.run(_plink2("--pfile", str(w / f"pg_{label}"), *args, "--out", str(w / f"pg_{label}")),
                           check=True, capture_output=True)
        for name, src in (("--pfile", ["--pfile", str(w / f"pg_{label}")]),
                          ("--bfile", ["--bfile", str(w / f"pg_{label}")]),
                          ("--bgen", ["--bgen", str(w / f"pg_{label}.bgen"), "--bgen-ref", "first"])):
            info(f"ingest: phenoclip preprocess variants {name} on {n_samples} x {n_variants}")
            cmd = _phenoclip("preprocess", "variants", *src, "--out", str(w / f"ingest_{label}{name[1:]}.h5"))
            m = best_of(3, cmd) if n_variants <= 50000 else measure(cmd)
            if m.returncode != 0:
                raise RuntimeError(f"phenoclip {name} failed: {m.stderr.strip().splitlines()[-1:]}")
            results[f"phenoclip preprocess variants {name}"] = m
    bare = results["bare cyvcf2 loop (dosage only)"]
    plink2 = results.get("plink2 --make-pgen")
    for name, m in results.items():
        rate = n_variants / m.seconds
        rows.append([f"{n_samples} x {n_variants}", name, round(m.seconds, 2), round(rate), round(m.peak_rss_mb, 1),
                     round(m.seconds / plink2.seconds, 2) if plink2 else "—", round(bare.seconds / m.seconds, 2)])
        metrics[f"{label}_seconds/{name}"] = m.seconds
    ours = results["phenoclip preprocess variants --vcf"]
    metrics[f"{label}_speed_vs_bare_loop"] = bare.seconds / ours.seconds
    if plink2:
        metrics[f"{label}_ours_over_plink2_seconds"] = ours.seconds / plink2.seconds
    metrics[f"{label}_phenoclip_variants_per_s"] = n_variants / ours.seconds
    metrics[f"{label}_phenoclip_peak_rss_mb"] = ours.peak_rss_mb
    metrics[f"{label}_store_mb"] = (w / f"ingest_{label}.h5").stat().st_size / 2**20
    metrics[f"{label}_output_matrix_mb"] = n_samples * n_variants * 3 / 2**20  # dosage + 2 haplotypes, int8
    return rows, metrics


def run(ctx: BenchContext) -> SuiteResult:
    result = SuiteResult(name="ingest")
    n_samples = 1000
    sizes = [(n_samples, ctx.variants or 40000, "main")]
    if not ctx.quick:
        sizes.append((1000, 100000, "large"))
    rows = []
    for s, v, label in sizes:
        info(f"ingest: writing a {s} x {v} VCF")
        vcf = write_benchmark_vcf(ctx.work / f"bench_{label}.vcf.gz", s, v, seed=ctx.seed)
        r, m = _throughput_rows(ctx, vcf, s, v, label)
        rows += r
        result.metrics.update(m)
        result.commands.append(f"phenoclip preprocess variants --vcf {vcf} --out ingest_{label}.h5 --threads {THREADS}")
    ratio = {k: result.metrics.get(f"{k}_ours_over_plink2_seconds") for k in ("main", "large")}
    measured = "; ".join(f"{label} {v:.2f}x" for label, v in ratio.items() if v is not None) or "plink2 not installed"
    result.tables.append(Table(
        f"Genotypes -> store (one process each, same file, {THREADS} threads each)",
        ["samples x variants", "tool", "seconds (best of 3 up to 50k variants)", "variants/s", "peak RSS MB",
         "x plink2 --make-pgen time", "speed vs bare cyvcf2 loop"], rows,
        note=(f"Target: phenoclip's VCF -> store within {PLINK2_TARGET:g}x the time of plink2 --make-pgen "
              f"--vcf-half-call missing. Measured: {measured}. Times include process start-up. phenoclip writes "
              "dosage and haplotypes into a gzip-compressed HDF5 store (level 1) with the variant table, allele "
              "frequencies and missing rates; the bare loop only fills an in-memory dosage matrix. The --pfile, "
              "--bfile and --bgen rows read plink2's own conversions of the same VCF. Output store: "
              f"{result.metrics['main_store_mb']:.0f} MB for a {result.metrics['main_output_matrix_mb']:.0f} MB "
              "int8 matrix.")))

    start_rows = []
    base = best_of(5, python_cmd("pass"))
    for label, cmd in [("python -c pass", python_cmd("pass")),
                       ("phenoclip --help", [sys.executable, "-m", "phenoclip", "--help"]),
                       ("phenoclip preprocess variants --help",
                        [sys.executable, "-m", "phenoclip", "preprocess", "variants", "--help"])]:
        m = base if label == "python -c pass" else best_of(5, cmd)
        start_rows.append([label, round(m.seconds, 3), round(m.seconds / base.seconds, 1)])
        result.metrics[f"startup_{label}"] = m.seconds
    result.tables.append(Table("CLI start-up (best of 5)", ["command", "seconds", "x python -c pass"], start_rows,
                               note="Target: well under a second; no torch/monai/mamba import at start-up."))
    return result
