"""``phenoclip simulate --genotypes coalescent``: msprime genotypes with real LD decay and a neutral spectrum.

The statistics are measured on what users get: the written VCF read back by ``phenoclip
preprocess variants`` (so patients without the variants modality, missing calls and half-calls
are all in). The tests run seed 11; the tolerances come from the spread over 14 seeds (0-13) of
the same 300 x 2,000 cohort, quoted at each assertion.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os

import numpy as np
import pytest

from conftest import SAMPLE
from phenoclip.data.simulate import SimulationSettings, simulate_cohort
from phenoclip.errors import UsageError

pytest.importorskip("msprime")

PATIENTS, VARIANTS, SEED = 300, 2000, 11
ARGS = ["--patients", PATIENTS, "--variants", VARIANTS, "--seed", SEED, "--genes", 40, "--volume-shape", "16,16,16",
        "--signal-seconds", 2, "--signal-rate", 50]
#: the neutral spectrum is compared in bins of the derived (ALT) allele count: 1, 2, 3-5, 6-20, 21-60, 61-180, 181+
BIN_STARTS = np.array([1, 2, 3, 6, 21, 61, 181])


def cli(*args) -> tuple[int, list[str]]:
    """``phenoclip ARGS`` in this process: (exit code, non-empty stderr lines)."""
    from phenoclip import progress
    from phenoclip.cli.main import main

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
            main(["-q", *map(str, args)])
    finally:
        progress.QUIET = False
    return exc.value.code, [line for line in err.getvalue().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """One coalescent cohort through the CLI, its truth.json and its VCF as ``preprocess variants`` reads it."""
    from phenoclip.store_read import open_store

    d = tmp_path_factory.mktemp("coalescent")
    rc, err = cli("simulate", "--out", d / "cohort", *ARGS, "--genotypes", "coalescent")
    assert rc == 0, err
    rc, err = cli("preprocess", "variants", "--vcf", d / "cohort" / "variants.vcf.gz", "--out", d / "gene.h5")
    assert rc == 0, err
    truth = json.loads((d / "cohort" / "truth.json").read_text())
    with open_store(d / "gene.h5") as s:
        store = {"ids": np.array(s.strings("variants/id")), "chrom": np.array(s.strings("variants/chrom")),
                 "pos": s["variants/pos"][...], "dosage": s["dosage"][...].astype(float)}
    store["dosage"][store["dosage"] < 0] = np.nan
    return d, truth, store


def _block_columns(truth: dict, store: dict) -> list[np.ndarray]:
    """Store columns of each autosomal block's SNPs (the multi-allelic site and rare variants left out)."""
    special = {truth["variants"]["multiallelic_site"]["id"]} | {r["id"] for r in truth["variants"]["rare_variants"]}
    plain = ~np.isin(store["ids"], list(special))
    out = []
    for b in truth["variants"]["blocks"]:
        if b["chrom"] != "chrX":
            inside = (store["chrom"] == b["chrom"]) & (store["pos"] >= b["start"]) & (store["pos"] <= b["end"])
            out.append(np.flatnonzero(inside & plain))
    return out


def _standardised(dosage: np.ndarray) -> np.ndarray:
    """Columns centred and scaled, missing calls at the column mean (0.5 % of calls: r2 barely moves)."""
    mean = np.nanmean(dosage, 0)
    x = np.where(np.isnan(dosage), mean, dosage) - mean
    return x / np.maximum(x.std(0), 1e-12)


