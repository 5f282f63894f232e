"""A fast synthetic VCF for throughput benchmarks (biallelic, phased, 1% missing calls).

Not the cohort simulator: no planted biology, just realistic allele frequencies and file size,
generated quickly enough to make 100,000 x 1,000 files inside a benchmark run.
"""

from __future__ import annotations

import os

import numpy as np
import pysam

_CODES = np.array(["0|0", "0|1", "1|0", "1|1", ".|."])


def write_benchmark_vcf(path: str | os.PathLike, n_samples: int, n_variants: int, seed: int = 0,
                        chunk: int = 2000) -> str:
    """Write ``path`` (.vcf.gz, BGZF + tabix index) and return its name."""
    rng = np.random.default_rng(seed)
    plain = os.fspath(path)
    if plain.endswith(".gz"):
        plain = plain[:-3]
    with open(plain, "w") as fh:
        fh.write("##fileformat=VCFv4.2\n##source=phenoclip benchmark\n##contig=<ID=1,length=249250621>\n"
                 '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n')
        fh.write("#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\t"
                 + "\t".join(f"I{i:05d}" for i in range(n_samples)) + "\n")
        for start in range(0, n_variants, chunk):
            n = min(chunk, n_variants - start)
            freq = rng.beta(0.6, 1.5, size=(n, 1)).clip(0.01, 0.99)
            a = (rng.random((n, n_samples)) < freq).astype(np.int8)
            b = (rng.random((n, n_samples)) < freq).astype(np.int8)
            code = a * 2 + b
            code[rng.random((n, n_samples)) < 0.01] = 4
            text = _CODES[code]
            for i in range(n):
                v = start + i
                fh.write(f"1\t{100 + v * 50}\tbv{v}\tA\tG\t.\tPASS\t.\tGT\t" + "\t".join(text[i]) + "\n")
    return pysam.tabix_index(plain, preset="vcf", force=True)
