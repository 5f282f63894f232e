"""``--suite ingest``: VCF -> HDF5 throughput and memory against references, and CLI start-up time.

References, measured in the same run on the same file: a bare cyvcf2 loop that only fills the
same dosage matrix (the speed target is phenoclip >= 0.8x its variants/s), ``bcftools query``
decoding every GT, and ``plink2 --make-pgen``. Start-up: ``phenoclip --help`` against
``python -c pass``. Every figure is the wall time of a separate process; peak memory is that
process' maximum resident set size.
"""

from __future__ import annotations

import shutil
import sys

from phenoclip.bench import BenchContext, SuiteResult, Table
from phenoclip.bench.measure import best_of, measure, python_cmd
from phenoclip.bench.vcfgen import write_benchmark_vcf
from phenoclip.progress import info

BARE_LOOP = """
import sys, numpy as np
from cyvcf2 import VCF
vcf = VCF(sys.argv[1]); n = int(sys.argv[2])
lut = np.array([0, 1, -1, 2], dtype=np.int8)  # cyvcf2 gt_types: HOM_REF, HET, UNKNOWN, HOM_ALT
out = np.empty((len(vcf.samples), n), dtype=np.int8)
for j, rec in enumerate(vcf):
    out[:, j] = lut[rec.gt_types]
"""


def _phenoclip(*args: str) -> list[str]:
    return [sys.executable, "-m", "phenoclip", "--quiet", *args]


def _throughput_rows(ctx: BenchContext, vcf: str, n_samples: int, n_variants: int, label: str) -> tuple[list, dict]:
    rows, metrics = [], {}
    output_mb = n_samples * n_variants * 3 / 2**20  # dosage + 2 haplotypes, int8
    runs = {
        "phenoclip preprocess variants": _phenoclip("preprocess", "variants", "--vcf", vcf,
                                                    "--out", str(ctx.work / f"ingest_{label}.h5")),
        "bare cyvcf2 loop (dosage only)": [*python_cmd(BARE_LOOP), vcf, str(n_variants)],
    }
    if shutil.which("bcftools"):
        runs["bcftools query GT"] = ["bcftools", "query", "-f", "[%GT\\t]\\n", vcf, "-o", str(ctx.work / "q.txt")]
    if shutil.which("plink2"):
        runs["plink2 --make-pgen"] = ["plink2", "--vcf", vcf, "--make-pgen", "--out", str(ctx.work / f"pg_{label}"),
                                      "--threads", "2", "--silent"]
    results = {}
    for name, cmd in runs.items():
        info(f"ingest: {name} on {n_samples} x {n_variants}")
        # best of 3 where a run is short enough for timing noise to matter; the same for every tool
        m = best_of(3, cmd) if n_variants <= 50000 else measure(cmd)
        if m.returncode != 0:
            raise RuntimeError(f"{name} failed: {m.stderr.strip().splitlines()[-1:]}")
        results[name] = m
    bare = results["bare cyvcf2 loop (dosage only)"]
    for name, m in results.items():
        rate = n_variants / m.seconds
        rows.append([f"{n_samples} x {n_variants}", name, round(m.seconds, 2), round(rate), round(m.peak_rss_mb, 1),
                     round(bare.seconds / m.seconds, 2)])
    ours = results["phenoclip preprocess variants"]
    metrics[f"{label}_speed_vs_bare_loop"] = bare.seconds / ours.seconds
    metrics[f"{label}_phenoclip_variants_per_s"] = n_variants / ours.seconds
    metrics[f"{label}_phenoclip_peak_rss_mb"] = ours.peak_rss_mb
    metrics[f"{label}_output_matrix_mb"] = output_mb
    return rows, metrics


def run(ctx: BenchContext) -> SuiteResult:
    result = SuiteResult(name="ingest")
    n_samples = 1000
    n_variants = ctx.variants or (5000 if ctx.quick else 20000)
    sizes = [(n_samples, n_variants, "main")]
    if not ctx.quick:
        sizes.append((1000, 100000, "large"))
    rows = []
    for s, v, label in sizes:
        info(f"ingest: writing a {s} x {v} VCF")
        vcf = write_benchmark_vcf(ctx.work / f"bench_{label}.vcf.gz", s, v, seed=ctx.seed)
        r, m = _throughput_rows(ctx, vcf, s, v, label)
        rows += r
        result.metrics.update(m)
        result.commands.append(f"phenoclip preprocess variants --vcf {vcf} --out ingest_{label}.h5")
    result.tables.append(Table(
        "VCF -> dosage matrix (one process each, same file)",
        ["samples x variants", "tool", "seconds (best of 3 up to 50k variants)", "variants/s", "peak RSS MB",
         "speed vs bare cyvcf2 loop"], rows,
        note=(f"Target: phenoclip >= 0.8x the bare loop. Measured: "
              f"{result.metrics['main_speed_vs_bare_loop']:.2f}x"
              + (f" (100k variants: {result.metrics['large_speed_vs_bare_loop']:.2f}x)"
                 if "large_speed_vs_bare_loop" in result.metrics else "") + ". Times include process start-up. phenoclip also writes haplotypes, the variant "
              f"table and a compressed HDF5 file; the bare loop only fills an in-memory matrix. Output matrix "
              f"(dosage + haplotypes, int8): {result.metrics['main_output_matrix_mb']:.0f} MB.")))

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
