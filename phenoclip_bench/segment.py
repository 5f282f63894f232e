"""``--suite segment``: paper 003's Table 1 on simulated cohorts whose lesions follow named genes.

Per cohort: one tiny mri + expression CLIP pretraining, then segmenters trained on the same
patients (those with a mask and expression), the same train / validation / test split, the same
epochs and seed: MGI's fusion decoder on the pretrained encoders with genes, the same decoder
with the gene input blanked (every gene at its training mean: same network, no patient
information), the fusion decoder on randomly initialised encoders with genes, and monai's UNet
and AttentionUnet on the images alone (given the checkpoint only so that their test split is
the same). Reported: held-out Dice and HD95, parameters, training seconds, and the paired
per-patient Dice difference of genes vs blanked genes (Wilcoxon signed-rank).

Two cohorts: the benchmark's shared cohort (``--cohort``, e.g. data/sample, or a simulated one
with the sample's settings), whose lesions are +25 % of white matter and plain to see; and, without
``--quick``, a simulated cohort with fainter lesions (+12 %), where the image alone is ambiguous
and the lesion genes' information should show. ``--quick`` reuses the shared multimodal
checkpoint instead of an mri + expression pretraining and trains 10 epochs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from scipy.stats import wilcoxon

from phenoclip_bench import BenchContext, SuiteResult, Table
from phenoclip_bench.cohort import bench_cohort, pretrained, simulate_into
from phenoclip.data.simulate import SimulationSettings
from phenoclip.preprocess.expression import convert_expression
from phenoclip.preprocess.mri import convert_mri
from phenoclip.pretrain.run import run_pretrain
from phenoclip.pretrain.settings import PretrainSettings
from phenoclip.progress import info
from phenoclip.segment.data import SegmentData
from phenoclip.segment.run import run_segment_train
from phenoclip.segment.settings import FitSettings, SegmentSettings

#: (label, decoder, init, with genes)
METHODS = [
    ("MGI fusion decoder, pretrained encoders, with genes", "fusion", "pretrained", True),
    ("same decoder, genes blanked", "fusion", "pretrained", False),
    ("fusion decoder, random-init encoders, with genes", "fusion", "random", True),
    ("U-Net (monai)", "unet", None, False),
    ("Attention U-Net (monai)", "attention-unet", None, False),
]
#: the fainter cohort: the comparison that matters there, and a baseline
FAINT_METHODS = [METHODS[0], METHODS[1], METHODS[3]]
FAINT_CONTRAST = 0.12
#: (pretraining epochs, segmentation epochs) with and without --quick
EPOCHS = {"quick": (None, 10), "full": (100, 60)}
PAPER_TABLE_1 = "U-Net 0.735, ResU-Net 0.772, DeepLabv3+ 0.840, Attention U-Net 0.830, MGI 0.901 (TCGA-LGG, 2D slices)"


def faint_stores(folder: Path, patients: int, seed: int, contrast: float) -> dict:
    """``mri.h5`` (32^3 at 1.5 mm, with masks) and ``expr.h5`` of a simulated cohort with lesions of ``contrast``."""
    paths = {"mri": folder / "mri.h5", "expr": folder / "expr.h5"}
    if all(p.exists() for p in paths.values()):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    cohort = simulate_into(folder, SimulationSettings(patients=patients, seed=seed, variants=200, signal_seconds=2.0,
                                                    signal_rate=100.0, lesion_contrast=contrast),
                           f"lesion contrast {contrast:+.0%}")
    convert_mri(cohort / "mri" / "manifest.tsv", paths["mri"], spacing=(1.5, 1.5, 1.5), shape=(32, 32, 32))
    convert_expression(cohort / "expression.tsv.gz", paths["expr"], transform="cpm-log1p")
    return paths


def _keep_file(folder: Path, stores: dict) -> Path:
    """Patients with a mask and expression: every method trains and tests on these."""
    data = SegmentData(stores["mri"], stores["expr"])
    path = folder / "keep.txt"
    path.write_text("\n".join(s for s in data.with_masks() if data.has_genes(s)) + "\n")
    return path


def pretrain_mri_expr(folder: Path, stores: dict, epochs: int, seed: int) -> tuple[Path, str]:
    """MGI's pretraining: the ViT against the Mamba gene encoder (CLIP), for a cohort of its own."""
    pre = folder / "pretrain"
    shutil.rmtree(pre, ignore_errors=True)
    info(f"segment: pretraining mri + expr ({epochs} epochs)")
    run_pretrain(PretrainSettings(modalities=["mri", "expr"], data=[str(stores["mri"]), str(stores["expr"])],
                                epochs=epochs, seed=seed, device="cpu"), pre, log=lambda s: None)
    return pre, (f"phenoclip pretrain --modalities mri,expr --data {stores['mri']} --data {stores['expr']} "
                 f"--epochs {epochs} --seed {seed} --out {pre}")


