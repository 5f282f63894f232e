"""The simulated genome: haplotype blocks, causal SNPs, special sites and gene positions.

Everything here is drawn once per cohort from the ``layout`` stream, before any patient exists.
Two genotype models fill the blocks (``SimulationSettings.genotypes``): ``blocks`` (founder
haplotypes copied into everyone) and ``coalescent`` (each block an independent msprime segment
holding every patient's haplotypes, see :mod:`coalescent`); :mod:`blocks` places and fills
them. Coordinates are 1-based VCF positions on the GRCh38-sized contigs of :mod:`contigs` (the
sequence itself is not simulated; REF/ALT are random real bases).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from phenoclip.data.simulate import coalescent
from phenoclip.data.simulate.blocks import Block, block_sizes, place_blocks, place_segments
from phenoclip.data.simulate.contigs import CHROMS, span
from phenoclip.data.simulate.settings import SimulationSettings, rng_for

BASES = np.array(list("ACGT"))
DISEASES = ("control", "neuro", "cardio")

N_RARE_BURDEN = 8      # rare variants in the burden gene
N_RARE_OTHER_GENES = 4
N_RARE_PER_OTHER = 4


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


def _causal_founder_blocks(blocks: list[Block], cfg: SimulationSettings, rng: np.random.Generator) -> list[dict]:
    """Blocks model: six causal SNPs, three per disease, each in its own autosomal block, common by
    construction (its founder column is rewritten so the ALT carriers sum to 0.3-0.5)."""
    autosomal = [i for i, b in enumerate(blocks) if b.chrom != "chrX"]
    chosen = rng.choice(autosomal, size=6, replace=False)
    causal = []
    for k, bi in enumerate(chosen):
        b = blocks[int(bi)]
        s = int(rng.integers(1, len(b.positions) - 1)) if len(b.positions) > 2 else 0
        b.founders[:, s] = _best_subset(b.founder_freqs, float(rng.uniform(0.3, 0.5)))
        causal.append(_causal_entry(k, int(bi), b, s, cfg))
    return causal


def _causal_common_sites(blocks: list[Block], cfg: SimulationSettings, rng: np.random.Generator) -> list[dict]:
    """Coalescent model: six causal SNPs, each in its own autosomal segment, picked among the segment's
    common sites (minor allele frequency >= :data:`coalescent.MIN_CAUSAL_MAF`).

    Segments without a common site are passed over. Only a genome too small to have six such
    segments falls back on the most common site of other autosomal segments. The ALT (derived)
    allele may be the major one: the liabilities are centred on 2 x ALT frequency either way.
    """
    def maf(b: Block) -> np.ndarray:
        f = b.alt_freqs
        return np.minimum(f, 1.0 - f)

    autosomal = [i for i, b in enumerate(blocks) if b.chrom != "chrX"]
    with_common = [i for i in autosomal if maf(blocks[i]).max() >= coalescent.MIN_CAUSAL_MAF]
    chosen = [int(i) for i in rng.choice(with_common, size=min(6, len(with_common)), replace=False)]
    rest = sorted((i for i in autosomal if i not in chosen), key=lambda i: -maf(blocks[i]).max())
    chosen += rest[:6 - len(chosen)]
    causal = []
    for k, bi in enumerate(chosen):
        b = blocks[bi]
        common = np.flatnonzero(maf(b) >= coalescent.MIN_CAUSAL_MAF)
        s = int(rng.choice(common)) if len(common) else int(np.argmax(maf(b)))
        causal.append(_causal_entry(k, bi, b, s, cfg))
    return causal


def _causal_entry(k: int, bi: int, b: Block, s: int, cfg: SimulationSettings) -> dict:
    """Causal SNP ``k`` (three per disease) at site ``s`` of block ``bi``."""
    return {"disease": DISEASES[1 + k // 3], "effect": cfg.causal_effects[k % 3], "block": bi,
            "snp": b.first_site + s, "chrom": b.chrom, "pos": int(b.positions[s]), "alt_freq": float(b.alt_freqs[s])}


def _multi_pos(blocks: list[Block], coalescent_model: bool) -> int:
    """Where the multi-allelic site goes: 250 kb after the first chr2 block.

    Coalescent segments can sit closer than that, so there the site stays at most halfway to
    the next chr2 segment (alone in the gap, as with founder blocks).
    """
    chr2 = [b for b in blocks if b.chrom == "chr2"]
    pos = int(chr2[0].positions[-1]) + 250_000
    if coalescent_model and len(chr2) > 1:
        pos = min(pos, (int(chr2[0].segment[1]) + int(chr2[1].segment[0])) // 2)
    return pos


def _place_genes(cfg: SimulationSettings, causal: list[dict], snp_pos: np.ndarray,
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
            lo, hi = span(chrom)
            start = int(rng.integers(lo, hi - length))
        genes.append(Gene(names[g], chrom, start, start + length, role))
    return genes, eqtl


def build_layout(cfg: SimulationSettings) -> Layout:
    """Draw the cohort's genome from the ``layout`` stream of ``cfg.seed``."""
    rng = rng_for(cfg, "layout")
    n_rare = N_RARE_BURDEN + N_RARE_OTHER_GENES * N_RARE_PER_OTHER
    n_block_snps = cfg.variants - n_rare - 1          # one multi-allelic site
    coalescent_model = cfg.genotypes == "coalescent"
    sizes = block_sizes(n_block_snps, rng)
    blocks = place_segments(sizes, cfg.patients, rng) if coalescent_model else place_blocks(sizes, rng)
    snp_chrom = np.concatenate([np.full(len(b.positions), b.chrom) for b in blocks])
    snp_pos = np.concatenate([b.positions for b in blocks])

    # six causal SNPs, three per disease, each in its own autosomal block, common
    causal = (_causal_common_sites if coalescent_model else _causal_founder_blocks)(blocks, cfg, rng)

    # the multi-allelic site sits alone in the gap after the first chr2 block
    multi = {"chrom": "chr2", "pos": _multi_pos(blocks, coalescent_model), "ref": "G", "alt": ["A", "T"],
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
