"""Per-patient phased genotypes over the simulated genome.

Calls are int8 arrays ``(N, 2, M)`` of allele indices per haplotype: 0 = REF, 1.. = ALT,
:data:`MISSING` for a missing allele and :data:`ABSENT` for the second allele of a haploid call
(males on chrX outside the pseudo-autosomal region).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from phenoclip.data.simulate.contigs import CHROMS
from phenoclip.data.simulate.genome import BASES, Layout

MISSING = -1
ABSENT = -2
MUTATION_RATE = 0.003   # blocks model, per haplotype and SNP: keeps within-block r2 high but below 1
BURDEN_FREQ_CARDIO = 0.05  # per-haplotype ALT frequency of each burden-gene variant in cardio patients


@dataclass
class VariantTable:
    """All sites in VCF order with their calls; ``kind`` is block | multi | rare."""

    chrom: np.ndarray
    pos: np.ndarray
    id: np.ndarray
    ref: np.ndarray
    alt: np.ndarray                # comma-separated ALT alleles
    kind: np.ndarray
    calls: np.ndarray              # (N, 2, M) int8
    block_snp: np.ndarray          # (M,) index among block SNPs, -1 for other sites

    def index_of_block_snp(self, s: int) -> int:
        """Row of block SNP ``s`` in this table."""
        return int(np.flatnonzero(self.block_snp == s)[0])


def draw_block_haplotypes(layout: Layout, male: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Haplotypes of every block SNP, ``(N, 2, S)`` int8.

    Blocks model: each haplotype in a block is a copy of one founder (picked by the founder
    frequencies) with rare mutations, which gives strong LD within a block and none between
    blocks. Coalescent model: the segment's simulated haplotypes, as they are (no random draw
    here). On chrX males keep only their first haplotype.
    """
    n = len(male)
    parts = []
    for b in layout.blocks:
        if b.haplotypes is not None:
            if b.haplotypes.shape[0] != 2 * n:
                raise ValueError(f"a coalescent block holds {b.haplotypes.shape[0]} haplotypes, not 2 x {n} patients")
            h = b.haplotypes.reshape(n, 2, -1).astype(np.int8)   # rows 2i, 2i + 1 -> patient i
        else:
            pick = rng.choice(len(b.founder_freqs), size=(n, 2), p=b.founder_freqs)
            h = b.founders[pick].astype(np.int8)                     # (N, 2, S_b)
            flip = rng.random(h.shape) < MUTATION_RATE
            h = np.where(flip, 1 - h, h).astype(np.int8)
        if b.chrom == "chrX":
            h[male, 1, :] = ABSENT
        parts.append(h)
    return np.concatenate(parts, axis=2)


def dosage(haps: np.ndarray) -> np.ndarray:
    """ALT allele count per patient and site from ``(N, 2, M)`` calls (absent/missing count 0)."""
    return np.clip(haps, 0, None).astype(np.int16).sum(1)


def draw_multi(layout: Layout, male: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The multi-allelic autosomal site, ``(N, 2, 1)``: allele 0, 1 or 2 per haplotype."""
    return rng.choice(3, size=(len(male), 2, 1), p=layout.multi["freqs"]).astype(np.int8)


def draw_rare(layout: Layout, disease: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rare variants in genes, ``(N, 2, R)``; the burden gene's variants are enriched in cardio."""
    n = len(disease)
    freq = np.array([r["base_freq"] for r in layout.rare])[None, :].repeat(n, 0)
    burden = np.array([r["burden"] for r in layout.rare])
    # drawn after the disease state: the burden is an association planted in cardio patients
    freq[np.ix_(disease == 2, burden)] = BURDEN_FREQ_CARDIO
    return (rng.random((n, 2, len(layout.rare))) < freq[:, None, :]).astype(np.int8)


def _random_alleles(m: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    ref = rng.integers(0, 4, m)
    alt = (ref + rng.integers(1, 4, m)) % 4
    return BASES[ref], BASES[alt]


def assemble(layout: Layout, block_haps: np.ndarray, multi: np.ndarray, rare: np.ndarray,
             missing_call_rate: float, half_call_rate: float, rng: np.random.Generator) -> VariantTable:
    """Sort all sites into VCF order, name them ``rs_simNNNNNN`` and blank some calls.

    ``.|.`` calls hit ``missing_call_rate`` of genotypes; half-calls (one allele unknown, as
    some callers emit) hit ``half_call_rate`` of diploid genotypes.
    """
    s, r = block_haps.shape[2], rare.shape[2]
    chrom = np.concatenate([layout.snp_chrom, [layout.multi["chrom"]], [v["chrom"] for v in layout.rare]])
    pos = np.concatenate([layout.snp_pos, [layout.multi["pos"]], [v["pos"] for v in layout.rare]]).astype(np.int64)
    kind = np.array(["block"] * s + ["multi"] + ["rare"] * r)
    ref, alt = _random_alleles(len(pos), rng)
    ref = ref.astype(object)
    alt = alt.astype(object)
    ref[s] = layout.multi["ref"]
    alt[s] = ",".join(layout.multi["alt"])
    calls = np.concatenate([block_haps, multi, rare], axis=2)
    block_snp = np.concatenate([np.arange(s), -np.ones(1 + r, dtype=int)])

    order = np.lexsort((pos, np.array([CHROMS.index(c) for c in chrom])))
    chrom, pos, kind, ref, alt, block_snp = (a[order] for a in (chrom, pos, kind, ref, alt, block_snp))
    calls = calls[:, :, order].copy()

    diploid = calls[:, 1, :] != ABSENT
    miss = rng.random(calls.shape[::2]) < missing_call_rate           # (N, M)
    calls[:, 0, :][miss] = MISSING
    calls[:, 1, :][miss & diploid] = MISSING
    half = (rng.random(calls.shape[::2]) < half_call_rate) & diploid & ~miss
    which = rng.integers(0, 2, calls.shape[::2])
    calls[:, 0, :][half & (which == 0)] = MISSING
    calls[:, 1, :][half & (which == 1)] = MISSING
    ids = np.array([f"rs_sim{i + 1:06d}" for i in range(len(pos))])
    return VariantTable(chrom, pos, ids, ref.astype(str), alt.astype(str), kind, calls, block_snp)