def _ld(truth: dict, store: dict) -> tuple[float, float, float]:
    """Mean r2 of common-SNP pairs (MAF >= 5 %) < 5 kb apart and 50-150 kb apart in a block, and between blocks.

    Common SNPs only, as LD-decay curves are drawn: r2 of a rare and a common SNP is near 0 at
    any distance, and the rare sites (a third of a neutral spectrum) would drown the decay.
    """
    dosage, pos = store["dosage"], store["pos"]
    freq = np.nanmean(dosage, 0) / 2
    common = np.minimum(freq, 1 - freq) >= 0.05
    blocks = [cols[common[cols]] for cols in _block_columns(truth, store)]
    near, far = [], []
    for cols in blocks:
        z = _standardised(dosage[:, cols])
        r2 = (z.T @ z / len(z)) ** 2
        dist = np.abs(pos[cols][:, None] - pos[cols][None, :])
        upper = np.triu(np.ones_like(r2, dtype=bool), 1)
        near.append(r2[upper & (dist < 5_000)])
        far.append(r2[upper & (dist >= 50_000) & (dist <= 150_000)])
    rng = np.random.default_rng(0)
    between = []
    while len(between) < 2000:
        a, b = rng.choice(len(blocks), 2, replace=False)
        x, y = dosage[:, rng.choice(blocks[a])], dosage[:, rng.choice(blocks[b])]
        between.append(float(np.corrcoef(_standardised(np.column_stack([x, y])).T)[0, 1] ** 2))
    return float(np.concatenate(near).mean()), float(np.concatenate(far).mean()), float(np.mean(between))


def _spectrum(alt: np.ndarray, called: np.ndarray, folded: bool) -> tuple[np.ndarray, np.ndarray]:
    """Observed and neutral-expected share of sites per count bin (:data:`BIN_STARTS`).

    Each site is compared with the neutral spectrum of its own sample size ``n`` (haplotypes
    called there): P(derived count i) = (1/i) / sum_{j<n} 1/j. A random subset of a neutral sample
    is itself neutral among its segregating sites, so patients without genotypes and missing
    calls do not bias the comparison. Folded: the minor allele count, P(j) from i = j and n - j.
    """
    observed, expected = np.zeros(len(BIN_STARTS)), np.zeros(len(BIN_STARTS))
    for n in np.unique(called):
        at = called == n
        i = np.arange(1, n)
        p = (1 / i) / np.sum(1 / i)
        key = np.minimum(i, n - i) if folded else i
        expected += at.sum() * np.bincount(np.searchsorted(BIN_STARTS, key, "right") - 1, p, len(BIN_STARTS))
        k = np.minimum(alt[at], n - alt[at]) if folded else alt[at]
        observed += np.bincount(np.searchsorted(BIN_STARTS, k, "right") - 1, minlength=len(BIN_STARTS))
    return observed / len(alt), expected / len(alt)


def _block_site_counts(truth: dict, store: dict) -> tuple[np.ndarray, np.ndarray]:
    """(ALT count, called haplotypes) of every autosomal block SNP still segregating in the written cohort."""
    cols = np.concatenate(_block_columns(truth, store))
    d = store["dosage"][:, cols]
    alt, called = np.nansum(d, 0).astype(int), 2 * (~np.isnan(d)).sum(0)
    seg = (alt > 0) & (alt < called)
    return alt[seg], called[seg]


def _distance(observed: np.ndarray, expected: np.ndarray, sites: int) -> tuple[float, float]:
    """Total variation distance and Pearson chi-square of the binned spectra."""
    return 0.5 * float(np.abs(observed - expected).sum()), sites * float(((observed - expected) ** 2 / expected).sum())


# ---------------------------------------------------------------- linkage disequilibrium

def test_ld_decays_with_distance_and_vanishes_between_segments(cohort):
    _, truth, store = cohort
    near, far, between = _ld(truth, store)
    # seed 11: < 5 kb 0.268, 50-150 kb 0.033, between segments 0.0038 (the 1/N sampling noise of r2,
    # N = 274 genotyped). Over 14 seeds: 0.25-0.32, 0.030-0.036 and 0.0035-0.0039. For scale, the
    # founder-block model has ~0.4 at both distances (no decay).
    assert near > 0.2
    assert far < 0.06
    assert near > 4 * far
    assert between < 0.01


# ---------------------------------------------------------------- site frequency spectrum

