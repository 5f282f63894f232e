"""``truth.json``: everything planted, in plain JSON (no paths, no clock: two runs match)."""

from __future__ import annotations

import numpy as np

from phenoclip import __version__
from phenoclip.data.simulate import genotypes as gt
from phenoclip.data.simulate import coalescent, latent, mri, phenotypes, traits
from phenoclip.data.simulate.cohort import Cohort
from phenoclip.data.simulate.expression import LESION_GENE_ROLES
from phenoclip.data.simulate.contigs import CHRX_NONPAR_END, CHRX_NONPAR_START
from phenoclip.data.simulate.genome import DISEASES

TRUTH_FORMAT = "phenoclip-simulation-truth"
TRUTH_VERSION = 1


def _r(x, nd: int = 4):
    """Round floats (scalars, arrays, lists) for a readable, platform-stable JSON."""
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_r(v, nd) for v in x]
    if isinstance(x, (float, np.floating)):
        return round(float(x), nd)
    if isinstance(x, (np.integer,)):
        return int(x)
    return x


def regenerate_command(c: Cohort, out: str = "OUT") -> str:
    """The ``phenoclip simulate`` line that recreates this cohort."""
    cfg = c.cfg
    return (f"phenoclip simulate --out {out} --patients {cfg.patients} --seed {cfg.seed} --variants {cfg.variants} "
            f"--genes {cfg.genes} --volume-shape {','.join(map(str, cfg.volume_shape))} "
            f"--signal-seconds {cfg.signal_seconds:g} --signal-rate {cfg.signal_rate:g} "
            f"--missing-rate {cfg.missing_rate:g}" + _genotypes_option(cfg))


def _genotypes_option(cfg) -> str:
    """`` --genotypes MODEL``, left out for the default blocks model (its command reads as before)."""
    return "" if cfg.genotypes == "blocks" else f" --genotypes {cfg.genotypes}"


def _config(cfg) -> dict:
    """The config for truth.json.

    The blocks model leaves out ``genotypes``: its truth.json stays byte for byte what it was
    before the coalescent model existed (``data/sample`` and published numbers are made from it);
    a truth.json without the key is a blocks cohort.
    """
    d = cfg.to_dict()
    if cfg.genotypes == "blocks":
        del d["genotypes"]
    return d


def _patients(c: Cohort, mask_voxels: list, seconds_written: float) -> list[dict]:
    t = c.variants
    burden_sites = {(r["chrom"], r["pos"]) for r in c.layout.rare if r["burden"]}
    burden_rows = [m for m in np.flatnonzero(t.kind == "rare") if (str(t.chrom[m]), int(t.pos[m])) in burden_sites]
    burden_alleles = (t.calls[:, :, burden_rows] > 0).sum((1, 2))
    out = []
    for i, s in enumerate(c.samples):
        les = c.lesions[i]
        vox = mri.lesion_centre_voxel(c.head_centres[i], c.head_radii[i], les, c.cfg.voxel_spacing)
        world = c.affines[i] @ np.append(vox, 1.0)
        beats = c.beats[i][(c.beats[i] >= 0) & (c.beats[i] < seconds_written)]
        out.append({
            "sample": s,
            "disease": DISEASES[c.disease[i]],
            "affected": bool(c.disease[i] > 0),
            "severity": _r(c.severity[i]),
            "sex": "male" if c.male[i] else "female",
            "modalities": [m for m, p in zip(latent.MODALITIES, c.present[i]) if p],
            "liability": {"neuro": _r(c.liability[i, 0]), "cardio": _r(c.liability[i, 1])},
            "disease_probs": _r(c.disease_probs[i]),
            "causal_dosage": c.causal_dosage[i].tolist(),
            "burden_alleles": int(burden_alleles[i]),
            "lesion_gene_levels": dict(zip(LESION_GENE_ROLES, _r(c.lesion_levels[i]))),
            "library_size_factor": _r(c.expression_effects["library_size_factor"][i]),
            "lesion": {
                "hemisphere": les.hemisphere,
                "centre_voxel": _r(vox, 3),
                "centre_world_ras_mm": _r(world[:3], 3),
                "radius_mm": _r(les.radii_mm[0], 3),
                "radii_mm": _r(les.radii_mm, 3),
                "mask_voxels": mask_voxels[i],
            },
            "affine": _r(c.affines[i], 4),
            "af": bool(c.af[i]),
            "heart_rate_bpm": _r(c.heart_rate[i], 2),
            "beats_s": _r(beats, 4),
            "hpo": list(c.terms[i]),
            "traits": _r(c.traits.values[i]),
            "trait_genetic_values": _r(c.traits.genetic[i]),
            "trait_hpo": list(c.traits.hpo[i]),
            "trait_effects": {
                "ventricle_scale": _r(c.ventricle_scale[i]),
                "head_scale": _r(c.head_scale[i]),
                "head_semi_axes_mm": _r(c.head_radii[i], 3),
                "head_centre_voxel": _r(c.head_centres[i], 3),
                "white_matter_level": _r(c.white_level[i] * 1000, 1),
                "t_wave_scale": _r(c.t_wave_scale[i]),
                "ppg_amplitude_scale": _r(c.ppg_scale[i]),
                "ppg_dicrotic_ratio": _r(c.dicrotic_ratio[i]),
            },
        })
    return out


