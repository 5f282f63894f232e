"""Genotypes from the coalescent with recombination (``phenoclip simulate --genotypes coalescent``).

Each genome segment is simulated on its own with msprime (``sim_ancestry`` then
``sim_mutations``) for every patient at once, with human-like parameters. The result carries
what the founder-block model lacks: linkage disequilibrium that decays with distance inside a
segment and a neutral site frequency spectrum (the share of sites with i copies of the derived
allele falls as 1/i). Segments are independent of each other, so there is no LD between them.

msprime is imported inside :func:`simulate_segment` only: ``phenoclip --help`` must stay light.
"""

from __future__ import annotations

import importlib.metadata

import numpy as np

#: diploid effective population size (the usual human long-term value)
POPULATION_SIZE = 10_000
#: chrX has three copies per two autosomal pairs in a population of equal sexes, so Ne_X = 3/4 Ne
CHRX_POPULATION_FACTOR = 0.75
RECOMBINATION_RATE = 1e-8      # per bp and generation (about 1 cM per Mb)
MUTATION_RATE = 1.25e-8        # per bp and generation
#: segment length in bp, drawn uniformly; long enough for pairs 50-150 kb apart (LD decay is visible)
SEGMENT_BP = (100_000, 300_000)
#: causal disease SNPs are chosen among a segment's sites with a minor allele frequency this high
MIN_CAUSAL_MAF = 0.2
#: how often a segment too short for its SNP budget is simulated again at twice the length
MAX_GROWTH = 4


def parameters() -> dict:
    """The model's settings for truth.json and the cohort README."""
    try:
        version = importlib.metadata.version("msprime")
    except importlib.metadata.PackageNotFoundError:   # pragma: no cover - msprime is a dependency
        version = "unknown"
    return {
        "name": "coalescent",
        "simulator": f"msprime {version} (sim_ancestry + sim_mutations)",
        "ancestry_model": "hudson (coalescent with recombination), one population of constant size",
        "population_size_diploid": POPULATION_SIZE,
        "population_size_chrX": int(POPULATION_SIZE * CHRX_POPULATION_FACTOR),
        "recombination_rate_per_bp": RECOMBINATION_RATE,
        "mutation_rate_per_bp": MUTATION_RATE,
        "mutation_model": "binary (0 = ancestral = REF, 1 = derived = ALT), discrete genome",
        "segment_length_bp": list(SEGMENT_BP),
        "site_selection": "sites hit by exactly one mutation, thinned uniformly at random (not by frequency) "
                          "to each segment's SNP budget, so the site frequency spectrum stays neutral",
        "haplotypes": "patient i carries the segment's sample haplotypes 2i and 2i+1; on chrX males keep the "
                      "first only",
        "causal_snps": f"a site with minor allele frequency >= {MIN_CAUSAL_MAF} in its segment",
        "causal_min_maf": MIN_CAUSAL_MAF,
        "seeds": "per segment, drawn from the layout stream of --seed (random_seed of ancestry and of mutations)",
    }


def simulate_segment(individuals: int, length: int, population_size: float, seeds: tuple[int, int]):
    """One segment as a ``tskit.TreeSequence`` of ``2 x individuals`` sample haplotypes.

    Only sites hit by exactly one mutation are kept. Under the binary model a second hit is a
    back or parallel mutation: the site stays biallelic, but its ALT count no longer counts the
    descendants of one branch, which is what the neutral spectrum describes. With a discrete
    genome each position holds at most one site, so positions never repeat.
    """
    # imported here: only --genotypes coalescent pays for msprime
    import msprime

    ts = msprime.sim_ancestry(samples=individuals, ploidy=2, population_size=population_size,
                              recombination_rate=RECOMBINATION_RATE, sequence_length=length,
                              discrete_genome=True, random_seed=seeds[0])
    ts = msprime.sim_mutations(ts, rate=MUTATION_RATE, model=msprime.BinaryMutationModel(),
                               discrete_genome=True, random_seed=seeds[1])
    hits = np.bincount(ts.tables.mutations.site, minlength=ts.num_sites)
    drop = np.flatnonzero(hits != 1)
    return ts.delete_sites(drop) if len(drop) else ts


def positions(ts) -> np.ndarray:
    """0-based positions of a segment's sites."""
    return ts.tables.sites.position.astype(np.int64)


def haplotypes(ts, keep: np.ndarray) -> np.ndarray:
    """ALT indicators ``(2N, len(keep))`` uint8 of sites ``keep`` (sorted indices); sample nodes
    2i and 2i + 1 are the two haplotypes of individual i."""
    drop = np.setdiff1d(np.arange(ts.num_sites), keep)
    # decode only the kept sites: thinning keeps a few percent of them
    return ts.delete_sites(drop).genotype_matrix().T.astype(np.uint8)


def thin(n_sites: int, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``budget`` sites picked uniformly among ``n_sites``.

    Uniformly, not by frequency: a random subset of sites has the same frequency spectrum in
    expectation as all of them, so the written cohort keeps the neutral spectrum.
    """
    return np.sort(rng.choice(n_sites, size=budget, replace=False))


def draw_seeds(rng: np.random.Generator) -> tuple[int, int]:
    """Random seeds of one segment's ancestry and mutations (msprime wants 1 <= seed < 2**32)."""
    a, b = rng.integers(1, 2**32 - 1, size=2)
    return int(a), int(b)
