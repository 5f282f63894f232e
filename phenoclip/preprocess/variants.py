"""``preprocess variants``: VCF/BCF -> genotype store.

Streaming design: decoded blocks are kept variant-major (variants x samples, int8) and only
variants passing the filters are kept, so memory is the output matrix plus one block; at the end
the blocks are written sample by sample into the store (rows follow ``samples``).

Filter order: sample selection -> per-variant call rate (``--max-missing``) -> minor allele
frequency (``--maf``) -> every K-th of the survivors (ContIG's raw-SNP modality). PGS and burden
scores are computed on *all* variants read (after sample selection), before the filters:
a burden test is about the rare variants that ``--maf`` would drop.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from phenoclip.errors import UsageError
from phenoclip.io.annotations import read_gene_annotation, read_pgs_scoring_file
from phenoclip.io.bgen import HARD_CALL_THRESHOLD, BgenGenotypes
from phenoclip.io.stdin import STDIN, display_name, source_attr
from phenoclip.io.tables import read_id_list
from phenoclip.io.genotype_source import check_samples_subset, row_counts
from phenoclip.io.plink import PlinkGenotypes
from phenoclip.io.vcf import SkipCounts, VariantBlock, VcfGenotypes, parse_region
from phenoclip.io.vcf_open import has_index
from phenoclip.parts import check_part
from phenoclip.preprocess.genotype_store import write_genotype_store
from phenoclip.preprocess.variant_scores import BurdenAccumulator, PgsAccumulator
from phenoclip.progress import Progress, warn


@dataclass
class VariantSettings:
    """What ``preprocess variants`` was asked to do (saved as store attributes)."""

    regions: list[str] = field(default_factory=list)
    keep: Path | None = None
    remove: Path | None = None
    maf: float | None = None
    max_missing: float | None = None
    every_kth: int = 1
    pgs_files: list[Path] = field(default_factory=list)
    genes_file: Path | None = None
    burden_maf: float = 0.05
    threads: int | None = None
    block_size: int | None = None  # variants decoded together; None: sized to the samples (block_size_for)
    expected_dosage: bool = False  # BGEN: also store the expected ALT dosage (float32)
    part: int | None = None        # with num_parts: this job's share of the variants (0-based)
    num_parts: int | None = None


def _frequencies(block: VariantBlock) -> tuple[np.ndarray, np.ndarray]:
    """ALT allele frequency and missing-call rate per variant of a block.

    Frequencies count alleles actually called (a haploid call contributes one allele).
    """
    dos = block.dosage
    # row sums in int32 (exact up to a billion samples): 20x faster than summing into int64 or
    # through np.where; a missing call (-1) is added back once per missing call
    n_called = row_counts(dos >= 0)
    miss_rate = 1.0 - n_called / dos.shape[1]
    alt = (np.add.reduce(dos, axis=1, dtype=np.int32) + (dos.shape[1] - n_called)).astype(np.float64)
    alleles = block.n_alleles.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        freq = np.where(alleles > 0, alt / np.maximum(alleles, 1), 0.0)
    return freq, miss_rate


def convert_vcf(vcf_path: str | os.PathLike, out: str | os.PathLike, opts: VariantSettings) -> dict:
    """Convert a VCF/BCF to a genotype store; see the module docstring for the filter order.

    Returns a summary (samples, sites read, variants written, multi-allelic sites split, phased).
    """
    vcf_path = os.fspath(vcf_path)
    _check_options(opts)
    source = VcfGenotypes(vcf_path, threads=opts.threads)
    if (opts.regions or opts.num_parts) and not has_index(vcf_path):
        warn(f"{display_name(vcf_path)} has no .tbi/.csi index: streaming the whole file to select regions "
             "(index it with tabix -p vcf or bcftools index)")
    return convert_genotypes(source, out, opts, {"input_format": "vcf"})


def convert_plink(prefix: str | os.PathLike, kind: str, out: str | os.PathLike, opts: VariantSettings) -> dict:
    """Convert a PLINK 1 (``kind='bfile'``) or PLINK 2 (``'pfile'``) fileset to a genotype store."""
    _check_options(opts)
    source = PlinkGenotypes(prefix, kind)
    return convert_genotypes(source, out, opts, {"input_format": kind})


def convert_bgen(path: str | os.PathLike, sample_file: str | os.PathLike | None, ref: str,
                 out: str | os.PathLike, opts: VariantSettings) -> dict:
    """Convert a BGEN file (biallelic, ``ref`` = which listed allele is REF) to a genotype store."""
    _check_options(opts)
    source = BgenGenotypes(path, sample_file, ref)
    attrs = {"input_format": "bgen", "bgen_ref": ref, "hard_call_threshold": HARD_CALL_THRESHOLD,
             "dosage_encoding": f"hard calls of the expected ALT dosage: the nearest integer when within "
                                f"{HARD_CALL_THRESHOLD} of it, else -1 (missing)"}
    return convert_genotypes(source, out, opts, attrs)


#: bytes a block's buffers may take: the VCF reader holds two raw int16 (variants x samples x 3)
#: buffers, so 6 bytes a genotype twice; 2,048 variants at 1,000 samples, 21 at 500,000
BLOCK_BYTES = 1 << 27


def block_size_for(n_samples: int) -> int:
    """Variants per decoded block: 2,048, fewer for biobank sample counts so memory stays bounded."""
    return int(min(2048, max(8, BLOCK_BYTES // (12 * max(1, n_samples)))))


def _check_options(opts: VariantSettings) -> None:
    if opts.every_kth < 1:
        raise UsageError("--every-kth must be >= 1")
    check_part(opts.part, opts.num_parts)
    if opts.num_parts and opts.every_kth > 1:
        raise UsageError("--every-kth counts the survivors of the whole file, which one part does not see: "
                         "run the parts without it (thinning after the merge is not offered yet)")
    for r in opts.regions:
        parse_region(r)


def convert_genotypes(source, out: str | os.PathLike, opts: VariantSettings, extra_attrs: dict | None = None) -> dict:
    """Genotype source (VCF, PLINK or BGEN reader) -> genotype store; shared by every input format.

    ``source`` offers ``path``, ``samples`` and ``iter_blocks`` (see :class:`phenoclip.io.vcf.VcfGenotypes`).
    """
    src_path = source.path
    name = display_name(src_path)  # '-' for standard input
    regions = [parse_region(r) for r in opts.regions]
    scores = [read_pgs_scoring_file(f) for f in opts.pgs_files]
    genes = read_gene_annotation(opts.genes_file) if opts.genes_file else None
    keep = read_id_list(opts.keep) if opts.keep else None
    remove = read_id_list(opts.remove) if opts.remove else None

    part = (opts.part, opts.num_parts) if opts.num_parts else None
    all_samples = list(source.samples)
    subset = None
    samples = all_samples
    if keep is not None or remove is not None:
        samples, absent = check_samples_subset(all_samples, keep, remove, src_path)
        if absent:
            warn(f"{len(absent)} sample ID(s) from --keep/--remove are not in {name} (first: {absent[0]})")
        subset = samples

    pgs = PgsAccumulator(scores, len(samples)) if scores else None
    burden = BurdenAccumulator(genes, len(samples), opts.burden_maf) if genes else None
    kept_blocks: list[VariantBlock] = []
    kept_freq, kept_miss = [], []
    n_sites = n_split = n_read = n_unphased = 0
    haplotypes_ok = True
    survivors = 0
    skipped = SkipCounts()
    with Progress(f"reading {os.path.basename(name) if name != STDIN else 'standard input'}", None, "variants") as bar:
        block_size = opts.block_size or block_size_for(len(samples))
        for block in source.iter_blocks(regions, subset, block_size=block_size, want_ref_count=pgs is not None,
                                        skipped=skipped, part=part):
            n_sites += block.n_sites
            n_split += block.n_multiallelic
            n_read += len(block)
            n_unphased += block.unphased_het
            freq, miss = _frequencies(block)
            if pgs is not None:
                pgs.add(block)
            if burden is not None:
                burden.add(block, freq)
            keep_mask = np.ones(len(block), dtype=bool)
            if opts.max_missing is not None:
                keep_mask &= miss <= opts.max_missing
            if opts.maf is not None:
                keep_mask &= np.minimum(freq, 1 - freq) >= opts.maf
            if opts.every_kth > 1:
                idx = np.flatnonzero(keep_mask)
                chosen = idx[(survivors + np.arange(idx.size)) % opts.every_kth == 0]
                survivors += idx.size
                keep_mask[:] = False
                keep_mask[chosen] = True
            _keep_rows(block, keep_mask)
            block.ref_count = None  # only PGS needed it; free it now
            if not opts.expected_dosage:
                block.expected = None
            haplotypes_ok = haplotypes_ok and n_unphased == 0 and block.haplotypes is not None
            if not haplotypes_ok:
                # an unphased heterozygous call (or an unphased source): no haplotypes will be
                # written, do not hold them
                block.haplotypes = None
                for b in kept_blocks:
                    b.haplotypes = None
            if len(block):
                kept_blocks.append(block)
                kept_freq.append(freq[keep_mask])
                kept_miss.append(miss[keep_mask])
            bar.advance(block.n_sites)
    source.close()

    n_out = sum(len(b) for b in kept_blocks)
    phased = haplotypes_ok and n_out > 0
    if skipped.no_gt:
        warn(f"{skipped.no_gt} record(s) in {name} have no GT (first at {skipped.first_no_gt}); their calls "
             "are stored as missing, as bcftools reads them")
    if n_out == 0:
        why = (f" ({skipped.no_alt} record(s) read, none with an ALT allele: a reference-only or gVCF file has "
               "nothing to count)" if skipped.no_alt and not n_read else "")
        warn(f"no variants left in {name} after region selection and filters{why}; writing an empty store")
    attrs = {
        "source": source_attr(src_path),
        "sites_read": n_sites, "variants_read": n_read, "multiallelic_split": n_split,
        "records_without_alt": skipped.no_alt, "records_without_gt": skipped.no_gt,
        "phased": phased,
        # no heterozygous call without phase was read (filtered variants included): what a merge
        # of parts needs to decide ``phased`` as a single job would
        "haplotypes_complete": haplotypes_ok,
        "filters": f"regions={','.join(opts.regions) or 'all'} maf={opts.maf} max_missing={opts.max_missing} "
                   f"every_kth={opts.every_kth}",
        "dosage_encoding": "copies of the ALT allele; -1 missing or half-missing; haploid calls 0/1",
        **(extra_attrs or {}),
    }
    if part is not None:
        attrs.update(part=opts.part, num_parts=opts.num_parts, part_rule=source.part_rule,
                     part_fingerprint=part_fingerprint(src_path, samples, attrs, opts))
    write_genotype_store(out, samples, kept_blocks, np.concatenate(kept_freq) if kept_freq else np.zeros(0),
                         np.concatenate(kept_miss) if kept_miss else np.zeros(0), phased, attrs, pgs, burden,
                         src_path, threads=opts.threads or os.cpu_count() or 1)
    summary = {"samples": len(samples), "sites_read": n_sites, "variants": n_out,
               "multiallelic_split": n_split, "phased": phased}
    if skipped.no_alt:
        summary["records_without_alt"] = skipped.no_alt
    if skipped.no_gt:
        summary["records_without_gt"] = skipped.no_gt
    if pgs is not None:
        summary["pgs_matched"] = "/".join(str(int(m)) for m in pgs.matched)
    if burden is not None:
        summary["burden_genes"] = int((burden.n_rare > 0).sum())
    return summary


def part_fingerprint(src_path: str, samples: Sequence[str], attrs: dict, opts: VariantSettings) -> str:
    """SHA-256 over what makes parts belong to one run: the input (name and size), the samples,
    the filters, the PGS and gene files and the input's reading options. ``preprocess merge``
    refuses parts whose fingerprints differ."""
    size = os.path.getsize(src_path) if os.path.isfile(src_path) else None
    what = {"input": [os.path.basename(src_path), size], "samples": list(samples), "filters": attrs["filters"],
            "pgs": [os.path.basename(str(f)) for f in opts.pgs_files],
            "genes": os.path.basename(str(opts.genes_file)) if opts.genes_file else None,
            "burden_maf": opts.burden_maf, "num_parts": opts.num_parts,
            "format": {k: str(attrs.get(k)) for k in ("input_format", "bgen_ref", "hard_call_threshold")},
            "expected_dosage": opts.expected_dosage}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def _keep_rows(block: VariantBlock, mask: np.ndarray) -> None:
    if mask.all():
        return
    idx = np.flatnonzero(mask)
    for name in ("chrom", "pos", "id", "ref", "alt"):
        values = getattr(block, name)
        setattr(block, name, [values[i] for i in idx])
    block.dosage = block.dosage[idx]
    if block.haplotypes is not None:
        block.haplotypes = block.haplotypes[idx]
    if block.ref_count is not None:
        block.ref_count = block.ref_count[idx]
    if block.expected is not None:
        block.expected = block.expected[idx]
