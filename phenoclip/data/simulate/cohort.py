"""Draw the whole cohort in memory: latent state first, then every modality from it.

The order of the draws matters only within a stream (see :data:`config.STREAMS`); MRI and
signals use one stream per patient so their loops can skip absent patients freely.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from phenoclip.data.simulate import expression, genotypes, latent, mri, phenotypes, signals, traits
from phenoclip.data.simulate.settings import SimulationSettings, rng_for, sample_ids
from phenoclip.data.simulate.genome import DISEASES, Layout, build_layout

AF_SEVERITY_BONUS = 0.1   # P(AF | cardio) rises by this per unit of severity (capped at 0.97)


@dataclass
class Cohort:
    """Every drawn quantity, per patient in sample order (``N`` rows)."""

    cfg: SimulationSettings
    samples: list[str]
    layout: Layout
    male: np.ndarray
    causal_dosage: np.ndarray      # (N, 6) true ALT counts before missing calls
    liability: np.ndarray          # (N, 2) neuro, cardio
    disease: np.ndarray            # (N,) 0 control, 1 neuro, 2 cardio
    disease_probs: np.ndarray      # (N, 3)
    intercepts: np.ndarray         # (3,)
    severity: np.ndarray
    af: np.ndarray
    present: np.ndarray            # (N, 4) over latent.MODALITIES
    variants: genotypes.VariantTable
    lesion_levels: np.ndarray      # (N, 3)
    counts: np.ndarray             # (N, G) for everyone; absent rows are not written
    expression_effects: dict
    terms: list[list[str]]
    lesions: list[mri.Lesion]
    affines: list[np.ndarray]
    head_centres: list[np.ndarray]
    head_radii: list[np.ndarray]
    beats: list[np.ndarray]
    heart_rate: np.ndarray
    traits: traits.Traits
    disease_terms: list[list[str]]  # HPO IDs from the disease pools only (``terms`` adds trait terms)
    ventricle_scale: np.ndarray     # (N,) trait-set multipliers (1 = neutral)
    head_scale: np.ndarray
    white_level: np.ndarray         # white-matter T1 level (0.85 = neutral)
    t_wave_scale: np.ndarray
    ppg_scale: np.ndarray
    dicrotic_ratio: np.ndarray

    def has(self, modality: str) -> np.ndarray:
        """Boolean presence of one modality per patient."""
        return self.present[:, latent.MODALITIES.index(modality)]


def draw_af(disease: np.ndarray, severity: np.ndarray, cfg: SimulationSettings, rng: np.random.Generator) -> np.ndarray:
    """AF rhythm: most cardio patients (more with severity), a few others."""
    p = np.where(disease == 2, np.minimum(0.97, cfg.af_rate_cardio + AF_SEVERITY_BONUS * severity), cfg.af_rate_other)
    return rng.random(len(disease)) < p


def draw_cohort(cfg: SimulationSettings) -> Cohort:
    """Everything except the rendered images and waveforms (those are made while writing)."""
    n = cfg.patients
    layout = build_layout(cfg)
    traits.place(layout, cfg)
    lat_rng, gen_rng = rng_for(cfg, "latent"), rng_for(cfg, "genotypes")

    male = latent.draw_sex(n, lat_rng)
    block_haps = genotypes.draw_block_haplotypes(layout, male, gen_rng)
    tr = traits.draw(layout, block_haps, cfg)
    causal_idx = [c["snp"] for c in layout.causal]
    causal_dosage = genotypes.dosage(block_haps[:, :, causal_idx])
    liab = latent.liabilities(causal_dosage,
                              np.array([c["alt_freq"] for c in layout.causal]),
                              np.array([c["effect"] for c in layout.causal]),
                              np.array([DISEASES.index(c["disease"]) for c in layout.causal]))
    disease, probs, intercepts = latent.draw_disease(liab, cfg.disease_shares, lat_rng)
    severity = latent.draw_severity(disease, liab, lat_rng)
    af = draw_af(disease, severity, cfg, lat_rng)
    present = latent.draw_presence(n, cfg.missing_rate, rng_for(cfg, "presence"))

    table = genotypes.assemble(layout, block_haps, genotypes.draw_multi(layout, male, gen_rng),
                               genotypes.draw_rare(layout, disease, gen_rng),
                               cfg.missing_call_rate, cfg.half_call_rate, gen_rng)

    ex_rng = rng_for(cfg, "expression")
    levels = expression.lesion_levels(disease, severity, ex_rng)
    counts, effects = expression.simulate_counts(layout, disease, severity, causal_dosage, levels,
                                                 cfg.eqtl_log_fold, cfg.program_log_fold, ex_rng, tr.values)
    disease_terms = phenotypes.draw_terms(disease, severity, af, rng_for(cfg, "phenotypes"))
    terms = phenotypes.add_trait_terms(disease_terms, tr.hpo)

    # geometry and rhythm for everyone (cheap); images and waveforms only where present
    head_scale, target_hr = traits.head_scale(tr, cfg), traits.heart_rates(tr, af, cfg)
    lesions, affines, centres, radii, beats, hr = [], [], [], [], [], []
    for i in range(n):
        r = rng_for(cfg, "mri", i)
        lesions.append(mri.lesion_for(int(disease[i]), float(severity[i]), levels[i], r))
        aff, centre, head_r = mri.affine_for(cfg.volume_shape, cfg.voxel_spacing, r, float(head_scale[i]))
        affines.append(aff)
        centres.append(centre)
        radii.append(head_r)
        b, h = signals.beat_times(bool(af[i]), cfg.signal_seconds, rng_for(cfg, "signals", i),
                                  None if target_hr is None else float(target_hr[i]))
        beats.append(b)
        hr.append(h)
    return Cohort(cfg, sample_ids(n), layout, male, causal_dosage, liab, disease, probs, intercepts, severity,
                  af, present, table, levels, counts, effects, terms, lesions, affines, centres, radii, beats,
                  np.array(hr), traits=tr, disease_terms=disease_terms,
                  ventricle_scale=traits.ventricle_scale(tr, cfg), head_scale=head_scale,
                  white_level=traits.white_level(tr, cfg, mri.WHITE), t_wave_scale=traits.t_wave_scale(tr, cfg),
                  ppg_scale=traits.ppg_scale(tr, cfg), dicrotic_ratio=traits.dicrotic_ratio(tr, cfg))


def mri_rng(cfg: SimulationSettings, i: int) -> np.random.Generator:
    """Patient ``i``'s rendering stream (separate from its lesion-geometry stream)."""
    return rng_for(cfg, "mri", i, 1)


def signal_rng(cfg: SimulationSettings, i: int) -> np.random.Generator:
    """Patient ``i``'s waveform stream (separate from its beat-time stream)."""
    return rng_for(cfg, "signals", i, 1)
