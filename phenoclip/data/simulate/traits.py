"""Patient-specific, partly heritable latent traits shared across modalities.

Besides the 3-class disease state, every patient has ``K`` (up to 4) continuous traits::

    trait[i, k] = sqrt(h2) * genetic[i, k] + sqrt(1 - h2) * environment[i, k]

``genetic`` is additive over the trait's own common SNPs (``cfg.trait_snps`` of them, each in
its own haplotype block where the genome has enough blocks), ``effect x (ALT dosage - 2p)``
summed and divided by its population standard deviation ``sqrt(sum effect^2 2p(1-p))``;
``environment`` is N(0, 1). So a trait is about N(0, 1) and its SNPs explain ``h2`` of it.

Traits are independent of the disease state: they neither enter the disease liabilities nor
severity, and the trait SNPs sit outside the causal SNPs' blocks. What each trait drives:

====  ===============  ==========================================================================
T1    ventricular      expression genes; MRI lateral-ventricle size; HPO Ventriculomegaly
T2    head size        expression genes; MRI head/brain scale; ECG T-wave amplitude;
                       HPO Macrocephaly / Microcephaly
T3    heart rate       expression genes; ECG/PPG heart rate; HPO Tachycardia / Bradycardia
T4    vascular/myelin  expression genes; MRI white-matter brightness (white/grey contrast);
                       PPG pulse amplitude and dicrotic-wave ratio; HPO Hypointensity of cerebral
                       white matter on MRI
====  ===============  ==========================================================================

Image and waveform multipliers use the trait clipped to ``±TRAIT_CLIP`` so extreme patients
stay anatomically plausible; expression and HPO use the trait itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from phenoclip.data.simulate.settings import SimulationSettings, rng_for
from phenoclip.data.simulate.genome import Layout
from phenoclip.data.simulate.genotypes import dosage
from phenoclip.data.simulate.phenotypes import TRAIT_TERMS
from phenoclip.data.simulate.signals import DICROTIC_RATIO, T_WAVE_RATIO

MAX_TRAITS = 4
TRAIT_NAMES = ("ventricular", "head_size", "heart_rate", "vascular_myelin")
TRAIT_CLIP = 2.5                      # multipliers of images and waveforms use clip(trait, -2.5, 2.5)
MIN_TRAIT_SNP_FREQ = 0.15             # trait SNPs are common: ALT frequency within 0.15-0.85
EFFECT_RANGE = (0.5, 1.5)             # |effect| per ALT allele (before standardisation), random sign
GENE_FOLD_RANGE = (0.8, 1.2)          # a trait gene's log-fold is trait_expr_log_fold x U(0.8, 1.2)
# heart rate: base + trait_hr_bpm x trait + N(0, HR_NOISE_BPM), clipped to a physiological range
HR_BASE_SINUS, HR_BASE_AF = 65.0, 80.0
HR_RANGE_SINUS, HR_RANGE_AF = (40.0, 130.0), (50.0, 160.0)
HR_NOISE_BPM = 3.0


@dataclass
class Traits:
    """Per-patient traits and the image/waveform multipliers they set (``N`` rows)."""

    values: np.ndarray            # (N, K) the traits
    genetic: np.ndarray           # (N, K) standardised genetic values
    environment: np.ndarray       # (N, K)
    hr_noise: np.ndarray          # (N,) bpm added to the trait's heart rate
    hpo: list[list[str]]          # HPO IDs each patient carries because of a trait extreme

    @property
    def k(self) -> int:
        return self.values.shape[1]

    def col(self, k: int, clip: bool = True) -> np.ndarray:
        """Trait ``k`` (0-based), clipped to ±:data:`TRAIT_CLIP`; zeros when not simulated."""
        if k >= self.k:
            return np.zeros(len(self.values))
        v = self.values[:, k]
        return np.clip(v, -TRAIT_CLIP, TRAIT_CLIP) if clip else v


# ---------------------------------------------------------------- genome: trait SNPs and genes

def place(layout: Layout, cfg: SimulationSettings) -> None:
    """Choose trait SNPs, their effects and the trait genes; stored on ``layout``.

    Drawn from a stream of its own (``layout``, 2) after the rest of the genome, so the
    blocks, causal SNPs and genes of a seed are the same with or without traits. SNPs are
    existing common block SNPs (no founder is changed, so genotypes are untouched). Blocks:
    autosomal ones without a causal SNP that hold a common SNP (ALT frequency 0.15-0.85).
    Each trait SNP gets a block of its own when there are enough (the default 2000 variants
    give about 37); otherwise a trait's SNPs still sit in distinct blocks but traits share
    blocks (small ``--variants``), and a trait never has more SNPs than there are blocks.
    """
    k = cfg.n_traits
    layout.trait_snps, layout.trait_genes = [], {}
    if k == 0:
        return
    rng = rng_for(cfg, "layout", 2)
    causal_blocks = {c["block"] for c in layout.causal}
    used = {c["snp"] for c in layout.causal}

    def has_common(b) -> bool:
        f = b.alt_freqs
        return bool(np.any((f >= MIN_TRAIT_SNP_FREQ) & (f <= 1 - MIN_TRAIT_SNP_FREQ)))

    cand = [i for i, b in enumerate(layout.blocks)
            if b.chrom != "chrX" and i not in causal_blocks and has_common(b)]
    if not cand:    # a tiny genome: share the causal blocks (a different SNP than the causal one)
        cand = [i for i, b in enumerate(layout.blocks) if b.chrom != "chrX"]
    order = [cand[int(j)] for j in rng.permutation(len(cand))]
    per_trait = min(cfg.trait_snps, len(order))
    for t in range(k):
        for j in range(per_trait):
            bi = order[(t * per_trait + j) % len(order)]
            b = layout.blocks[bi]
            freqs = b.alt_freqs
            local = [s for s in range(len(b.positions)) if b.first_site + s not in used]
            if not local:   # a tiny block already used up by other traits
                continue
            common = [s for s in local if MIN_TRAIT_SNP_FREQ <= freqs[s] <= 1 - MIN_TRAIT_SNP_FREQ]
            if common:
                s = int(common[int(rng.integers(len(common)))])
            else:   # no common SNP left in the block: the most common one
                s = int(min(local, key=lambda x: abs(freqs[x] - 0.5)))
            used.add(b.first_site + s)
            effect = float(rng.uniform(*EFFECT_RANGE)) * (1.0 if rng.random() < 0.5 else -1.0)
            layout.trait_snps.append({"trait": t, "snp": b.first_site + s, "block": bi, "chrom": b.chrom,
                                      "pos": int(b.positions[s]), "alt_freq": float(freqs[s]),
                                      "effect": round(effect, 4)})

    # trait genes: expression-null genes (rare-variant genes allowed, not the burden gene)
    pool = [g for g in layout.genes if g.role == "null" and g.name != layout.burden_gene]
    per_gene = min(cfg.trait_expr_genes, len(pool) // k)
    picks = rng.choice(len(pool), size=per_gene * k, replace=False) if per_gene else []
    for n, gi in enumerate(picks):
        g = pool[int(gi)]
        g.role = "trait"
        lfc = cfg.trait_expr_log_fold * float(rng.uniform(*GENE_FOLD_RANGE)) * (1.0 if rng.random() < 0.5 else -1.0)
        layout.trait_genes[g.name] = {"trait": n // per_gene, "log_fold_per_sd": round(lfc, 4)}
    layout.trait_genes = dict(sorted(layout.trait_genes.items()))


# ---------------------------------------------------------------- patients

def genetic_values(layout: Layout, block_haps: np.ndarray, k: int) -> np.ndarray:
    """Standardised genetic value per patient and trait, ``(N, K)``, from true (pre-missing) dosages."""
    n = block_haps.shape[0]
    out = np.zeros((n, k))
    for t in range(k):
        snps = [s for s in layout.trait_snps if s["trait"] == t]
        if not snps:
            continue
        d = dosage(block_haps[:, :, [s["snp"] for s in snps]]).astype(float)
        p = np.array([s["alt_freq"] for s in snps])
        beta = np.array([s["effect"] for s in snps])
        sd = np.sqrt(np.sum(beta**2 * 2 * p * (1 - p)))
        out[:, t] = ((d - 2 * p) * beta).sum(1) / sd
    return out


def draw(layout: Layout, block_haps: np.ndarray, cfg: SimulationSettings) -> Traits:
    """Traits of every patient (stream ``traits``), and the HPO terms of their extremes."""
    n, k = block_haps.shape[0], cfg.n_traits
    rng = rng_for(cfg, "traits")
    env = rng.normal(0.0, 1.0, (n, k))
    hr_noise = rng.normal(0.0, HR_NOISE_BPM, n)
    gen = genetic_values(layout, block_haps, k)
    h2 = cfg.trait_heritability
    values = np.sqrt(h2) * gen + np.sqrt(1.0 - h2) * env
    return Traits(values, gen, env, hr_noise, hpo_terms(values, cfg.trait_hpo_threshold))


def hpo_terms(values: np.ndarray, threshold: float) -> list[list[str]]:
    """HPO IDs per patient from :data:`phenotypes.TRAIT_TERMS`: every patient past a threshold gets
    the term (deterministic), in the table's order."""
    out = []
    for row in values:
        terms = []
        for trait, direction, tid, _ in TRAIT_TERMS:
            if trait - 1 < len(row):
                v = row[trait - 1]
                if (direction == ">" and v > threshold) or (direction == "<" and v < -threshold):
                    terms.append(tid)
        out.append(terms)
    return out


