"""The synthetic cohort behind ``phenoclip simulate``.

A latent disease state (control / neuro / cardio, with severity) is planted in every modality,
together with up to four patient-specific, partly heritable continuous traits (trait SNPs ->
expression genes, MRI ventricles / head size / white matter, heart rate and waveform shape, HPO
terms of trait extremes), and written in the formats users bring::

    DIR/README.md, truth.json, labels.tsv
    DIR/variants.vcf.gz (+ .tbi), genes.bed, pgs/PGS_SIM001.txt
    DIR/expression.tsv.gz
    DIR/mri/manifest.tsv, mri/images/<sample>_T1.nii.gz, mri/masks/<sample>_lesion.nii.gz
    DIR/signals/manifest.tsv, signals/<sample>.edf
    DIR/phenotypes/hpo.tsv, phenotypes/phenopackets/<sample>.json

Modules: ``config`` (knobs and random streams), ``contigs`` (contig lengths, chrX's haploid span),
``blocks`` (haplotype blocks: founders or segments), ``genome`` (causal SNPs, special sites, genes),
``coalescent`` (msprime segments for ``--genotypes coalescent``),
``latent`` (disease, severity, presence), ``traits`` (trait SNPs and genes, per-patient traits
and what they set), ``genotypes``, ``expression``, ``mri``, ``signals``,
``phenotypes``, ``cohort`` (draws everything), ``output`` / ``writers`` (files), ``truth`` and
``readme`` (what was planted).
"""

from __future__ import annotations

import os
import time

from phenoclip.data.simulate import output, writers
from phenoclip.data.simulate.cohort import draw_cohort
from phenoclip.data.simulate.readme import readme_text
from phenoclip.data.simulate.settings import SimulationSettings
from phenoclip.data.simulate.truth import build_truth
from phenoclip.progress import info

__all__ = ["SimulationSettings", "simulate_cohort"]


def simulate_cohort(out_dir: str | os.PathLike, cfg: SimulationSettings | None = None) -> dict:
    """Simulate a cohort into ``out_dir`` and return a short summary of counts for the log.

    ``out_dir`` must not exist or be empty and its parent must exist
    (:class:`~phenoclip.errors.OutputError` otherwise). Files are written into
    ``.NAME.tmp-PID`` beside it and renamed at the end, so a failed or killed run leaves no
    ``out_dir``. The same ``cfg`` (seed included) gives identical files.
    """
    cfg = cfg or SimulationSettings()
    t0 = time.perf_counter()
    with writers.staged_folder(out_dir) as tmp:
        info(f"simulate: drawing {cfg.patients} patients (seed {cfg.seed})")
        c = draw_cohort(cfg)
        output.write_labels(tmp, c)
        pgs = output.write_variants(tmp, c)
        output.write_expression(tmp, c)
        mask_voxels = output.write_mri(tmp, c)
        n_samples, record_duration = output.write_signals(tmp, c)
        output.write_phenotypes(tmp, c)
        # README and truth.json list every file, themselves included
        files = sorted(output.list_files(tmp) + ["README.md", "truth.json"])
        truth = build_truth(c, pgs, mask_voxels, n_samples, record_duration, files)
        writers.write_json(os.path.join(tmp, "truth.json"), truth)
        writers.write_text(os.path.join(tmp, "README.md"), readme_text(truth, os.fspath(out_dir)))
    counts = truth["disease_model"]["realised_counts"]
    return {
        "patients": cfg.patients,
        "control/neuro/cardio": f"{counts['control']}/{counts['neuro']}/{counts['cardio']}",
        "variant_sites": truth["variants"]["sites"],
        "with_variants": int(c.has("variants").sum()),
        "with_expression": int(c.has("expression").sum()),
        "with_mri": int(c.has("mri").sum()),
        "with_signals": int(c.has("signals").sum()),
        "af_patients": int(c.af.sum()),
        "files": len(files),
        "seconds": round(time.perf_counter() - t0, 2),
    }
