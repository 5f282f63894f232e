"""The eQTL screen (phenoclip.eval.eqtl_screen): each gene's strongest variant past a Bonferroni bound."""

import json
from pathlib import Path

import h5py
import numpy as np

from phenoclip.eval import eqtl_screen
from phenoclip.eval.eqtl_screen import critical_r, eqtl_variants, screen_cohort

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"


def test_planted_eqtls_are_kept_strongest_first_and_noise_is_not(monkeypatch):
    rng = np.random.default_rng(0)
    n, v, g = 300, 500, 40
    d = rng.binomial(2, 0.4, (n, v)).astype(float)
    e = rng.normal(size=(n, g))
    e[:, 3] += 0.9 * (d[:, 17] - 0.8)          # strong
    e[:, 5] += 0.5 * (d[:, 250] - 0.8)         # weaker
    e[:, 6] += 0.9 * (d[:, 17] - 0.8)          # the same variant again: kept once
    d[rng.random((n, v)) < 0.01] = np.nan       # missing calls add nothing
    keep = eqtl_variants(d, e)
    assert keep.tolist() == [17, 250]
    # blockwise over variants: the same answer whatever the block size
    monkeypatch.setattr(eqtl_screen, "CHUNK", 7)
    assert eqtl_variants(d, e).tolist() == [17, 250]
    assert eqtl_variants(d, e, max_variants=1).tolist() == [17]
    # no association at all: the Bonferroni bound keeps nothing
    assert eqtl_variants(d, rng.normal(size=(n, g))).size == 0


def test_critical_correlation_is_the_t_tests_bound():
    from scipy import stats

    r = critical_r(100, 1000)
    t = r * np.sqrt(98 / (1 - r * r))
    assert np.isclose(2 * stats.t.sf(t, 98), 0.05 / 1000)
    assert critical_r(3, 10) == np.inf


def test_the_screen_finds_every_causal_variants_block_on_the_sample(sample_stores):
    """data/sample plants six causal SNPs, each a cis-eQTL of its own gene (truth.json): on the patients
    with genotypes and expression the screen keeps a variant of each one's haplotype block, and few others."""
    from phenoclip.data.multimodal import CohortStores
    from phenoclip.eval.raw_features import classic_features, on_patients

    stores = CohortStores([str(sample_stores["gene"]), str(sample_stores["expr"])])
    both = [s for s in stores.samples if stores.present("gene", [s])[0] and stores.present("expr", [s])[0]]
    ids, d = classic_features(stores, "gene", both, None, impute_dosage=False)
    e = on_patients(*classic_features(stores, "expr", both, None), ids)[0]
    keep = eqtl_variants(d, e)
    with h5py.File(sample_stores["gene"]) as h:
        chrom = [c.decode() for c in h["variants/chrom"][:]]
        pos = h["variants/pos"][:]
    truth = json.loads((SAMPLE / "truth.json").read_text())["variants"]
    for c in truth["causal_snps"]:
        block = truth["blocks"][c["block"]]
        assert any(chrom[i] == block["chrom"] and block["start"] <= pos[i] <= block["end"] for i in keep), c["id"]
    assert 6 <= len(keep) <= 16, len(keep)
    # what the suite and finetune call: the same screen from the stores
    assert screen_cohort(stores, stores.samples).tolist() == keep.tolist()


def test_a_screen_past_its_dosage_cap_reads_a_seeded_subset_of_patients(sample_stores, monkeypatch):
    from phenoclip.data.multimodal import CohortStores

    stores = CohortStores([str(sample_stores["gene"]), str(sample_stores["expr"])])
    monkeypatch.setattr(eqtl_screen, "MAX_CELLS", 2001 * 60)    # 60 of the 164 patients
    read = []
    original = eqtl_screen.eqtl_variants
    monkeypatch.setattr(eqtl_screen, "eqtl_variants", lambda d, e: read.append(d.shape) or original(d, e))
    first = screen_cohort(stores, stores.samples)
    assert read == [(60, 2001)]
    assert screen_cohort(stores, stores.samples).tolist() == first.tolist()   # seeded: the same subset
    assert screen_cohort(CohortStores([str(sample_stores["gene"])]), stores.samples).size == 0  # no expression
