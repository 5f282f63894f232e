"""BGEN genotype probabilities through the ``bgen`` package, rounded to hard calls.

A BGEN file lists alleles without saying which one is the reference, so the caller states it
(``ref`` = ``first`` as in UK Biobank and QCTOOL files, ``last`` as ``plink2 --export bgen-1.2``
writes by default). The blocks follow :mod:`phenoclip.io.vcf`'s contract:

* ``expected`` (float32, variants x samples): the expected ALT dosage sum_k k * P(k ALT copies),
  NaN where the file marks the sample missing;
* ``dosage``: the hard call, the nearest integer when the expected dosage lies within
  :data:`HARD_CALL_THRESHOLD` of it (plink2's ``--hard-call-threshold`` default), else -1;
* ``haplotypes`` from a phased variant: each haplotype's ALT probability rounded the same way;
  an unphased variant's homozygous calls give both haplotypes, its heterozygous calls count as
  unphased (so the store has haplotypes only when no heterozygous call lacks phase, as for a VCF).

Only biallelic variants are read; a multi-allelic one is an error naming the variant (split the
file first, e.g. ``plink2 --bgen ... --make-pgen`` then ``--pfile``).
"""

from __future__ import annotations

import os
from typing import Iterator, Sequence

import numpy as np

from phenoclip.errors import InconsistentInputError, MalformedInputError, UsageError, require_readable
from phenoclip.io.genotype_source import (GenotypeSource, Region, SkipCounts, VariantBlock, in_regions,
                                          merge_regions, part_of, require_unique_ids)

HARD_CALL_THRESHOLD = 0.1  # plink2's default --hard-call-threshold: |dosage - nearest integer| <= 0.1


def hard_calls(expected: np.ndarray, threshold: float = HARD_CALL_THRESHOLD) -> np.ndarray:
    """Round expected counts to int8 hard calls; -1 where missing (NaN) or farther than ``threshold``."""
    nearest = np.rint(expected)
    # the tolerance keeps a dosage stated as exactly 1.9 (0.1 off in decimal, 0.1000000000000001 in
    # binary) a hard call, as plink2's fixed-point dosages keep it
    ok = np.abs(expected - nearest) <= threshold + 1e-9  # False for NaN
    return np.where(ok, nearest, -1).astype(np.int8)