# ---------------------------------------------------------------- what the traits set

def ventricle_scale(tr: Traits, cfg: SimulationSettings) -> np.ndarray:
    """T1: lateral-ventricle semi-axes x (1 + trait_ventricle) ** trait (1.25 ** t by default)."""
    return (1.0 + cfg.trait_ventricle) ** tr.col(0)


def head_scale(tr: Traits, cfg: SimulationSettings) -> np.ndarray:
    """T2: head (scalp to white matter) semi-axes x (1 + trait_head_scale x trait)."""
    return 1.0 + cfg.trait_head_scale * tr.col(1)


def white_level(tr: Traits, cfg: SimulationSettings, base: float) -> np.ndarray:
    """T4: white-matter T1 level x (1 + trait_white_matter x trait); grey matter stays."""
    return base * (1.0 + cfg.trait_white_matter * tr.col(3))


def t_wave_scale(tr: Traits, cfg: SimulationSettings) -> np.ndarray:
    """T2: ECG T-wave amplitude (relative to the R wave) x (1 + trait_t_wave x trait)."""
    return 1.0 + cfg.trait_t_wave * tr.col(1)


def ppg_scale(tr: Traits, cfg: SimulationSettings) -> np.ndarray:
    """T4: PPG pulse amplitude x (1 + trait_ppg x trait)."""
    return 1.0 + cfg.trait_ppg * tr.col(3)


