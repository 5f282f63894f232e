"""Writing a genotype store from the variant-major blocks that ``preprocess variants`` kept.

The variant table with allele frequencies and missing rates; then the dosages (and haplotypes,
expected dosages) transposed block by block into sample-major batches, which a writer thread
compresses and writes while this thread transposes the next batch; then the PGS and burden
scores (schema ``genotypes``, :mod:`phenoclip.store`).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from phenoclip.progress import Progress
from phenoclip.store_write import create_store

_WRITE_BATCH = 256  # samples per HDF5 write: bounds the transpose buffer


def write_genotype_store(out, samples, blocks, freq, miss, phased, attrs, pgs, burden, source, threads: int) -> None:
    """The store at ``out``: the kept ``blocks`` (variant-major) with their ALT ``freq`` and missing
    rate ``miss``, haplotypes when ``phased``; ``pgs`` and ``burden`` are the accumulators or None."""
    n_samples = len(samples)
    n_var = sum(len(b) for b in blocks)
    with create_store(out, "genotypes", samples, attrs=attrs, source=source) as w:
        w.array("variants/chrom", [c for b in blocks for c in b.chrom])
        w.array("variants/pos", np.asarray([p for b in blocks for p in b.pos], dtype=np.int64))
        w.array("variants/id", [c for b in blocks for c in b.id])
        w.array("variants/ref", [c for b in blocks for c in b.ref])
        w.array("variants/alt", [c for b in blocks for c in b.alt])
        w.array("variants/alt_freq", freq.astype(np.float32))
        w.array("variants/missing_rate", miss.astype(np.float32))
        w.per_sample("dosage", shape=(n_samples, n_var), dtype=np.int8, fillvalue=-1)
        if phased:
            w.per_sample("haplotypes", shape=(n_samples, 2, n_var), dtype=np.int8, fillvalue=-1)
        # transpose block by block into one (samples, variants) batch buffer: a single
        # transposed copy of the concatenation would walk memory column-wise
        expected = bool(blocks) and all(b.expected is not None for b in blocks)
        if expected:
            w.per_sample("expected_dosage", shape=(n_samples, n_var), dtype=np.float32, fillvalue=np.nan,
                         attrs={"meaning": "expected copies of the ALT allele from the BGEN probabilities; "
                                           "NaN missing"})
        # two sets of batch buffers: a writer thread compresses and writes one batch while this
        # thread transposes the next into the other set
        bufs = [(np.empty((_WRITE_BATCH, n_var), dtype=np.int8),
                 np.empty((_WRITE_BATCH, 2, n_var), dtype=np.int8) if phased else None,
                 np.empty((_WRITE_BATCH, n_var), dtype=np.float32) if expected else None) for _ in range(2)]

        def write(s0: int, n: int, dos_buf, hap_buf, exp_buf) -> None:
            w.write_rows("dosage", s0, dos_buf[:n], threads=threads)
            if exp_buf is not None:
                w.write_rows("expected_dosage", s0, exp_buf[:n], threads=threads)
            if hap_buf is not None:
                w.write_rows("haplotypes", s0, hap_buf[:n], threads=threads)

        with Progress("writing store", n_samples, "samples") as bar, ThreadPoolExecutor(max_workers=1) as writer:
            pending = None
            for batch, s0 in enumerate(range(0, n_samples, _WRITE_BATCH)):
                s1 = min(n_samples, s0 + _WRITE_BATCH)
                if n_var:
                    dos_buf, hap_buf, exp_buf = bufs[batch % 2]
                    col = 0
                    for b in blocks:
                        n = len(b)
                        dos_buf[: s1 - s0, col:col + n] = b.dosage[:, s0:s1].T
                        if hap_buf is not None:
                            hap_buf[: s1 - s0, :, col:col + n] = b.haplotypes[:, :, s0:s1].transpose(2, 1, 0)
                        if exp_buf is not None:
                            exp_buf[: s1 - s0, col:col + n] = b.expected[:, s0:s1].T
                        col += n
                    if pending is not None:
                        pending.result()  # the other buffer set is free again (and a write error surfaces here)
                    pending = writer.submit(write, s0, s1 - s0, dos_buf, hap_buf, exp_buf)
                bar.advance(s1 - s0)
            if pending is not None:
                pending.result()
        if pgs is not None:
            # a part keeps its float64 sums so that a merge adds them before rounding to float32
            w.per_sample("pgs", pgs.values.astype(np.float64 if "num_parts" in attrs else np.float32),
                         attrs={"variants_matched": pgs.matched,
                                "variants_in_file": [s.n_variants for s in pgs.scores],
                                "missing": "mean-imputed"})
            w.array("pgs_names", [s.name for s in pgs.scores])
        if burden is not None:
            w.per_sample("burden", burden.values, attrs={"max_alt_freq": burden.max_af,
                                                         "rare_variants_per_gene": burden.n_rare})
            w.array("burden_genes", burden.genes.names)