def compare(folder: Path, stores: dict, methods: list, pre: Path, pre_command: str, epochs: int, seed: int,
            result: SuiteResult, title: str, key: str, report_dir: Path) -> None:
    """Train every method on one split from checkpoint ``pre``; add the table, metrics and commands to ``result``."""
    keep = _keep_file(folder, stores)
    result.commands.append(pre_command)
    rows, runs = [], {}
    for label, decoder, init, genes in methods:
        name = f"{decoder}_{init or 'none'}_{'genes' if genes else 'nogenes'}"
        out = folder / name
        shutil.rmtree(out, ignore_errors=True)
        info(f"segment [{key}]: {label} ({epochs} epochs)")
        s = SegmentSettings(images=str(stores["mri"]), out=str(out), genes=str(stores["expr"]) if genes else None,
                            checkpoint=str(pre), decoder=decoder, init=init or "pretrained", keep=str(keep),
                            overlays=3 if label == METHODS[0][0] else 0, fit=FitSettings(epochs=epochs, seed=seed))
        r = runs[label] = run_segment_train(s, log=lambda line: None)
        for i, fig in enumerate(r.get("figures", [])):  # best, median, worst test patient of MGI with genes
            target = f"segment_{key}_overlay_{i + 1}.png"
            shutil.copyfile(out / fig, report_dir / target)
            result.figures.append(target)
        t = r["test"]
        rows.append([label, f"{t['dice_mean']:.3f} ± {t['dice_sd']:.3f}", round(t["hd95_mm_mean"], 2),
                     r["parameters"], round(r["train_seconds"], 1)])
        result.metrics[f"{key}/{name}"] = {
            "dice_mean": t["dice_mean"], "dice_sd": t["dice_sd"], "hd95_mm_mean": t["hd95_mm_mean"],
            "parameters": r["parameters"], "train_seconds": r["train_seconds"], "best_epoch": r["best_epoch"]}
        result.commands.append(
            f"phenoclip segment train --images {stores['mri']} --keep {keep} --decoder {decoder} --epochs {epochs} "
            f"--seed {seed} --checkpoint {pre}" + (f" --init {init}" if decoder == "fusion" else "")
            + (f" --genes {stores['expr']}" if genes else "") + f" --out {out}")
    blanked = {r["sample"]: r["dice"] for r in runs[METHODS[1][0]]["rows"]}
    diff = np.array([r["dice"] - blanked[r["sample"]] for r in runs[METHODS[0][0]]["rows"]])
    p = float(wilcoxon(diff).pvalue) if np.any(diff != 0) else 1.0
    result.metrics[f"{key}/dice_genes_minus_blanked"] = {"mean": float(diff.mean()), "p_wilcoxon": p,
                                                         "n_test": int(len(diff))}
    ours = runs[METHODS[0][0]]["test"]["dice_mean"]
    for label in (METHODS[1][0], METHODS[3][0]):
        if label in runs and runs[label]["test"]["dice_mean"] >= ours:
            result.shortfalls.append(f"{title}: the fusion decoder with genes (Dice {ours:.3f}) does not beat "
                                     f"{label} (Dice {runs[label]['test']['dice_mean']:.3f}) at {epochs} epochs")
    n = runs[METHODS[0][0]]["n"]
    result.tables.append(Table(
        f"{title}: {n['train']} train / {n['validation']} validation / {n['test']} test patients, {epochs} epochs each",
        ["method", "Dice (mean ± sd)", "HD95 (mm)", "parameters", "training s"], rows,
        note=(f"Same patients, split, seed and epochs for every method; the best validation-Dice epoch is kept. "
              f"Paired Dice difference, genes - blanked: {diff.mean():+.3f} (Wilcoxon p = {p:.2g}, "
              f"{len(diff)} test patients).")))


def run(ctx: BenchContext) -> SuiteResult:
    torch.set_num_threads(1)  # shared small machines: OpenMP spinning costs more than a second thread gives
    result = SuiteResult(name="segment")
    pre_epochs, epochs = EPOCHS["quick" if ctx.quick else "full"]
    patients = ctx.patients or 200
    plain = ctx.work / "segment_plain"
    plain.mkdir(parents=True, exist_ok=True)
    # the cohort every learning suite shares (--cohort, or the simulated one): preprocessed once per report
    shared = bench_cohort(ctx).stores
    missing = [m for m in ("mri", "expr") if m not in shared]
    if missing:
        raise RuntimeError(f"the cohort has no {' or '.join(missing)} store: segmentation needs both")
    stores = {"mri": shared["mri"], "expr": shared["expr"]}
    where = f"cohort {ctx.cohort}" if ctx.cohort else f"{patients} simulated patients, lesions +25 % of white matter"
    if ctx.quick:
        # the checkpoint the other learning suites share (its ViT and Mamba were pretrained with the
        # other modalities too): no pretraining of its own within the --quick budget
        pre, pre_command = pretrained(ctx, bench_cohort(ctx))
    else:
        pre, pre_command = pretrain_mri_expr(plain, stores, pre_epochs, ctx.seed)
    compare(plain, stores, METHODS, pre, pre_command, epochs, ctx.seed, result,
            f"Lesion segmentation on held-out patients, paper 003 Table 1 layout ({where})", "plain", ctx.out)
    if not ctx.quick:
        faint = ctx.work / "segment_faint"
        stores = faint_stores(faint, patients, ctx.seed + 11, FAINT_CONTRAST)
        pre, pre_command = pretrain_mri_expr(faint, stores, pre_epochs, ctx.seed)
        compare(faint, stores, FAINT_METHODS, pre, pre_command, epochs, ctx.seed, result,
                f"Fainter lesions ({patients} simulated patients, lesions +{FAINT_CONTRAST:.0%} of white matter)",
                "faint", ctx.out)
    result.tables[-1].note += f" Paper 003 Table 1 for reference: {PAPER_TABLE_1}."
    return result
