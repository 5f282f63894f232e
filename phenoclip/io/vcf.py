"""VCF/BCF reading with cyvcf2, decoded block-wise into ALT-allele dosages and haplotypes.

Data contract of :func:`iter_blocks` (one :class:`VariantBlock` per up to ``block_size`` sites):

* one column per ALT allele: a multi-allelic site ``A -> C,T`` becomes two variants
  ``A/C`` and ``A/T`` (as ``bcftools norm -m-`` splits it), each counting copies of its own ALT;
* ``dosage`` int8 (variants x samples): 0, 1, 2 copies of the ALT allele; a haploid call
  (male chrX) counts 0 or 1; a missing call ``./.`` **or a half-call** ``0/.`` is -1 (cyvcf2's
  ``gt_types`` reports half-calls as called, so we decode ``genotype.array()`` instead);
* ``haplotypes`` int8 (variants x 2 x samples): ALT (1) or not (0) on each haplotype, -1 where
  the allele is missing; a haploid call's absent second haplotype is -1.
  ``unphased_het`` counts heterozygous diploid calls without phase: haplotypes mean something
  only when it is 0 for the whole file.

cyvcf2 returns views into C memory that the next record overwrites: every array taken from a
record is copied before the iterator moves on.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Sequence

import numpy as np

from phenoclip.errors import MalformedInputError, UsageError
from phenoclip.io.genotype_source import (PART_RULE, GenotypeSource, Region, SkipCounts,  # noqa: F401
                                          VariantBlock, in_regions, merge_regions, parse_region)
from phenoclip.io.vcf_decode import cyvcf2_records, decode_genotypes
from phenoclip.io.vcf_open import has_index, header_samples, open_vcf
from phenoclip.io.vcf_text import TextBatch, gt_only, iter_text_records


def iter_blocks(vcf, path: str, regions: Sequence[Region] = (), block_size: int = 2048,
                want_ref_count: bool = False, skipped: SkipCounts | None = None,
                by_position: bool = False) -> Iterator[VariantBlock]:
    """Stream decoded :class:`VariantBlock`s from an open VCF, in file order (region order with regions).

    With regions and an index, only those regions are read; without an index the whole file is
    streamed and filtered by position (correct, just slower). With an index a record overlapping a
    region is read (bcftools' rule) unless ``by_position``, which keeps records whose POS is in it.
    Haplotypes are decoded until the first unphased heterozygous call; after it blocks carry
    ``haplotypes=None``. Records without an ALT allele are skipped and records without GT read as
    all-missing (as bcftools does), each counted in ``skipped``. A GT-only text VCF streamed
    without an index query is parsed by :mod:`phenoclip.io.vcf_text`, anything else by cyvcf2.
    """
    skipped = skipped if skipped is not None else SkipCounts()
    n_samples = len(vcf.samples)
    if regions and has_index(path):
        sources = [vcf(str(r)) for r in merge_regions(regions)]
        # an index query returns records that overlap a region (a deletion starting before it too);
        # ``by_position`` keeps only those whose POS lies in it, so adjacent parts never share one
        region_filter = merge_regions(regions) if by_position else None
    else:
        sources = [vcf]
        region_filter = merge_regions(regions) if regions else None

    # Two raw buffers: a worker thread decodes one block (numpy releases the GIL) while this
    # thread parses the next one into the other buffer.
    raws = [np.empty((3, block_size, n_samples), dtype=np.int16) for _ in range(2)]
    indices = [np.empty(block_size, dtype=np.int16) for _ in range(2)]
    which = 0
    raw, allele_index = raws[which], indices[which]
    block = VariantBlock()
    n = 0
    phased_so_far = True
    pending = None
    pool = ThreadPoolExecutor(max_workers=1)
    no_call = np.zeros((n_samples, 3), dtype=np.int16)
    no_call[:, :2] = -1   # two missing alleles, unphased

    def finish(blk: VariantBlock, future) -> VariantBlock:
        nonlocal phased_so_far
        dos, haps, refc, unph, n_alleles = future.result()
        blk.dosage, blk.haplotypes, blk.ref_count, blk.unphased_het = dos, haps, refc, unph
        blk.n_alleles = n_alleles
        phased_so_far = phased_so_far and unph == 0
        return blk

    def flush() -> VariantBlock | None:
        """Start decoding the current block; return the previous one, now decoded (or None)."""
        nonlocal block, n, pending, which, raw, allele_index
        done = finish(*pending) if pending is not None else None
        # haplotypes are decoded while every block so far was phased (known once `done` is in)
        future = pool.submit(decode_genotypes, raw[:, :n], allele_index[:n], phased_so_far, want_ref_count)
        pending = (block, future)
        which = 1 - which
        raw, allele_index = raws[which], indices[which]
        block, n = VariantBlock(), 0
        return done

    def add_batch(b: TextBatch) -> Iterator[VariantBlock]:
        """A run of fixed-width diploid records, copied into the buffer in slices, not one by one;
        block boundaries fall where the record-by-record loop puts them."""
        nonlocal n
        n_alt = np.fromiter((len(a) for a in b.alts), dtype=np.int64, count=len(b))
        wanted = np.ones(len(b), dtype=bool)
        if region_filter is not None:
            wanted = np.fromiter((in_regions(region_filter, c, p) for c, p in zip(b.chrom, b.pos)), dtype=bool,
                                 count=len(b))
        skipped.no_alt += int(np.count_nonzero(wanted & (n_alt == 0)))
        rows = np.flatnonzero(wanted & (n_alt > 0))
        i = 0
        while i < rows.size:
            cum = np.cumsum(n_alt[rows[i:]])
            take = int(np.searchsorted(cum, block_size - n, side="right"))
            if take == 0:  # the next site's ALTs do not fit: close this block first
                if n == 0:
                    raise MalformedInputError(f"{b.chrom[rows[i]]}:{b.pos[rows[i]]} has more ALT alleles than a "
                                              f"block holds ({block_size})", path)
                done = flush()
                if done is not None:
                    yield done
                continue
            sel = rows[i:i + take]
            reps = n_alt[sel]
            total = int(cum[take - 1])
            contiguous = total == take and int(sel[-1]) - int(sel[0]) == take - 1
            for plane in range(3):
                if contiguous:  # biallelic sites, none filtered out: a slice copy
                    raw[plane, n:n + total] = b.gt[plane, sel[0]:sel[0] + take]
                elif total == take:  # biallelic sites only: one copy, straight into the buffer
                    # mode="clip": the rows are valid, and np.take buffers `out` under "raise"
                    np.take(b.gt[plane], sel, axis=0, out=raw[plane, n:n + total], mode="clip")
                else:
                    raw[plane, n:n + total] = np.repeat(b.gt[plane, sel], reps, axis=0)
            starts = np.repeat(np.cumsum(reps) - reps, reps)
            allele_index[n:n + total] = np.arange(total) - starts + 1
            # one output row per ALT allele, in file order
            out = [(k, alt) for k in sel.tolist() for alt in b.alts[k]]
            block.extend([b.chrom[k] for k, _ in out], [b.pos[k] for k, _ in out], [b.id[k] for k, _ in out],
                         [b.ref[k] for k, _ in out], [alt for _, alt in out])
            block.n_sites += take
            block.n_multiallelic += int(np.count_nonzero(reps > 1))
            n += total
            i += take
            if n >= block_size:
                done = flush()
                if done is not None:
                    yield done

    if not (regions and has_index(path)) and gt_only(path):
        # streaming a GT-only text VCF: numpy reads the calls of many records at once
        names = header_samples(path) or []
        kept = list(vcf.samples)
        columns = None if kept == names else np.flatnonzero(np.isin(names, kept))
        records = iter_text_records(path, len(names), columns)
    else:
        records = cyvcf2_records(sources)
    try:
        for record in records:
            if isinstance(record, TextBatch):
                yield from add_batch(record)
                continue
            chrom, pos, vid, ref, alts, gt = record
            if region_filter is not None and not in_regions(region_filter, chrom, pos):
                continue
            if not alts:
                skipped.no_alt += 1
                continue  # monomorphic site or gVCF reference block (ALT '.'): nothing to count
            if len(alts) > 1:
                block.n_multiallelic += 1
                if n + len(alts) > block_size:
                    done = flush()
                    if done is not None:
                        yield done
            if gt is None:
                # a record whose FORMAT lacks GT (e.g. PL only): bcftools reads every call as
                # missing, and so do we (counted and reported by the caller)
                gt = no_call
                skipped.add_no_gt(f"{chrom}:{pos}")
            block.n_sites += 1
            ploidy = gt.shape[1] - 1  # last column is the phase flag
            if ploidy > 2:
                raise MalformedInputError(
                    f"{chrom}:{pos} has a call of ploidy {ploidy}; only haploid and diploid calls are supported",
                    path, f"exclude such sites (e.g. bcftools view -t ^{chrom}:{pos}) or use --region to skip them")
            for i, alt in enumerate(alts, start=1):
                # copy into our buffer: cyvcf2 arrays may be views into htslib memory
                if ploidy == 2:
                    raw[:, n] = gt.T
                else:  # all-haploid record: no second allele
                    raw[0, n] = gt[:, 0]
                    raw[1, n] = -2
                    raw[2, n] = gt[:, 1]
                allele_index[n] = i
                block.add(chrom, pos, vid, ref, alt)
                n += 1
            if n >= block_size:
                done = flush()
                if done is not None:
                    yield done
    except MalformedInputError:
        pool.shutdown(wait=True)
        raise
    except Exception as e:
        pool.shutdown(wait=True)
        msg = str(e)
        if "genotypes" in msg:
            raise MalformedInputError("a record has no GT values", path) from None
        raise MalformedInputError(f"cannot read the VCF body ({msg}); truncated or corrupt file?", path,
                                  "check it with bcftools view") from None
    try:
        if n:
            done = flush()
            if done is not None:
                yield done
        if pending is not None:
            yield finish(*pending)
    finally:
        pool.shutdown(wait=True)


def genome_part(contigs: Sequence[tuple[str, int]], part: tuple[int, int], path: str) -> list[Region]:
    """The regions of part ``(K, N)`` under :data:`PART_RULE` genome: a VCF's record count is not known
    before reading it, its contig lengths are."""
    if not contigs or any(length <= 0 for _, length in contigs):
        raise MalformedInputError("--num-parts needs every contig's length (##contig=<ID=..,length=..>) in the "
                                  "header", path, "add them (bcftools reheader --fai) or run one job per --region")
    k, n = part
    ends = np.cumsum([length for _, length in contigs])
    lo, hi = ends[-1] * k // n, ends[-1] * (k + 1) // n   # genome coordinates [lo, hi), 0-based
    out = []
    start = 0
    for (name, length), end in zip(contigs, ends):
        a, b = max(lo, start), min(hi, end)
        if a < b:
            out.append(Region(name, int(a - start) + 1, int(b - start)))
        start = end
    return out


class VcfGenotypes(GenotypeSource):
    """A VCF/BCF opened for block-wise reading: the interface every genotype source offers.

    ``samples`` (file order), ``path``, ``iter_blocks`` and ``close``; see
    :class:`phenoclip.io.plink.PlinkGenotypes` and :class:`phenoclip.io.bgen.BgenGenotypes` for the others.
    """

    part_rule = PART_RULE["genome"]

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        self.path = os.fspath(path)
        self.threads = threads
        probe = open_vcf(self.path, threads=threads)
        self.samples = list(probe.samples)
        try:  # (name, length) of the header's contigs: what --num-parts cuts
            self.contigs = list(zip(probe.seqnames, probe.seqlens))
        except Exception:  # cyvcf2 raises a bare Exception when a contig has no length
            self.contigs = []
        probe.close()
        self._reader = None

    def iter_blocks(self, regions: Sequence[Region] = (), samples: Sequence[str] | None = None,
                    block_size: int = 2048, want_ref_count: bool = False,
                    skipped: SkipCounts | None = None, part: tuple[int, int] | None = None
                    ) -> Iterator[VariantBlock]:
        if part is not None:
            if regions:
                raise UsageError("--region and --num-parts on a VCF: split by one job per --region, or by parts")
            regions = genome_part(self.contigs, part, self.path)
        # htslib decompresses BGZF on a second thread while we decode: worth it even on 2 cores
        self._reader = open_vcf(self.path, samples=samples, threads=self.threads or min(2, os.cpu_count() or 1))
        yield from iter_blocks(self._reader, self.path, regions, block_size=block_size, want_ref_count=want_ref_count,
                               skipped=skipped, by_position=part is not None)
