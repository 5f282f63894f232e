"""The cohort's ``README.md``: what is there and what was planted, in prose, from ``truth.json``."""

from __future__ import annotations


def readme_text(truth: dict, out: str) -> str:
    """Markdown for a person opening the folder; every number comes from ``truth``."""
    cfg, v, ex, mr, sg = truth["config"], truth["variants"], truth["expression"], truth["mri"], truth["signals"]
    counts = truth["disease_model"]["realised_counts"]
    n = cfg["patients"]
    pats = truth["patients"]
    have = {m: sum(m in p["modalities"] for p in pats) for m in ("variants", "expression", "mri", "signals")}
    causal = "\n".join(f"| {c['id']} | {c['chrom']}:{c['pos']} | {c['ref']}>{c['alt']} | {c['disease']} | "
                       f"{c['effect_log_odds_per_alt']:+.2f} | {c['alt_freq']:.2f} | {c['eqtl_gene']} |"
                       for c in v["causal_snps"])
    prog = {k: ", ".join(g["gene"] for g in gs) for k, gs in ex["program_genes"].items()}
    lesion_genes = ", ".join(f"{g} ({role})" for g, role in ex["lesion_genes"].items())
    n_af = sum(p["af"] for p in pats)
    tr = truth["traits"]
    return f"""# Simulated phenoclip cohort

{n} synthetic patients (seed {cfg['seed']}) with a hidden disease state and {tr['count']} patient-specific,
partly heritable traits planted across the modalities.
Nothing here is real patient data. `truth.json` lists everything planted; this file says it in prose.

Regenerate with:

```
{truth['command'].replace('--out OUT', '--out ' + out)}
```

## Files

| path | content |
| --- | --- |
| `labels.tsv` | sample, disease (control/neuro/cardio), affected (0/1), severity |
| `variants.vcf.gz` (+ `.tbi`) | phased GT-only VCF, bgzipped and tabix-indexed; {have['variants']} of {n} patients |
| `genes.bed` | BED4 (0-based) of the {cfg['genes']} simulated genes |
| `pgs/PGS_SIM001.txt` | PGS Catalog scoring file of the cardio liability ({v['pgs']['variants']} variants) |
| `expression.tsv.gz` | samples x genes integer counts, first column `sample`; {have['expression']} patients |
| `mri/manifest.tsv`, `mri/images/*_T1.nii.gz`, `mri/masks/*_lesion.nii.gz` | T1-like int16 brains and uint8 lesion masks; {have['mri']} patients |
| `signals/manifest.tsv`, `signals/*.edf` | EDF+ with channels ECG (mV) and PPG (a.u.) at {sg['rate_hz']:g} Hz, {sg['seconds']:g} s; {have['signals']} patients |
| `phenotypes/hpo.tsv`, `phenotypes/phenopackets/*.json` | HPO terms, one row per term; GA4GH phenopackets v2, one per patient |
| `truth.json` | everything planted |

Every patient has labels and a phenopacket (patients without any HPO term have no row in
`hpo.tsv`). Each of variants, expression, MRI and signals is missing for about
{cfg['missing_rate']:.0%} of patients, but everyone keeps at least two of the four; a missing
patient is absent from that modality's file (no VCF column, no expression row, no manifest row).

## Planted structure

**Disease.** {counts['control']} controls, {counts['neuro']} neuro, {counts['cardio']} cardio. The disease is drawn from a
softmax over `[0, c_neuro + liability_neuro, c_cardio + liability_cardio]`, with intercepts
solved so the shares are about {', '.join(f'{s:.0%}' for s in cfg['disease_shares'])}. A liability is the sum
of effect x (ALT dosage - 2 x ALT frequency) over that disease's three causal SNPs, so an effect
is log-odds per ALT allele. Severity is about 1 (0.2-3) in the affected and rises with their
liability; most controls have 0.

**Variants.** {_genotype_model(v)}

| id | position | alleles | disease | effect | ALT freq | eQTL gene |
| --- | --- | --- | --- | --- | --- | --- |
{causal}

Also: about {cfg['missing_call_rate']:.1%} missing calls `.|.` and a few half-calls (`0|.`); the multi-allelic
site {v['multiallelic_site']['id']} ({v['multiallelic_site']['chrom']}:{v['multiallelic_site']['pos']}, ALT {v['multiallelic_site']['alt']});
all chrX sites lie outside PAR1 ({v['chrX_haploid_region']['start']}-{v['chrX_haploid_region']['end']}), where males have haploid calls (`0`/`1`).
{len(v['rare_variants'])} rare variants (population ALT frequency < 2 %) sit inside genes of `genes.bed`; the
burden gene **{v['burden']['gene']}** carries {sum(r['burden'] for r in v['rare_variants'])} of them at
{v['burden']['alt_freq_per_haplotype_in_cardio']:.0%} per haplotype in cardio patients (a burden signal).
`PGS_SIM001` scores the cardio liability: its three causal SNPs with their true weights plus
small noise weights; {v['pgs']['effect_allele_is_ref']} rows name the REF allele as effect allele (weight
negated). Its `chr_name` has no `chr` prefix, as in PGS Catalog files; the VCF uses `chr1`.

**Expression.** Negative-binomial counts; library sizes are log-normal (sd 0.4), so totals differ several-fold: normalise (e.g. CPM).
cis-eQTL genes (gene body over its causal SNP): {', '.join(f"{g} ({e['snp']})" for g, e in ex['eqtl_genes'].items())},
log-fold {next(iter(ex['eqtl_genes'].values()))['log_fold_per_alt_allele']} per ALT allele. Disease programmes (log-fold about
{cfg['program_log_fold']}, scaled by severity): neuro up {prog['neuro_up']}; neuro down {prog['neuro_down']};
cardio up {prog['cardio_up']}; cardio down {prog['cardio_down']}. Lesion genes: {lesion_genes}.

**MRI.** {'x'.join(map(str, mr['shape']))} voxels of {' x '.join(f'{s:g}' for s in mr['spacing_mm'])} mm, int16; the affine is
LPS-like (i -> Left, j -> Posterior, k -> Superior) with an origin offset, so reorient before
comparing left and right. A T1-like head (scalp, skull, CSF, grey matter, brighter white matter,
dark ventricles) with a mild bias field and Rician noise, and one FLAIR-like hyperintense
lesion (+{mr['lesion_contrast']:.0%} of white matter, soft rim): neuro in the left hemisphere, cardio in the right,
controls small near the midline. Radius grows with severity and the size lesion gene; the
anterior-posterior position follows the anterior_posterior lesion gene. Masks share the
affine (uint8, 1 = lesion).

**Signals.** ECG (P-QRS-T) and PPG (pulse following each beat) with baseline wander and noise;
{n_af} patients have an AF rhythm (irregular RR intervals, no P waves, f-waves), nearly all of
them cardio. Heart rate differs per patient (set by trait 3 when simulated); beat times are in `truth.json`.

**Phenotypes.** Real HPO terms (release {truth['phenotypes']['hpo_version']}): affected patients get 2-5 terms of their
disease (sometimes a more specific descendant, e.g. Focal-onset seizure for Seizure), sometimes
one nonspecific noise term; cardio patients with AF nearly always carry Atrial fibrillation (or
Paroxysmal atrial fibrillation); controls get at most one nonspecific term. Trait extremes add
their own terms on top (below).
{_traits_section(tr)}"""


