"""Write a drawn :class:`~phenoclip.data.simulate.cohort.Cohort` in the layout users bring.

Paths are fixed (later steps and users' scripts rely on them); see the package docstring.
"""

from __future__ import annotations

import os

import numpy as np

from phenoclip.data.simulate import mri, signals, writers
from phenoclip.data.simulate.cohort import Cohort, mri_rng, signal_rng
from phenoclip.data.simulate.settings import rng_for
from phenoclip.data.simulate.contigs import CHROM_LENGTHS
from phenoclip.data.simulate.genome import DISEASES
from phenoclip.data.simulate.phenotypes import phenopacket
from phenoclip.progress import track

PGS_ID = "PGS_SIM001"
PGS_NOISE_SNPS = 40


def write_labels(folder: str, c: Cohort) -> None:
    rows = [(s, DISEASES[d], int(d > 0), f"{v:.4f}") for s, d, v in zip(c.samples, c.disease, c.severity)]
    writers.write_tsv(os.path.join(folder, "labels.tsv"), ["sample", "disease", "affected", "severity"], rows)


def write_variants(folder: str, c: Cohort) -> dict:
    """VCF (+ tabix), genes.bed and the PGS scoring file; returns the PGS rows for truth.json."""
    rows = np.flatnonzero(c.has("variants"))
    writers.write_vcf(folder, c.variants, [c.samples[i] for i in rows], rows, CHROM_LENGTHS)
    writers.write_bed(os.path.join(folder, "genes.bed"), c.layout.genes)
    return write_pgs(folder, c)


def write_pgs(folder: str, c: Cohort) -> dict:
    """PGS_SIM001: the cardio liability (its three causal SNPs with their true log-odds per ALT
    allele) plus small noise weights on other common autosomal SNPs, as real scores carry.

    About a third of the rows name the REF allele as effect allele, with the weight negated so
    that the score still ranks patients the same way.
    """
    rng = rng_for(c.cfg, "layout", 1)
    t = c.variants
    row_of_snp = {int(s): m for m, s in enumerate(t.block_snp) if s >= 0}
    causal = [(row_of_snp[cz["snp"]], cz["effect"]) for cz in c.layout.causal if cz["disease"] == "cardio"]
    causal_rows = {m for m, _ in causal}
    candidates = [m for m in range(len(t.pos))
                  if t.kind[m] == "block" and t.chrom[m] != "chrX" and m not in causal_rows]
    noise = rng.choice(candidates, size=min(PGS_NOISE_SNPS, len(candidates)), replace=False)
    entries = causal + [(int(m), float(rng.normal(0, 0.05))) for m in noise]
    entries.sort(key=lambda e: e[0])    # VCF order
    flip = rng.random(len(entries)) < 1 / 3
    flip[[k for k, (m, _) in enumerate(entries) if m in causal_rows][0]] = True   # at least one causal row
    out_rows, truth_rows = [], []
    for (m, w), f in zip(entries, flip):
        ea, oa, weight = (t.ref[m], t.alt[m], -w) if f else (t.alt[m], t.ref[m], w)
        out_rows.append((t.id[m], t.chrom[m].removeprefix("chr"), int(t.pos[m]), ea, oa, f"{weight:.6f}"))
        truth_rows.append({"id": str(t.id[m]), "effect_allele_is_ref": bool(f), "causal": m in causal_rows})
    writers.write_pgs(os.path.join(folder, "pgs", f"{PGS_ID}.txt"), PGS_ID, out_rows,
                      "Simulated cardio disease liability")
    return {"pgs_id": PGS_ID, "trait": "cardio liability", "variants": len(out_rows),
            "effect_allele_is_ref": sum(r["effect_allele_is_ref"] for r in truth_rows),
            "causal_ids": [r["id"] for r in truth_rows if r["causal"]],
            "chr_name_style": "no chr prefix (1, 2, X) as in PGS Catalog files; the VCF uses chr1, chr2, chrX"}