def test_site_frequency_spectrum_is_neutral(cohort):
    _, truth, store = cohort
    alt, called = _block_site_counts(truth, store)
    assert len(alt) > 1500
    obs_u, exp_u = _spectrum(alt, called, folded=False)
    obs_f, exp_f = _spectrum(alt, called, folded=True)
    tv_u, chi_u = _distance(obs_u, exp_u, len(alt))
    tv_f, chi_f = _distance(obs_f, exp_f, len(alt))
    # expected shares of the bins (n ~ 545 haplotypes): 0.145 0.073 0.114 0.191 0.157 0.159 0.160,
    # a third of the sites at a derived count <= 5 (below 1 %).
    # seed 11: singletons 0.157, counts <= 5 0.346 (expected 0.332); total variation distance 0.023
    # unfolded / 0.031 folded, chi-square (6 df) 4.9 / 10.1.
    # Over 14 seeds TV 0.013-0.047 and chi-square 2.0-23.5: sites of one segment share a genealogy,
    # so the spectrum scatters more than multinomial sampling (6-df chi-square, p = 0.05 at 12.6);
    # the bounds below leave room over that spread. The blocks model scores TV 0.51-0.59 and
    # chi-square 2,600-3,500 on the same seeds (next test).
    assert abs(obs_u[0] - exp_u[0]) < 0.04                     # singletons
    assert abs(obs_u[:3].sum() - exp_u[:3].sum()) < 0.06       # derived count <= 5
    assert tv_u < 0.08 and tv_f < 0.08
    assert chi_u < 60 and chi_f < 60


def test_blocks_model_fails_the_neutral_spectrum():
    """The same check on the founder-block model (what it must not pass): almost no rare sites."""
    from phenoclip.data.simulate.cohort import draw_cohort

    c = draw_cohort(SimulationSettings(patients=PATIENTS, variants=VARIANTS, seed=SEED, genes=40))
    t = c.variants
    cols = np.flatnonzero((t.kind == "block") & (t.chrom != "chrX"))
    calls = t.calls[c.has("variants")][:, :, cols]
    alt, called = (calls > 0).sum((0, 1)), (calls >= 0).sum((0, 1))
    seg = (alt > 0) & (alt < called)
    obs, exp = _spectrum(alt[seg], called[seg], folded=True)
    tv, chi = _distance(obs, exp, int(seg.sum()))
    # seed 11: share of minor count <= 5 0.009 against 0.33 neutral; TV 0.58, chi-square 3,392
    # (14 seeds: 0.000-0.015, 0.51-0.59, 2,600-3,500)
    assert obs[:3].sum() < 0.05
    assert tv > 0.3 and chi > 500


# ---------------------------------------------------------------- the command end to end

def test_vcf_reads_back_with_common_causal_snps(cohort):
    d, truth, store = cohort
    v = truth["variants"]
    with gzip.open(d / "cohort" / "variants.vcf.gz", "rt") as fh:
        sites = [line.split("\t", 3)[:3] for line in fh if not line.startswith("#")]
    assert len(sites) == v["sites"] == VARIANTS
    assert len(set(store["ids"])) == VARIANTS                   # the multi-allelic site gives two columns
    assert {s[0] for s in sites} == {"chr1", "chr2", "chrX"}
    positions = [(s[0], int(s[1])) for s in sites]
    assert len(set(positions)) == len(positions)
    # truth and README say which model made the genotypes
    model = v["genotype_model"]
    assert model["name"] == "coalescent" and model["simulator"].startswith("msprime")
    assert model["population_size_diploid"] == 10_000 and model["recombination_rate_per_bp"] == 1e-8
    assert truth["config"]["genotypes"] == "coalescent" and truth["command"].endswith("--genotypes coalescent")
    assert "mutation_rate_per_haplotype" not in v
    readme = (d / "cohort" / "README.md").read_text()
    assert "msprime" in readme and "founder haplotypes" not in readme
    # blocks are segments: their SNPs inside the simulated span, budgets met, no founders
    assert sum(b["snps"] for b in v["blocks"]) == VARIANTS - 1 - len(v["rare_variants"])
    for b in v["blocks"]:
        assert b["segment"][0] <= b["start"] <= b["end"] <= b["segment"][1]
        assert b["simulated_sites"] >= b["snps"] and "founder_freqs" not in b
    # causal SNPs: written, one per autosomal segment, common in the truth and in the written cohort
    col = {x: i for i, x in enumerate(store["ids"])}
    causal = v["causal_snps"]
    assert len(causal) == 6 and len({c["block"] for c in causal}) == 6
    for c in causal:
        assert c["chrom"] != "chrX" and min(c["alt_freq"], 1 - c["alt_freq"]) >= 0.2
        f = np.nanmean(store["dosage"][:, col[c["id"]]]) / 2
        assert min(f, 1 - f) >= 0.15, c
    for z in truth["traits"]["snps"]:
        assert 0.15 <= z["alt_freq"] <= 0.85


