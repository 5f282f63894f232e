"""The haplotype blocks of the simulated genome: their sizes, contigs and places, and what fills them.

Each contig's span is cut into equal slots, one per block, so blocks never overlap. The
``blocks`` genotype model fills a block with a few founder haplotypes (:func:`place_blocks`);
the ``coalescent`` model with one independent msprime segment holding every patient's
haplotypes (:func:`place_segments`, :mod:`coalescent`). :mod:`genome` draws them first, from the
``layout`` stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from phenoclip.data.simulate import coalescent
from phenoclip.data.simulate.contigs import CHROMS, span
from phenoclip.errors import UsageError


@dataclass
class Block:
    """One haplotype block: a few founder haplotypes copied (with rare mutations) into everyone.

    Under the coalescent model a block is one simulated genome segment instead: no founders,
    ``haplotypes`` holds every patient's two haplotypes directly.
    """

    chrom: str
    positions: np.ndarray          # (S,) int, sorted
    founders: np.ndarray | None    # (F, S) uint8 ALT indicators (blocks model)
    founder_freqs: np.ndarray | None  # (F,) sums to 1 (blocks model)
    first_site: int = 0            # index of its first SNP among all block SNPs
    #: coalescent model: (2N, S) uint8 ALT indicators, patient i on rows 2i and 2i + 1
    haplotypes: np.ndarray | None = None
    #: coalescent model: the simulated span (first and last bp, 1-based), its sites before
    #: thinning (hit by one mutation) and the msprime random seeds (ancestry, mutations)
    segment: tuple[int, int] | None = None
    simulated_sites: int = 0
    seeds: tuple[int, int] | None = None

    @property
    def alt_freqs(self) -> np.ndarray:
        """ALT frequency of each SNP: in the population (blocks, before mutation noise) or in the
        simulated sample (coalescent; over all 2N haplotypes, also on chrX where males keep one)."""
        if self.haplotypes is not None:
            return self.haplotypes.mean(0)
        return self.founder_freqs @ self.founders


def block_sizes(n_snps: int, rng: np.random.Generator) -> list[int]:
    """Block sizes of about 40 SNPs (20-60), scaled down when the budget is small."""
    n_blocks = max(8, int(round(n_snps / 40)))
    mean = n_snps / n_blocks
    raw = rng.uniform(0.5, 1.5, n_blocks) * mean
    sizes = np.maximum(3, np.floor(raw / raw.sum() * n_snps)).astype(int)
    # hand out (or take back) the rounding remainder so the total is exact
    i = 0
    while sizes.sum() != n_snps:
        step = 1 if sizes.sum() < n_snps else -1
        if step > 0 or sizes[i % n_blocks] > 3:
            sizes[i % n_blocks] += step
        i += 1
    return sizes.tolist()


def _founder_matrix(n_founders: int, n_snps: int, rng: np.random.Generator) -> np.ndarray:
    """ALT indicators per founder and SNP; every SNP polymorphic among the founders."""
    m = (rng.random((n_founders, n_snps)) < 0.5).astype(np.uint8)
    constant = (m.min(0) == m.max(0))
    for s in np.flatnonzero(constant):
        m[rng.integers(n_founders), s] ^= 1
    return m

def _block_chroms(n: int) -> list[str]:
    """The contig of each of ``n`` blocks: ~12 % on chrX (at least one), the rest split between chr1 and chr2."""
    n_x = max(1, int(round(0.12 * n)))
    n_1 = (n - n_x + 1) // 2
    return ["chr1"] * n_1 + ["chr2"] * (n - n_x - n_1) + ["chrX"] * n_x


def _slots(sizes: list[int]):
    """Per block, in VCF order: (contig, block index, start of its slot, slot length, first site).

    Each contig's span is cut into equal slots, one per block on it, so blocks never overlap.
    """
    chroms = _block_chroms(len(sizes))
    first = 0
    for chrom in CHROMS:
        members = [i for i, c in enumerate(chroms) if c == chrom]
        lo, hi = span(chrom)
        slot = (hi - lo) // len(members)
        for j, b in enumerate(members):
            yield chrom, b, lo + j * slot, slot, first
            first += sizes[b]


def place_blocks(sizes: list[int], rng: np.random.Generator) -> list[Block]:
    blocks: list[Block] = []
    for chrom, b, slot_start, slot, first in _slots(sizes):
        size = sizes[b]
        # SNPs every 0.5-3 kb: a block spans tens of kb; blocks are megabases apart
        gaps = rng.integers(500, 3000, size)
        start = slot_start + int(rng.integers(0, slot // 2))
        pos = start + np.cumsum(gaps)
        n_f = int(rng.integers(3, 7))
        freqs = rng.dirichlet(np.full(n_f, 1.5))
        blocks.append(Block(chrom, pos.astype(np.int64), _founder_matrix(n_f, size, rng), freqs, first))
    return blocks


def _segment_sites(individuals: int, length: int, population_size: float, budget: int, max_length: int,
                   rng: np.random.Generator) -> tuple[int, tuple[int, int], object]:
    """Simulate a segment with at least ``budget`` sites: (length used, seeds, tree sequence).

    A segment short of sites (a small cohort has fewer, a random genealogy can be short) is
    simulated again at twice the length, up to ``max_length`` (its room on the contig).
    """
    for _ in range(coalescent.MAX_GROWTH + 1):
        seeds = coalescent.draw_seeds(rng)
        ts = coalescent.simulate_segment(individuals, length, population_size, seeds)
        if ts.num_sites >= budget:
            return length, seeds, ts
        if length >= max_length:
            break
        length = min(2 * length, max_length)
    raise UsageError(f"too many variants for the coalescent genome: a {length:,} bp segment has {ts.num_sites} "
                     f"sites, {budget} needed (use fewer --variants or --genotypes blocks)")


def place_segments(sizes: list[int], individuals: int, rng: np.random.Generator) -> list[Block]:
    """Coalescent blocks: one independent msprime segment of 100-300 kb per block, thinned to its size.

    Segments sit on the contigs like the founder blocks (one per equal slot of the contig, in
    the slot's first half at most), so they never overlap and are far apart.
    """
    blocks: list[Block] = []
    for chrom, b, slot_start, slot, first in _slots(sizes):
        ne = coalescent.POPULATION_SIZE * (coalescent.CHRX_POPULATION_FACTOR if chrom == "chrX" else 1.0)
        length = min(int(rng.integers(coalescent.SEGMENT_BP[0], coalescent.SEGMENT_BP[1] + 1)), slot // 2)
        start = slot_start + int(rng.integers(0, slot // 2))
        length, seeds, ts = _segment_sites(individuals, length, ne, sizes[b], slot // 2, rng)
        keep = coalescent.thin(ts.num_sites, sizes[b], rng)
        # msprime positions are 0-based within the segment; VCF positions are 1-based
        pos = start + 1 + coalescent.positions(ts)[keep]
        blocks.append(Block(chrom, pos, None, None, first, haplotypes=coalescent.haplotypes(ts, keep),
                            segment=(start + 1, start + length), simulated_sites=ts.num_sites, seeds=seeds))
    return blocks