def _traits(c: Cohort) -> dict:
    """The trait model, its SNPs and genes, what each trait drives, and realised statistics."""
    cfg, t, lay = c.cfg, c.variants, c.layout
    row_of_snp = {int(s): m for m, s in enumerate(t.block_snp) if s >= 0}
    snps = []
    for z in lay.trait_snps:
        m = row_of_snp[z["snp"]]
        snps.append({"id": str(t.id[m]), "chrom": z["chrom"], "pos": z["pos"], "ref": str(t.ref[m]),
                     "alt": str(t.alt[m]), "trait": z["trait"] + 1, "effect_per_alt": z["effect"],
                     "alt_freq": _r(z["alt_freq"]), "block": z["block"]})
    snps.sort(key=lambda z: (z["trait"], z["id"]))
    v = c.traits.values
    k = c.traits.k
    realised = {}
    if k and len(v) > 2:
        realised = {"mean": _r(v.mean(0)), "sd": _r(v.std(0)),
                    "corr_with_genetic_value": _r([float(np.corrcoef(v[:, j], c.traits.genetic[:, j])[0, 1])
                                                   for j in range(k)]),
                    "corr_between_traits": _r(np.corrcoef(v.T)) if k > 1 else [[1.0]],
                    "hpo_patients": {f"{tid} {lab}": sum(tid in h for h in c.traits.hpo)
                                     for tr, _, tid, lab in phenotypes.TRAIT_TERMS if tr <= k}}
    return {
        "count": k,
        "names": list(traits.TRAIT_NAMES[:k]),
        "heritability": cfg.trait_heritability,
        "model": "t = sqrt(h2) x genetic + sqrt(1 - h2) x environment; genetic = sum of effect x (ALT dosage - "
                 "2 x alt_freq) over the trait's SNPs divided by sqrt(sum effect^2 x 2 alt_freq (1 - alt_freq)) "
                 "(true dosages, before missing calls); environment ~ N(0, 1)",
        "disease_link": "none: traits do not enter disease liability, severity or AF, and their SNPs lie outside "
                        "the causal SNPs' blocks",
        "clip_for_images_and_waveforms": traits.TRAIT_CLIP,
        "snps_per_trait": {str(j + 1): sum(z["trait"] == j + 1 for z in snps) for j in range(k)},
        "snps": snps,
        "expression_genes": {g: {"trait": e["trait"] + 1, "log_fold_per_sd": e["log_fold_per_sd"]}
                             for g, e in lay.trait_genes.items()},
        "hpo_terms": [{"trait": tr, "direction": d, "threshold": cfg.trait_hpo_threshold if d == ">"
                       else -cfg.trait_hpo_threshold, "id": tid, "label": lab}
                      for tr, d, tid, lab in phenotypes.TRAIT_TERMS if tr <= k],
        "drives": traits.drives(cfg, lay),
        "realised": realised,
    }