def test_same_seed_same_files(cohort, tmp_path):
    d, _, _ = cohort
    rc, err = cli("simulate", "--out", tmp_path / "again", *ARGS, "--genotypes", "coalescent")
    assert rc == 0, err
    first, again = d / "cohort", tmp_path / "again"
    names = sorted(os.path.relpath(os.path.join(r, f), first) for r, _, fs in os.walk(first) for f in fs)
    assert names == sorted(os.path.relpath(os.path.join(r, f), again) for r, _, fs in os.walk(again) for f in fs)
    for name in names:
        if name.endswith(".log"):
            continue        # the run log has the clock
        if name == "README.md":     # its regenerate command names the output folder
            assert ((first / name).read_text().replace(str(first), "OUT")
                    == (again / name).read_text().replace(str(again), "OUT"))
            continue
        read = (lambda p: gzip.open(p).read()) if name.endswith((".gz", ".tbi")) else (lambda p: p.read_bytes())
        assert read(first / name) == read(again / name), name


def test_other_seed_other_genome():
    from phenoclip.data.simulate.genome import build_layout

    cfg = dict(patients=20, variants=300, genes=20, genotypes="coalescent")
    a, b = build_layout(SimulationSettings(seed=1, **cfg)), build_layout(SimulationSettings(seed=2, **cfg))
    assert not np.array_equal(a.snp_pos, b.snp_pos)
    assert [x.seeds for x in a.blocks] != [x.seeds for x in b.blocks]


def test_short_segments_grow_and_causal_snps_fall_back(monkeypatch):
    """A segment short of sites is simulated again, longer; a genome without six segments holding a
    common enough site still gets six causal SNPs (the most common site of the other segments)."""
    from phenoclip.data.simulate import coalescent
    from phenoclip.data.simulate.genome import build_layout

    cfg = SimulationSettings(patients=20, variants=300, genes=20, seed=3, genotypes="coalescent")
    monkeypatch.setattr(coalescent, "SEGMENT_BP", (5_000, 5_000))     # ~11 sites for budgets of ~34
    lay = build_layout(cfg)
    assert all(b.segment[1] - b.segment[0] + 1 > 5_000 for b in lay.blocks)
    assert all(b.simulated_sites >= len(b.positions) for b in lay.blocks)
    monkeypatch.undo()
    monkeypatch.setattr(coalescent, "MIN_CAUSAL_MAF", 0.49)          # (almost) no segment qualifies
    lay = build_layout(cfg)
    assert len(lay.causal) == 6 and len({c["block"] for c in lay.causal}) == 6
    assert all(lay.blocks[c["block"]].chrom != "chrX" for c in lay.causal)


def test_unknown_genotype_model_is_refused(tmp_path):
    rc, err = cli("simulate", "--out", tmp_path / "x", "--genotypes", "founders")
    assert rc == 2 and len(err) == 1, err
    assert "--genotypes" in err[0] and "blocks or coalescent" in err[0] and "founders" in err[0]
    assert not (tmp_path / "x").exists()
    with pytest.raises(UsageError, match="genotype model"):
        SimulationSettings(genotypes="founders")


# ---------------------------------------------------------------- the default stays as published

@pytest.mark.skipif(not (SAMPLE / "truth.json").is_file(), reason="data/sample not present")
def test_blocks_model_still_reproduces_data_sample(tmp_path):
    """The default model regenerates data/sample exactly (published numbers are made from it)."""
    truth = json.loads((SAMPLE / "truth.json").read_text())
    assert "genotypes" not in truth["config"]
    cfg = SimulationSettings(**truth["config"])
    assert cfg.genotypes == "blocks"
    simulate_cohort(tmp_path / "sample", cfg)
    for name in ("truth.json", "labels.tsv", "genes.bed", "pgs/PGS_SIM001.txt", "phenotypes/hpo.tsv"):
        assert (tmp_path / "sample" / name).read_bytes() == (SAMPLE / name).read_bytes(), name
    for name in ("variants.vcf.gz", "expression.tsv.gz"):
        assert gzip.open(tmp_path / "sample" / name).read() == gzip.open(SAMPLE / name).read(), name