def write_expression(folder: str, c: Cohort) -> None:
    rows = np.flatnonzero(c.has("expression"))
    names = [g.name for g in c.layout.genes]
    body = ([c.samples[i], *c.counts[i].tolist()] for i in rows)
    writers.write_tsv_gz(os.path.join(folder, "expression.tsv.gz"), ["sample", *names], body)


def _save_nifti(path: str, data: np.ndarray, affine: np.ndarray) -> None:
    # imported here: nibabel loads only when MRI files are written
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)       # scanner coordinates, both forms, as scanners write them
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    img.set_data_dtype(data.dtype)
    nib.save(img, path)


def write_mri(folder: str, c: Cohort) -> list[dict]:
    """Images, masks and the manifest; returns each patient's mask voxel count (None if absent)."""
    facts: list = [None] * len(c.samples)
    manifest = []
    for d in ("images", "masks"):
        os.makedirs(os.path.join(folder, "mri", d), exist_ok=True)
    present = np.flatnonzero(c.has("mri"))
    for i in track(present, "simulate: MRI", unit="patients"):
        s = c.samples[i]
        img, mask, f = mri.render(c.cfg.volume_shape, c.cfg.voxel_spacing, c.head_centres[i], c.head_radii[i],
                                  c.lesions[i], c.cfg.lesion_contrast, mri_rng(c.cfg, i),
                                  float(c.ventricle_scale[i]), float(c.white_level[i]))
        image, lesion = f"images/{s}_T1.nii.gz", f"masks/{s}_lesion.nii.gz"
        _save_nifti(os.path.join(folder, "mri", image), img, c.affines[i])
        _save_nifti(os.path.join(folder, "mri", lesion), mask, c.affines[i])
        manifest.append((s, image, lesion))
        facts[i] = f
    writers.write_tsv(os.path.join(folder, "mri", "manifest.tsv"), ["sample", "image", "mask"], manifest)
    return facts


def write_signals(folder: str, c: Cohort) -> tuple[int, float]:
    """EDF per patient and the manifest; returns (samples per channel, record duration)."""
    rate = c.cfg.signal_rate
    duration, n = signals.record_layout(c.cfg.signal_seconds, rate)
    os.makedirs(os.path.join(folder, "signals"), exist_ok=True)
    manifest = []
    for i in track(np.flatnonzero(c.has("signals")), "simulate: signals", unit="patients"):
        s = c.samples[i]
        ecg, ppg = signals.synthesize(c.beats[i], bool(c.af[i]), n, rate, signal_rng(c.cfg, i),
                                      float(c.t_wave_scale[i]), float(c.ppg_scale[i]), float(c.dicrotic_ratio[i]))
        signals.write_edf(os.path.join(folder, "signals", f"{s}.edf"), s, bool(c.male[i]), ecg, ppg, rate, duration)
        manifest.append((s, f"{s}.edf"))
    writers.write_tsv(os.path.join(folder, "signals", "manifest.tsv"), ["sample", "path"], manifest)
    return n, duration


def write_phenotypes(folder: str, c: Cohort) -> None:
    rows = [(s, t) for s, terms in zip(c.samples, c.terms) for t in terms]
    writers.write_tsv(os.path.join(folder, "phenotypes", "hpo.tsv"), ["sample", "hpo_id"], rows)
    for s, male, terms in zip(c.samples, c.male, c.terms):
        writers.write_json(os.path.join(folder, "phenotypes", "phenopackets", f"{s}.json"),
                           phenopacket(s, bool(male), terms))


def list_files(folder: str) -> list[str]:
    """Every file under ``folder``, relative, sorted, with ``/`` separators."""
    out = []
    for root, _, files in os.walk(folder):
        for f in files:
            out.append(os.path.relpath(os.path.join(root, f), folder).replace(os.sep, "/"))
    return sorted(out)