def _variants(c: Cohort, pgs: dict) -> dict:
    t, lay = c.variants, c.layout
    row_of_snp = {int(s): m for m, s in enumerate(t.block_snp) if s >= 0}
    eqtl_of = {ci: g for g, ci in lay.eqtl.items()}
    causal = []
    for k, cz in enumerate(lay.causal):
        m = row_of_snp[cz["snp"]]
        causal.append({"id": str(t.id[m]), "chrom": cz["chrom"], "pos": cz["pos"], "ref": str(t.ref[m]),
                       "alt": str(t.alt[m]), "disease": cz["disease"], "effect_log_odds_per_alt": cz["effect"],
                       "alt_freq": _r(cz["alt_freq"]), "block": cz["block"], "eqtl_gene": eqtl_of.get(k)})
    blocks = [_block(b) for b in lay.blocks]
    m_multi = int(np.flatnonzero(t.kind == "multi")[0])
    rare_rows = np.flatnonzero(t.kind == "rare")
    pos_to_rare = {(r["chrom"], r["pos"]): r for r in lay.rare}
    rare = []
    for m in rare_rows:
        r = pos_to_rare[(str(t.chrom[m]), int(t.pos[m]))]
        rare.append({"id": str(t.id[m]), "chrom": r["chrom"], "pos": r["pos"], "gene": r["gene"],
                     "population_alt_freq": _r(r["base_freq"]), "burden": r["burden"]})
    out = {
        "sites": int(len(t.pos)),
        "contigs": sorted(set(t.chrom.tolist())),
        "blocks": blocks,
        "causal_snps": causal,
        "multiallelic_site": {"id": str(t.id[m_multi]), "chrom": str(t.chrom[m_multi]), "pos": int(t.pos[m_multi]),
                              "ref": str(t.ref[m_multi]), "alt": str(t.alt[m_multi]),
                              "allele_freqs": lay.multi["freqs"]},
        "chrX_haploid_region": {"chrom": "chrX", "start": CHRX_NONPAR_START, "end": CHRX_NONPAR_END,
                                "rule": "males haploid (GT 0 or 1), females diploid phased"},
        "rare_variants": rare,
        "burden": {"gene": lay.burden_gene, "alt_freq_per_haplotype_in_cardio": gt.BURDEN_FREQ_CARDIO,
                   "alt_freq_per_haplotype_otherwise": "population_alt_freq of each variant (0.002-0.006)"},
        "mutation_rate_per_haplotype": gt.MUTATION_RATE,
        "missing_call_rate": c.cfg.missing_call_rate,
        "half_call_rate": c.cfg.half_call_rate,
        "pgs": pgs,
    }
    if c.cfg.genotypes == "coalescent":
        # the founder model's per-haplotype mutation noise does not apply; say which model it was instead
        del out["mutation_rate_per_haplotype"]
        out["genotype_model"] = coalescent.parameters()
    return out


def _block(b) -> dict:
    """One block for truth.json: its first and last SNP; founder frequencies (blocks model) or the
    simulated segment, its sites before thinning (hit by one mutation) and msprime seeds (coalescent)."""
    d = {"chrom": b.chrom, "start": int(b.positions[0]), "end": int(b.positions[-1]), "snps": len(b.positions)}
    if b.haplotypes is None:
        d["founder_freqs"] = _r(b.founder_freqs, 3)
    else:
        d.update({"segment": [int(x) for x in b.segment], "simulated_sites": int(b.simulated_sites),
                  "msprime_seeds": {"ancestry": int(b.seeds[0]), "mutations": int(b.seeds[1])}})
    return d


