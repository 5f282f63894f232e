"""Decoding of VCF records: cyvcf2's records as plain tuples, and stacks of their GT planes as
dosages, haplotypes and REF counts (the contract is in :mod:`phenoclip.io.vcf`'s docstring).

:func:`cyvcf2_records` gives each record as :func:`phenoclip.io.vcf_text.iter_text_records` does;
:func:`decode_genotypes` turns the ``genotype.array()`` rows that
:func:`phenoclip.io.vcf.iter_blocks` collects from either reader into one block's arrays.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from phenoclip.io.genotype_source import row_counts


def cyvcf2_records(sources) -> Iterator[tuple[str, int, str | None, str, list[str], np.ndarray | None]]:
    """``(chrom, pos, id, ref, alts, gt)`` of each record as :func:`phenoclip.io.vcf_text.iter_text_records`
    gives them; ``gt`` is a view into htslib memory, valid until the next record is asked for."""
    for source in sources:
        for rec in source:
            alts = rec.ALT
            gt = None
            if alts:  # a record without ALT is skipped undecoded
                try:
                    gt = rec.genotype.array()
                except Exception as e:  # cyvcf2 raises a bare Exception; rec.FORMAT crashes on lazy records
                    if "genotypes" not in str(e):
                        raise
            yield rec.CHROM, rec.POS, rec.ID, rec.REF, alts, gt


def decode_genotypes(raw: np.ndarray, allele_index: np.ndarray, want_haplotypes: bool, want_ref_count: bool
                     ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, int, np.ndarray]:
    """Decode a stack of ``genotype.array()`` rows.

    raw: (3, n, S) int16, planes of first allele, second allele and phase flag, one row per
    output variant (a multi-allelic site's row is repeated per ALT); allele_index: (n,) the ALT
    allele index that row counts. Plane-wise comparisons over contiguous rows, not reductions
    over a short last axis: numpy reduces a length-2 axis slowly.
    """
    a0, a1, phase = raw[0], raw[1], raw[2]
    k = allele_index[:, None]
    h0 = (a0 == k).view(np.int8)
    h1 = (a1 == k).view(np.int8)
    missing = (a0 == -1) | (a1 == -1)      # -1 missing allele (half-calls too); -2 is a haploid's vector end
    dosage = h0 + h1
    dosage[missing] = -1
    called = ~missing
    # alleles behind each variant's called genotypes: 2 per diploid call, 1 per haploid call
    n_alleles = 2 * row_counts(called) - row_counts((a1 == -2) & called)
    haps = None
    unphased = 0
    if want_haplotypes:
        haps = np.stack([np.where(a0 >= 0, h0, np.int8(-1)), np.where(a1 >= 0, h1, np.int8(-1))], axis=1)
        # heterozygous diploid calls without the phase flag make haplotypes meaningless
        unphased = int(np.count_nonzero((a0 != a1) & (a0 >= 0) & (a1 >= 0) & (phase == 0)))
    ref_count = None
    if want_ref_count:
        ref_count = (a0 == 0).view(np.int8) + (a1 == 0).view(np.int8)
        ref_count[missing] = -1
    return dosage, haps, ref_count, unphased, n_alleles