def _genotype_model(v: dict) -> str:
    """How the genotypes were drawn, ending with the causal-SNP table's lead-in."""
    m = v.get("genotype_model")
    if m is None:   # the blocks model: its text is the one data/sample was published with
        return f"""{v['sites']} sites on chr1, chr2 and chrX in {len(v['blocks'])} haplotype blocks: each block has 3-6
founder haplotypes and every patient haplotype copies one founder with rare mutations, so r2 is
high within a block and near zero between blocks. Causal SNPs (each in its own block):"""
    seg = m["segment_length_bp"]

    def rate(x: float) -> str:
        return f"{x:g}".replace("e-0", "e-")     # 1e-8, not 1e-08

    return f"""{v['sites']} sites on chr1, chr2 and chrX in {len(v['blocks'])} genome segments of
{seg[0] // 1000}-{seg[1] // 1000} kb, each simulated on its own with {m['simulator']}, the coalescent
with recombination: diploid Ne {m['population_size_diploid']:,} ({m['population_size_chrX']:,} on chrX), recombination
{rate(m['recombination_rate_per_bp'])} and mutation {rate(m['mutation_rate_per_bp'])} per bp and generation, binary mutations (REF
ancestral, ALT derived). A segment's sites were thinned uniformly at random to its share of the
sites, so allele frequencies follow the neutral spectrum (the share of sites with i copies of
the ALT allele falls as 1/i: rare variants abound) and r2 decays with distance within a
segment; it is near zero between segments. Causal SNPs (each in its own segment, minor allele
frequency at least {m['causal_min_maf']:g}):"""