def build_truth(c: Cohort, pgs: dict, mask_voxels: list, signal_samples: int, record_duration: float,
                files: list[str]) -> dict:
    """The whole ``truth.json`` document."""
    cfg = c.cfg
    seconds = signal_samples / cfg.signal_rate
    fx = c.expression_effects
    programs: dict = {f"{d}_{w}": [] for d in ("neuro", "cardio") for w in ("up", "down")}
    for g, e in fx["programs"].items():
        programs[f"{e['disease']}_{e['direction']}"].append(
            {"gene": g, "log_fold_at_severity_1": e["log_fold_at_severity_1"]})
    counts = np.bincount(c.disease, minlength=3)
    return {
        "format": TRUTH_FORMAT,
        "version": TRUTH_VERSION,
        "phenoclip_version": __version__,
        "seed": cfg.seed,
        "config": _config(cfg),
        "command": regenerate_command(c),
        "disease_model": {
            "logits": "[0, c_neuro + liability_neuro, c_cardio + liability_cardio]; liability = sum of "
                      "effect x (ALT dosage - 2 x alt_freq) over the disease's causal SNPs",
            "intercepts": _r(c.intercepts),
            "target_shares": list(cfg.disease_shares),
            "realised_counts": dict(zip(DISEASES, counts.tolist())),
            "severity": "affected: clip(1 + 0.35 x own liability + N(0, 0.4), 0.2, 3); controls: 0, or "
                        "U(0.05, 0.3) for 15 %",
        },
        "patients": _patients(c, mask_voxels, seconds),
        "variants": _variants(c, pgs),
        "expression": {
            "genes": cfg.genes,
            "eqtl_genes": {g: {"snp": _variants_id(c, e["causal_index"]),
                               "log_fold_per_alt_allele": e["log_fold_per_alt_allele"]}
                           for g, e in fx["eqtl"].items()},
            "program_genes": programs,
            "program_scaling": "log fold x clip(0.5 + 0.5 x severity, 0.5, 2) in patients of that disease",
            "lesion_genes": {g: e["sets"] for g, e in fx["lesion"].items()},
            "lesion_gene_log_fold_per_unit": next(iter(fx["lesion"].values()))["log_fold_per_unit"],
            "burden_gene": c.layout.burden_gene,
            "dispersion_range": _r([float(fx["dispersion"].min()), float(fx["dispersion"].max())]),
            "library_size_factor_range": _r([float(fx["library_size_factor"].min()),
                                             float(fx["library_size_factor"].max())]),
        },
        "mri": {
            "shape": list(cfg.volume_shape), "spacing_mm": list(cfg.voxel_spacing), "axcodes": "LPS",
            "dtype": "int16", "tissue_levels": {"scalp": 600, "skull": 100, "csf": 150, "grey": 550, "white": 850},
            "lesion_contrast": cfg.lesion_contrast, "noise_sigma": mri.NOISE_SIGMA * 1000,
            "lesion_rules": "neuro left hemisphere, cardio right, control small near midline above the ventricles; "
                            "radius 1.8 + 1.2 x severity + 0.7 x size level mm (2-6; controls "
                            "2.2 + 0.3 x size level, 2-2.8); "
                            "posterior offset 0.4 x tanh(anterior_posterior level) of the brain radius",
        },
        "signals": {
            "channels": ["ECG", "PPG"], "units": ["mV", "a.u."], "rate_hz": cfg.signal_rate,
            "samples_per_channel": signal_samples, "seconds": seconds, "record_duration_s": record_duration,
            "af_rule": f"cardio: P(AF) = min(0.97, {cfg.af_rate_cardio} + 0.1 x severity); others {cfg.af_rate_other}",
            "af_rhythm": "RR log-normal with 22 % spread, no P waves, 5-7 Hz f-waves; sinus RR varies ~4 %",
        },
        "phenotypes": {
            "hpo_version": phenotypes.HPO_VERSION,
            "terms_by_disease": {name: [{"id": t, "label": lab, "descendants": [k[0] for k in kids]}
                                         for t, lab, _, kids in pool]
                                  for name, pool in (("neuro", phenotypes.NEURO), ("cardio", phenotypes.CARDIO),
                                                     ("nonspecific", phenotypes.NONSPECIFIC))},
        },
        "traits": _traits(c),
        "files": files,
    }


def _variants_id(c: Cohort, causal_index: int) -> str:
    t = c.variants
    return str(t.id[t.index_of_block_snp(c.layout.causal[causal_index]["snp"])])