def dicrotic_ratio(tr: Traits, cfg: SimulationSettings) -> np.ndarray:
    """T4: PPG dicrotic / systolic amplitude, 0.35 x (1 - trait_ppg x trait) (stiffer vessels reflect more)."""
    return DICROTIC_RATIO * (1.0 - cfg.trait_ppg * tr.col(3))


def heart_rates(tr: Traits, af: np.ndarray, cfg: SimulationSettings) -> np.ndarray | None:
    """T3: mean heart rate per patient (bpm), or None when trait 3 is not simulated (then the rate
    is drawn as before: sinus U(55, 90), AF U(75, 115))."""
    if tr.k < 3:
        return None
    t = tr.col(2, clip=False)
    sinus = np.clip(HR_BASE_SINUS + cfg.trait_hr_bpm * t + tr.hr_noise, *HR_RANGE_SINUS)
    fib = np.clip(HR_BASE_AF + cfg.trait_hr_bpm * t + tr.hr_noise, *HR_RANGE_AF)
    return np.where(af, fib, sinus)


def drives(cfg: SimulationSettings, layout: Layout) -> list[dict]:
    """What each simulated trait drives, per modality, with its strength (for truth.json)."""
    thr = cfg.trait_hpo_threshold
    c = f"clip(t, -{TRAIT_CLIP:g}, {TRAIT_CLIP:g})"
    rows: list[dict] = []
    for t in range(cfg.n_traits):
        genes = [g for g, e in layout.trait_genes.items() if e["trait"] == t]
        if genes:
            rows.append({"trait": t + 1, "modality": "expression", "feature": f"log mean of {len(genes)} genes",
                         "rule": "log-fold per SD of the trait (sign per gene): log_fold_per_sd x t",
                         "strength": {g: layout.trait_genes[g]["log_fold_per_sd"] for g in genes}})
    if cfg.n_traits >= 1:
        rows.append({"trait": 1, "modality": "mri", "feature": "lateral ventricle size",
                     "rule": f"ventricle semi-axes x {1 + cfg.trait_ventricle:g} ** {c} (lateral centres move "
                             "out by half the growth)",
                     "strength": {"semi_axis_factor_per_sd": round(1 + cfg.trait_ventricle, 4)}})
    if cfg.n_traits >= 2:
        rows.append({"trait": 2, "modality": "mri", "feature": "head and brain size",
                     "rule": f"head semi-axes x (1 + {cfg.trait_head_scale:g} x {c}), on top of the random ±5 % "
                             "(the largest heads reach the field-of-view edge with scalp or skull, never brain)",
                     "strength": {"scale_per_sd": cfg.trait_head_scale}})
        rows.append({"trait": 2, "modality": "signals", "feature": "ECG T-wave amplitude",
                     "rule": f"T = {T_WAVE_RATIO:g} x R amplitude x (1 + {cfg.trait_t_wave:g} x {c})",
                     "strength": {"relative_change_per_sd": cfg.trait_t_wave}})
    if cfg.n_traits >= 3:
        rows.append({"trait": 3, "modality": "signals", "feature": "heart rate (ECG and PPG)",
                     "rule": f"sinus {HR_BASE_SINUS:g} + {cfg.trait_hr_bpm:g} x t + N(0, {HR_NOISE_BPM:g}) bpm, "
                             f"clipped to {HR_RANGE_SINUS[0]:g}-{HR_RANGE_SINUS[1]:g}; AF {HR_BASE_AF:g} + "
                             f"{cfg.trait_hr_bpm:g} x t + N(0, {HR_NOISE_BPM:g}), clipped to "
                             f"{HR_RANGE_AF[0]:g}-{HR_RANGE_AF[1]:g} (mean rate; RR stays irregular)",
                     "strength": {"bpm_per_sd": cfg.trait_hr_bpm}})
    if cfg.n_traits >= 4:
        rows.append({"trait": 4, "modality": "mri", "feature": "white matter brightness (white/grey contrast)",
                     "rule": f"white matter level 850 x (1 + {cfg.trait_white_matter:g} x {c}); grey 550",
                     "strength": {"relative_change_per_sd": cfg.trait_white_matter}})
        rows.append({"trait": 4, "modality": "signals", "feature": "PPG pulse amplitude and dicrotic wave",
                     "rule": f"pulse amplitude x (1 + {cfg.trait_ppg:g} x {c}); dicrotic/systolic ratio "
                             f"{DICROTIC_RATIO:g} x (1 - {cfg.trait_ppg:g} x {c})",
                     "strength": {"relative_change_per_sd": cfg.trait_ppg}})
    for trait, direction, tid, label in TRAIT_TERMS:
        if trait <= cfg.n_traits:
            rows.append({"trait": trait, "modality": "hpo", "feature": f"{tid} {label}",
                         "rule": f"present exactly when t {direction} {'' if direction == '>' else '-'}{thr:g}",
                         "strength": {"threshold_sd": thr if direction == ">" else -thr}})
    rows.sort(key=lambda r: (r["trait"], ["expression", "mri", "signals", "hpo"].index(r["modality"])))
    return rows
