"""What every genotype reader offers ``preprocess variants`` (VCF, PLINK 1/2, BGEN).

A source knows its file's ``path`` and ``samples`` (file order) and streams
:class:`VariantBlock`s in file order (their contract is in :mod:`phenoclip.io.vcf`'s docstring).
Regions and blocks live here, below every reader; the conversion to a store, filters, PGS and
burden scores are shared (:func:`phenoclip.preprocess.variants.convert_genotypes`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from phenoclip.errors import InconsistentInputError, MalformedInputError, UsageError

_REGION_RE = re.compile(r"^([^:]+?)(?::([\d,]+)?(?:-([\d,]*))?)?$")


@dataclass(frozen=True)
class Region:
    """A 1-based inclusive interval; ``end`` None means to the end of the contig."""

    chrom: str
    start: int = 1
    end: int | None = None

    def __str__(self) -> str:
        return self.chrom if self.start <= 1 and self.end is None else f"{self.chrom}:{self.start}-{self.end or ''}"

    def contains(self, pos: int) -> bool:
        return pos >= self.start and (self.end is None or pos <= self.end)


def parse_region(text: str) -> Region:
    """Parse ``chr1``, ``chr1:1000-2000``, ``chr1:1,000-`` (bcftools' forms)."""
    m = _REGION_RE.match(text.strip())
    if not m:
        raise UsageError(f"bad region '{text}': use CHR, CHR:BEG-END or CHR:BEG-")
    chrom, beg, end = m.group(1), m.group(2), m.group(3)
    start = int(beg.replace(",", "")) if beg else 1
    stop = int(end.replace(",", "")) if end else None
    if beg and end is None and "-" not in text:
        stop = start  # "chr1:1000" is a single position, as in bcftools
    if start < 1 or (stop is not None and stop < start):
        raise UsageError(f"bad region '{text}': END must be >= BEG >= 1")
    return Region(chrom, start, stop)


def in_regions(regions: Sequence[Region], chrom: str, pos: int) -> bool:
    """True when a record at ``chrom:pos`` lies in one of ``regions``."""
    return any(r.chrom == chrom and r.contains(pos) for r in regions)


def merge_regions(regions: Sequence[Region]) -> list[Region]:
    """Merge overlapping regions per contig so no variant is read twice; keeps first-seen contig order."""
    by_chrom: dict[str, list[Region]] = {}
    for r in regions:
        by_chrom.setdefault(r.chrom, []).append(r)
    merged: list[Region] = []
    for chrom, rs in by_chrom.items():
        rs = sorted(rs, key=lambda r: r.start)
        cur = rs[0]
        for r in rs[1:]:
            if cur.end is None or r.start <= cur.end + 1:
                end = None if cur.end is None or r.end is None else max(cur.end, r.end)
                cur = Region(chrom, cur.start, end)
            else:
                merged.append(cur)
                cur = r
        merged.append(cur)
    return merged


@dataclass
class SkipCounts:
    """Records :func:`iter_blocks` did not decode as written, for the log."""

    no_alt: int = 0                 # ALT '.' (gVCF reference blocks, monomorphic sites): skipped
    no_gt: int = 0                  # FORMAT without GT (e.g. PL only): every call read as missing
    first_no_gt: str = ""           # CHROM:POS of the first such record

    def add_no_gt(self, where: str) -> None:
        self.no_gt += 1
        self.first_no_gt = self.first_no_gt or where


@dataclass
class VariantBlock:
    """Up to ``block_size`` decoded variants (after multi-allelic splitting); see :mod:`phenoclip.io.vcf`'s docstring."""

    chrom: list[str] = field(default_factory=list)
    pos: list[int] = field(default_factory=list)
    id: list[str] = field(default_factory=list)
    ref: list[str] = field(default_factory=list)
    alt: list[str] = field(default_factory=list)
    dosage: np.ndarray | None = None       # (n, S) int8
    haplotypes: np.ndarray | None = None   # (n, 2, S) int8
    ref_count: np.ndarray | None = None    # (n, S) int8: copies of REF, -1 missing (for PGS on REF)
    n_alleles: np.ndarray | None = None    # (n,) alleles in the called genotypes (haploid calls count 1)
    expected: np.ndarray | None = None     # (n, S) float32 expected ALT dosage (BGEN only), NaN missing
    unphased_het: int = 0
    n_sites: int = 0
    n_multiallelic: int = 0

    def __len__(self) -> int:
        return len(self.pos)

    @staticmethod
    def variant_id(chrom: str, pos: int, vid: str | None, ref: str, alt: str) -> str:
        """The ID a row is stored under: the file's, or ``CHROM:POS:REF:ALT`` where it has none."""
        return vid or f"{chrom}:{pos}:{ref}:{alt}"

    def add(self, chrom: str, pos: int, vid: str | None, ref: str, alt: str) -> None:
        """Append one output variant's table row (ID: :meth:`variant_id`)."""
        self.chrom.append(chrom)
        self.pos.append(pos)
        self.id.append(self.variant_id(chrom, pos, vid, ref, alt))
        self.ref.append(ref)
        self.alt.append(alt)

    def extend(self, chrom: list[str], pos: list[int], vid: list[str | None], ref: list[str],
               alt: list[str]) -> None:
        """:meth:`add` for many rows at once (columns of equal length)."""
        self.chrom += chrom
        self.pos += pos
        self.id += list(map(self.variant_id, chrom, pos, vid, ref, alt))
        self.ref += ref
        self.alt += alt



#: how ``--part K --num-parts N`` cuts the variants (recorded in each part store as ``part_rule``)
PART_RULE = {
    "index": "sites in file order (after --region) cut into N consecutive runs of near-equal count "
             "(numpy.array_split); part K (0-based) reads run K",
    "genome": "the genome (the VCF header's ##contig lines with length=, in header order) cut into N "
              "consecutive pieces of equal length; part K (0-based) reads the records in piece K",
}


def part_of(n: int, part: tuple[int, int] | None) -> tuple[int, int]:
    """``(first, stop)`` of the ``n`` selected sites that part ``(K, N)`` reads (:data:`PART_RULE` index)."""
    if part is None:
        return 0, n
    k, parts = part
    bounds = np.array_split(np.arange(n), parts)[k]
    return (int(bounds[0]), int(bounds[-1]) + 1) if bounds.size else (n, n)


def row_counts(mask: np.ndarray) -> np.ndarray:
    """True entries per row of a 2-D bool array, as int32: an int32 sum of its int8 view, several
    times faster than ``count_nonzero(axis=1)`` (exact up to 2^31 columns)."""
    return np.add.reduce(np.ascontiguousarray(mask).view(np.int8), axis=1, dtype=np.int32)


def require_unique_ids(ids: Sequence[str], path: str, what: str, fix: str) -> None:
    """Raise one line naming the first sample ID that occurs twice in ``path``."""
    seen: set[str] = set()
    for s in ids:
        if s in seen:
            raise MalformedInputError(f"duplicate sample ID '{s}'{what}", path, fix)
        seen.add(s)


class GenotypeSource:
    """Base of the readers: ``path``, ``samples``, :meth:`iter_blocks`, :meth:`close`."""

    path: str
    samples: list[str]
    part_rule = PART_RULE["index"]
    _reader = None  # the format library's open file, once there is one

    def sample_columns(self, samples: Sequence[str] | None) -> np.ndarray | None:
        """Sorted file columns of ``samples`` (a subset of :attr:`samples`), or None for all."""
        if samples is None:
            return None
        index = {s: i for i, s in enumerate(self.samples)}
        return np.sort(np.fromiter((index[s] for s in samples), dtype=np.int64, count=len(samples)))

    def iter_blocks(self, regions: Sequence[Region] = (), samples: Sequence[str] | None = None,
                    block_size: int = 2048, want_ref_count: bool = False,
                    skipped: SkipCounts | None = None, part: tuple[int, int] | None = None
                    ) -> Iterator[VariantBlock]:
        """Decoded blocks of at most about ``block_size`` variants, in file order; ``part`` = (K, N)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the file."""
        if self._reader is not None:
            self._reader.close()


def check_samples_subset(vcf_samples: Sequence[str], keep: Sequence[str] | None, remove: Sequence[str] | None,
                         path: str) -> tuple[list[str], list[str]]:
    """Apply ``--keep``/``--remove`` (VCF order kept). Returns (selected, IDs asked for but absent)."""
    selected = list(vcf_samples)
    absent: list[str] = []
    if keep is not None:
        keep_set = set(keep)
        absent += [s for s in keep if s not in set(vcf_samples)]
        selected = [s for s in selected if s in keep_set]
    if remove is not None:
        rm = set(remove)
        absent += [s for s in remove if s not in set(vcf_samples)]
        selected = [s for s in selected if s not in rm]
    if not selected:
        raise InconsistentInputError("no samples left after --keep/--remove", path,
                                     "check that the IDs match the VCF header")
    return selected, absent