def _traits_section(tr: dict) -> str:
    """The traits part of the README (empty when the cohort has none)."""
    if not tr["count"]:
        return ""
    k = tr["count"]
    names = ", ".join(f"T{j + 1} {name}" for j, name in enumerate(tr["names"]))
    snps = "\n".join(f"| {z['id']} | {z['chrom']}:{z['pos']} | {z['ref']}>{z['alt']} | T{z['trait']} | "
                     f"{z['effect_per_alt']:+.2f} | {z['alt_freq']:.2f} |" for z in tr["snps"])

    def strength(d: dict) -> str:
        if d["modality"] == "expression":
            return ", ".join(f"{g} {f:+.2f}" for g, f in d["strength"].items())
        return d["rule"]

    drives = "\n".join(f"| T{d['trait']} | {d['modality']} | {d['feature']} | {strength(d)} |" for d in tr["drives"])
    hpo = "\n".join(f"| T{h['trait']} | {h['direction']} {h['threshold']:+g} | {h['id']} | {h['label']} | "
                     f"{tr['realised'].get('hpo_patients', {}).get(h['id'] + ' ' + h['label'], '')} |"
                     for h in tr["hpo_terms"])
    real = tr["realised"]
    corr = ", ".join(f"T{j + 1} {c:.2f}" for j, c in enumerate(real.get("corr_with_genetic_value", [])))
    off = [abs(real["corr_between_traits"][a][b]) for a in range(k) for b in range(a + 1, k)] if k > 1 else [0.0]
    blocks = [z["block"] for z in tr["snps"]]
    where = ("each in a haplotype block of its own" if len(set(blocks)) == len(blocks)
             else "a trait's SNPs in distinct haplotype blocks, some blocks shared between traits")
    return f"""
## Patient-specific traits

Beyond the disease, each patient has {k} continuous traits ({names}), about N(0, 1) each:
`t = sqrt(h2) x genetic + sqrt(1 - h2) x environment` with heritability h2 = {tr['heritability']:g}.
The genetic part adds effect x (ALT dosage - 2 x ALT frequency) over the trait's common SNPs
({', '.join(f"T{j} {n}" for j, n in tr['snps_per_trait'].items())} SNPs; {where}), standardised by its
population SD; the environment is N(0, 1). Realised correlation of trait and genetic value: {corr} (expected
{tr['heritability'] ** 0.5:.2f}); between traits at most {max(off):.2f} in absolute value. Traits are independent of the disease
(not in its liability, severity or AF) and their SNPs sit outside the causal SNPs' blocks.
Image and waveform effects use the trait clipped to ±{tr['clip_for_images_and_waveforms']:g}. Per patient, `truth.json` has
`traits`, `trait_genetic_values`, `trait_hpo` and `trait_effects` (the multipliers applied).

Trait SNPs:

| id | position | alleles | trait | effect per ALT | ALT freq |
| --- | --- | --- | --- | --- | --- |
{snps}

What each trait drives (expression: log-fold per SD of the trait, per gene):

| trait | modality | feature | strength |
| --- | --- | --- | --- |
{drives}

HPO terms of trait extremes (every patient past the threshold carries the term; Tachycardia
can also come from the cardio disease pool):

| trait | rule (SD) | id | label | patients |
| --- | --- | --- | --- | --- |
{hpo}
"""
