"""The simulated genome: haplotype blocks, causal SNPs, special sites and gene positions.

Everything here is drawn once per cohort from the ``layout`` stream, before any patient exists.
Coordinates are 1-based VCF positions on GRCh38-sized contigs (the sequence itself is not
simulated; REF/ALT are random real bases).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from phenoclip.data.simulate.config import SimulationConfig, rng_for

CHROM_LENGTHS = {"chr1": 248_956_422, "chr2": 242_193_529, "chrX": 156_040_895}
CHROMS = tuple(CHROM_LENGTHS)
#: chrX sites start past the pseudo-autosomal region PAR1 (ends at 2,781,479), so males are haploid there
CHRX_NONPAR_START = 5_000_000
CHRX_NONPAR_END = 150_000_000
BASES = np.array(list("ACGT"))
DISEASES = ("control", "neuro", "cardio")

N_RARE_BURDEN = 8      # rare variants in the burden gene
N_RARE_OTHER_GENES = 4
N_RARE_PER_OTHER = 4


def _span(chrom: str) -> tuple[int, int]:
    """Where sites and genes may go: 1 Mb from the contig ends; past PAR1 on chrX."""
    if chrom == "chrX":
        return CHRX_NONPAR_START, CHRX_NONPAR_END
    return 1_000_000, CHROM_LENGTHS[chrom] - 1_000_000


@dataclass
class Block:
    """One haplotype block: a few founder haplotypes copied (with rare mutations) into everyone."""

    chrom: str
    positions: np.ndarray          # (S,) int, sorted
    founders: np.ndarray           # (F, S) uint8 ALT indicators
    founder_freqs: np.ndarray      # (F,) sums to 1
    first_site: int = 0            # index of its first SNP among all block SNPs

    @property
    def alt_freqs(self) -> np.ndarray:
        """Population ALT frequency of each SNP (before mutation noise)."""
        return self.founder_freqs @ self.founders


@dataclass
class Gene:
    name: str
    chrom: str
    start: int                     # 0-based, BED
    end: int
    role: str = "null"             # eqtl | neuro_up | neuro_down | cardio_up | cardio_down | lesion | trait | null


@dataclass
class Layout:
    """The cohort-wide genome: blocks, causal SNPs, special sites, genes and their roles."""

    blocks: list[Block]
    snp_chrom: np.ndarray          # (S,) str, all block SNPs in block order
    snp_pos: np.ndarray            # (S,) int
    causal: list[dict]             # id-less description; ``snp`` indexes block SNPs
    multi: dict                    # the multi-allelic site
    genes: list[Gene]
    rare: list[dict]               # rare variants: chrom, pos, gene, burden (bool), base_freq
    burden_gene: str
    lesion_genes: list[str]
    eqtl: dict = field(default_factory=dict)   # gene -> causal index
    #: trait SNPs (trait, snp, block, chrom, pos, alt_freq, effect) and trait genes
    #: (gene -> trait, log_fold_per_sd), filled by :func:`traits.place`
    trait_snps: list = field(default_factory=list)
    trait_genes: dict = field(default_factory=dict)


def _block_sizes(n_snps: int, rng: np.random.Generator) -> list[int]:
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


def _best_subset(freqs: np.ndarray, target: float) -> np.ndarray:
    """The founder subset whose summed frequency is nearest ``target`` (a causal SNP's ALT carriers)."""
    best, best_err = None, np.inf
    idx = range(len(freqs))
    for k in range(1, len(freqs)):
        for sub in combinations(idx, k):
            err = abs(freqs[list(sub)].sum() - target)
            if err < best_err:
                best, best_err = sub, err
    out = np.zeros(len(freqs), dtype=np.uint8)
    out[list(best)] = 1
    return out


def _place_blocks(sizes: list[int], rng: np.random.Generator) -> list[Block]:
    # ~12 % of blocks on chrX (at least one), the rest split between chr1 and chr2 by length
    n = len(sizes)
    n_x = max(1, int(round(0.12 * n)))
    n_1 = (n - n_x + 1) // 2
    chroms = ["chr1"] * n_1 + ["chr2"] * (n - n_x - n_1) + ["chrX"] * n_x
    blocks: list[Block] = []
    first = 0
    for chrom in CHROMS:
        members = [i for i, c in enumerate(chroms) if c == chrom]
        lo, hi = _span(chrom)
        seg = (hi - lo) // len(members)
        for j, b in enumerate(members):
            size = sizes[b]
            # SNPs every 0.5-3 kb: a block spans tens of kb; blocks are megabases apart
            gaps = rng.integers(500, 3000, size)
            start = lo + j * seg + int(rng.integers(0, seg // 2))
            pos = start + np.cumsum(gaps)
            n_f = int(rng.integers(3, 7))
            freqs = rng.dirichlet(np.full(n_f, 1.5))
            blocks.append(Block(chrom, pos.astype(np.int64), _founder_matrix(n_f, size, rng), freqs, first))
            first += size
    return blocks


def _place_genes(cfg: SimulationConfig, causal: list[dict], snp_pos: np.ndarray,
                 rng: np.random.Generator) -> tuple[list[Gene], dict]:
    n = cfg.genes
    names = [f"G{i + 1:04d}" for i in range(n)]
    # roles are scattered over the gene names so that a gene's number says nothing about it
    order = rng.permutation(n)
    n_up = max(2, min(10, n // 20))
    n_down = max(1, n_up // 2)
    roles = (["eqtl"] * len(causal) + ["neuro_up"] * n_up + ["neuro_down"] * n_down
             + ["cardio_up"] * n_up + ["cardio_down"] * n_down + ["lesion"] * 3)
    role_of = {int(order[i]): r for i, r in enumerate(roles)}
    genes: list[Gene] = []
    eqtl: dict = {}
    eqtl_iter = iter(range(len(causal)))
    for g in range(n):
        role = role_of.get(g, "null")
        length = int(rng.integers(8_000, 60_000))
        if role == "eqtl":
            c = next(eqtl_iter)
            # a cis-eQTL: the gene body covers its causal SNP
            centre = int(snp_pos[causal[c]["snp"]])
            start = centre - int(rng.integers(length // 5, 4 * length // 5))
            chrom = causal[c]["chrom"]
            eqtl[names[g]] = c
        else:
            chrom = str(rng.choice(CHROMS, p=[0.45, 0.45, 0.10]))
            lo, hi = _span(chrom)
            start = int(rng.integers(lo, hi - length))
        genes.append(Gene(names[g], chrom, start, start + length, role))
    return genes, eqtl


def build_layout(cfg: SimulationConfig) -> Layout:
    """Draw the cohort's genome from the ``layout`` stream of ``cfg.seed``."""
    rng = rng_for(cfg, "layout")
    n_rare = N_RARE_BURDEN + N_RARE_OTHER_GENES * N_RARE_PER_OTHER
    n_block_snps = cfg.variants - n_rare - 1          # one multi-allelic site
    blocks = _place_blocks(_block_sizes(n_block_snps, rng), rng)
    snp_chrom = np.concatenate([np.full(len(b.positions), b.chrom) for b in blocks])
    snp_pos = np.concatenate([b.positions for b in blocks])

    # six causal SNPs, three per disease, each in its own autosomal block, common by construction
    autosomal = [i for i, b in enumerate(blocks) if b.chrom != "chrX"]
    chosen = rng.choice(autosomal, size=6, replace=False)
    causal = []
    for k, bi in enumerate(chosen):
        b = blocks[int(bi)]
        s = int(rng.integers(1, len(b.positions) - 1)) if len(b.positions) > 2 else 0
        b.founders[:, s] = _best_subset(b.founder_freqs, float(rng.uniform(0.3, 0.5)))
        disease = DISEASES[1 + k // 3]
        causal.append({"disease": disease, "effect": cfg.causal_effects[k % 3], "block": int(bi),
                       "snp": b.first_site + s, "chrom": b.chrom, "pos": int(b.positions[s]),
                       "alt_freq": float(b.alt_freqs[s])})

    # the multi-allelic site sits alone in the gap after the first chr2 block
    b2 = next(b for b in blocks if b.chrom == "chr2")
    multi = {"chrom": "chr2", "pos": int(b2.positions[-1]) + 250_000, "ref": "G", "alt": ["A", "T"],
             "freqs": [0.6, 0.28, 0.12]}

    genes, eqtl = _place_genes(cfg, causal, snp_pos, rng)
    # rare variants go into autosomal genes without an expression role
    null_auto = [g for g in genes if g.role == "null" and g.chrom != "chrX"]
    if len(null_auto) < 1 + N_RARE_OTHER_GENES:
        null_auto = [g for g in genes if g.role != "eqtl" and g.chrom != "chrX"]
    picks = rng.choice(len(null_auto), size=1 + N_RARE_OTHER_GENES, replace=False)
    taken = {(c, int(p)) for c, p in zip(snp_chrom, snp_pos)} | {(multi["chrom"], multi["pos"])}
    rare = []
    for j, gi in enumerate(picks):
        g = null_auto[int(gi)]
        count = N_RARE_BURDEN if j == 0 else N_RARE_PER_OTHER
        for _ in range(count):
            pos = int(rng.integers(g.start + 1, g.end + 1))
            while (g.chrom, pos) in taken:
                pos += 1
            taken.add((g.chrom, pos))
            rare.append({"chrom": g.chrom, "pos": pos, "gene": g.name, "burden": j == 0,
                         "base_freq": float(rng.uniform(0.002, 0.006))})
    return Layout(blocks, snp_chrom, snp_pos, causal, multi, genes, rare, burden_gene=null_auto[int(picks[0])].name,
                  lesion_genes=[g.name for g in genes if g.role == "lesion"], eqtl=eqtl)