def read_oxford_samples(path: str) -> list[str]:
    """The ``ID_2`` column of an Oxford ``.sample`` file (its IIDs, as plink2 reads them; ``ID_1``
    is the family ID, often 0). Two header lines: the column names, then their types."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        lines = [line.split() for line in fh if line.strip()]
    if len(lines) < 2 or lines[0][:2] != ["ID_1", "ID_2"]:
        raise MalformedInputError("not an Oxford .sample file (its first line must start ID_1 ID_2)", path)
    if any(len(f) < 2 for f in lines[2:]):
        raise MalformedInputError("a line has fewer than two columns (ID_1 ID_2)", path)
    return [f[1] for f in lines[2:]]


class BgenGenotypes(GenotypeSource):
    """A BGEN file opened for block-wise reading (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, sample_file: str | os.PathLike | None, ref: str):
        if ref not in ("first", "last"):
            raise UsageError("a BGEN file does not say which allele is REF: add --bgen-ref first (UK Biobank, "
                             "QCTOOL) or --bgen-ref last (plink2 --export bgen-1.2's default)")
        self.path = require_readable(path, "BGEN file")
        sample_path = require_readable(sample_file, "BGEN .sample file") if sample_file else ""
        self.ref = ref
        # imported here: only BGEN users pay for it
        from bgen import BgenReader

        try:
            self._reader = BgenReader(self.path, sample_path=sample_path)
        except Exception as e:  # the bgen package raises ValueError/RuntimeError with its own text
            raise MalformedInputError(f"not a readable BGEN file ({e})", self.path,
                                      "check it with bgenix -list or plink2 --bgen") from None
        if not sample_path and not self._reader.header.has_sample_ids:
            raise UsageError(f"{self.path} carries no sample IDs: give the .sample file with --sample")
        n = int(self._reader.header.nsamples)
        self.samples = read_oxford_samples(sample_path) if sample_path else [str(s) for s in self._reader.samples]
        if len(self.samples) != n:
            raise InconsistentInputError(f"lists {len(self.samples)} samples, {self.path} holds {n}",
                                         sample_path or self.path, "give the .sample file written with the BGEN")
        require_unique_ids(self.samples, sample_path or self.path, "", "make the sample IDs unique")

    def iter_blocks(self, regions: Sequence[Region] = (), samples: Sequence[str] | None = None,
                    block_size: int = 2048, want_ref_count: bool = False,
                    skipped: SkipCounts | None = None, part: tuple[int, int] | None = None
                    ) -> Iterator[VariantBlock]:
        """Decoded blocks in file order; ``blk.expected`` carries the expected ALT dosage."""
        skipped = skipped if skipped is not None else SkipCounts()
        cols = self.sample_columns(samples)
        wanted = merge_regions(regions) if regions else None
        lo, hi = 0, None  # file indices of the part's first and last site
        if part is not None:
            # the variant table (chromosomes, positions) is read without decoding any genotypes
            chroms, positions = np.asarray(self._reader.chroms()), np.asarray(self._reader.positions())
            selected = np.arange(chroms.size)
            if wanted is not None:
                keep = np.zeros(chroms.size, dtype=bool)
                for r in wanted:
                    keep |= (chroms == r.chrom) & (positions >= r.start) & (positions <= (r.end or np.inf))
                selected = selected[keep]
            first, stop = part_of(selected.size, part)
            lo, hi = (int(selected[first]), int(selected[stop - 1])) if stop > first else (0, -1)
        alt_col = 1 if self.ref == "first" else 0
        rows: list = []
        phased_so_far = True  # haplotypes are decoded until the first unphased heterozygous call
        for i, var in enumerate(self._variants()):
            if i < lo:
                continue
            if hi is not None and i > hi:
                break
            if wanted is not None and not in_regions(wanted, var.chrom, var.pos):
                continue
            alleles = list(var.alleles)
            if len(alleles) != 2:
                raise MalformedInputError(
                    f"variant {var.rsid or var.varid} at {var.chrom}:{var.pos} has {len(alleles)} alleles; only "
                    "biallelic BGEN variants are read", self.path,
                    "split it first (plink2 --bgen ... --make-pgen, then phenoclip ... --pfile)")
            prob = self._probabilities(var, i)
            if cols is not None:
                prob = prob[cols]
            phased = bool(var.is_phased)
            ploidy = np.asarray(var.ploidy)
            if cols is not None and ploidy.ndim and ploidy.size > 1:
                ploidy = ploidy[cols]
            if np.any(ploidy > 2):
                raise MalformedInputError(f"{var.chrom}:{var.pos} has a call of ploidy > 2", self.path)
            ploidy = np.broadcast_to(ploidy, (prob.shape[0],))
            haploid = ploidy == 1
            if phased:
                # columns: P(first), P(second) on haplotype 1, then on haplotype 2
                hap = prob[:, [alt_col, 2 + alt_col]].astype(np.float64)
                hap[haploid, 1] = 0.0
                expected = hap.sum(axis=1)
                haps = hard_calls(hap.T)
                haps[1, haploid] = -1
            else:
                # diploid: P(0), P(1), P(2) copies of the second allele; haploid: P(first), P(second)
                p = prob.astype(np.float64)
                second = p[:, 1] + 2 * p[:, 2] if p.shape[1] > 2 else p[:, 1]
                second = np.where(haploid, p[:, 1], second)
                expected = second if alt_col == 1 else ploidy - second
                haps = None  # from the hard calls, in _block: homozygous calls need no phase
            rows.append((var, alleles, expected, haps, ploidy))
            if len(rows) >= block_size:
                blk = self._block(rows, phased_so_far, want_ref_count)
                phased_so_far = phased_so_far and blk.unphased_het == 0
                yield blk
                rows = []
        if rows:
            yield self._block(rows, phased_so_far, want_ref_count)

    def _corrupt(self, where: str, error: Exception) -> MalformedInputError:
        return MalformedInputError(f"cannot read {where} ({error}); truncated or corrupt?", self.path,
                                   "re-create it, or check it with bgenix -list or plink2 --bgen")

    def _variants(self):
        """The reader's variants, its read errors (a truncated or corrupt file) as one line."""
        it = iter(self._reader)
        i = 0
        while True:
            try:
                var = next(it)
            except StopIteration:
                return
            except (ValueError, RuntimeError, OSError) as e:
                raise self._corrupt(f"variant {i + 1}", e) from None
            yield var
            i += 1

    def _probabilities(self, var, i: int) -> np.ndarray:
        try:
            return var.probabilities
        except (ValueError, RuntimeError, OSError) as e:
            raise self._corrupt(f"the probabilities of variant {i + 1} ({var.chrom}:{var.pos})", e) from None

    def _block(self, rows: list, want_haplotypes: bool, want_ref_count: bool) -> VariantBlock:
        blk = VariantBlock()
        ref_col = 0 if self.ref == "first" else 1
        for var, alleles, *_ in rows:
            ref, alt = alleles[ref_col], alleles[1 - ref_col]
            blk.add(str(var.chrom), int(var.pos), var.rsid or var.varid, ref, alt)
        expected = np.stack([r[2] for r in rows]).astype(np.float32)
        blk.expected = expected
        blk.dosage = hard_calls(expected)
        blk.n_sites = len(rows)
        called = blk.dosage >= 0
        ploidy = np.stack([r[4] for r in rows])
        blk.n_alleles = np.where(called, ploidy, 0).sum(axis=1)
        if want_ref_count:
            refc = (ploidy - blk.dosage).astype(np.int8)
            refc[~called] = -1
            blk.ref_count = refc
        # an unphased variant's heterozygous calls have no phase; its homozygous ones need none
        unphased = np.array([r[3] is None for r in rows])
        het = (blk.dosage == 1) & (ploidy == 2)
        blk.unphased_het = int(np.count_nonzero(het[unphased]))
        if want_haplotypes:
            haps = np.empty((len(rows), 2, expected.shape[1]), dtype=np.int8)
            for i, r in enumerate(rows):
                if r[3] is not None:
                    haps[i] = r[3]
                    continue
                d, diploid = blk.dosage[i], ploidy[i] == 2
                one = np.where(d == 2, 1, np.where(d == 0, 0, -1))
                haps[i, 0] = np.where(diploid, one, d)
                haps[i, 1] = np.where(diploid, one, -1)
            blk.haplotypes = haps
        return blk
