"""``--suite ssl``: paper 002's label-efficiency experiment, SCARF / VIME / BYOL against random init.

Per tabular modality (expression; with the variant store's dosage table too where the cohort has
one): one single-modality pretraining per objective (tiny preset, MLP encoder, the same seed, so
the same pretraining validation patients), then ``phenoclip finetune`` of the ``disease`` label
at label fractions 0.02 to 1 with repeated training subsets, in ``linear`` (frozen encoder,
logistic-regression head) and ``full`` (encoder fine-tuned too) mode. The random-init baseline is
``run_finetune``'s ``scratch`` model: the same architecture with fresh weights, the same head, the
same subsets. Every fine-tuning run uses the same held-out test split (checked); it is drawn from
the pretraining run's validation patients first, so the test patients were not even seen unlabelled.

Beside them, a reference that no encoder can take away: a logistic regression on the raw,
standardised features of the same training subsets, C by inner CV (paper 002's "traditional
supervised model"; ``run_finetune``'s ``logistic`` baseline).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from phenoclip_bench import BenchContext, SuiteResult
from phenoclip_bench.cohort import bench_cohort, pretrained
from phenoclip_bench.ssl_plots import RANDOM, RAW, compare_to_random, plot_ssl_curves, shortfall_lines, tables_for
from phenoclip.finetune.heads import HeadSettings
from phenoclip.finetune.labels import TaskLabels, held_out_split, load_task_labels
from phenoclip.finetune.run import FinetuneSettings, run_finetune
from phenoclip.progress import info
from phenoclip.store_read import open_store
from phenoclip.store_schema import SCHEMA_MODALITY

OBJECTIVES = ["scarf", "vime", "byol"]
FRACTIONS = [0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
MODES = ["linear", "full"]
LABEL_COLUMN = "disease"
#: pretraining epochs, fine-tuning repeats, full-mode epochs; and the modalities run
#: (variant dosages carry little disease signal in the sample cohort and double the cost: full run only)
SETTINGS = {"quick": {"pretrain_epochs": 40, "repeats": 3, "full_epochs": 30, "modalities": ["expr"]},
            "full": {"pretrain_epochs": 100, "repeats": 5, "full_epochs": 30, "modalities": ["expr", "gene"]}}
#: a larger pretraining validation share than the default 0.2, so the 20 % fine-tuning test split
#: fits inside it: test patients are then never seen by pretraining, not even unlabelled
VAL_FRACTION = 0.3
TEST_FRACTION = 0.2


def feasible_fractions(store: Path, labels: Path, fractions: list[float] = FRACTIONS) -> list[float]:
    """The ``fractions`` that leave every class at least one training patient (small cohorts lose 0.02).

    The per-class pool sizes do not depend on the seed: the test split takes a fixed share of each class.
    """
    samples, _ = raw_features(store)
    task = labels_in(labels, samples)
    pool = ~held_out_split(task, TEST_FRACTION, 0)
    sizes = [int((pool & (task.y == c)).sum()) for c in np.unique(task.y)]
    return [f for f in fractions
            if min(np.floor(n * f + 0.5) for n in sizes) >= 1 and sum(np.floor(n * f + 0.5) for n in sizes) >= 2]


def labels_in(labels: Path, samples: list[str]):
    """The ``disease`` labels (TaskLabels) of the patients in ``samples``, as ``run_finetune`` keeps them.

    Unlike :func:`~phenoclip.finetune.labels.restrict_to` it does not warn: ``run_finetune`` already did.
    """
    task = load_task_labels(f"{labels}:{LABEL_COLUMN}")
    keep = np.isin(task.samples, samples)
    return TaskLabels(task.source, task.column, task.task, [s for s, k in zip(task.samples, keep) if k],
                      task.y[keep], task.classes)


def _ft_command(ckpt: Path, store: Path, labels: Path, out: Path, mode: str, fractions: list[float], repeats: int,
                seed: int, baseline: str, epochs: int) -> str:
    return (f"phenoclip finetune --checkpoint {ckpt} --data {store} --labels {labels}:{LABEL_COLUMN} --out {out} "
            f"--mode {mode} --label-fractions {','.join(f'{f:g}' for f in fractions)} --repeats {repeats} "
            f"--test-fraction {TEST_FRACTION} --baseline {baseline} --seed {seed}"
            + (f" --epochs {epochs}" if mode == "full" else ""))


def _summary(metrics: dict, model: str) -> list[dict]:
    """The rows of ``metrics.json``'s summary for one model, with the numbers this suite reports."""
    keep = ("fraction", "n_train_mean", "auroc_mean", "auroc_sd", "accuracy_mean", "accuracy_sd", "n_repeats")
    return [{k: row[k] for k in keep} for row in metrics["summary"] if row["model"] == model]


def _test_split(folder: Path) -> list[str]:
    return json.loads((folder / "state.json").read_text())["split"]["test"]


def finetune_all(ctx: BenchContext, modality: str, store: Path, labels: Path, checkpoints: dict[str, Path],
                 mode: str, fractions: list[float], repeats: int, epochs: int
                 ) -> tuple[dict[str, list[dict]], list[str], dict]:
    """One ``run_finetune`` per objective in ``mode``; the first also fits the random-init baseline and
    the logistic regression on the raw features (C by inner CV, on the same subsets).

    Returns ({method: summary rows}, commands, split facts). Raises if the runs' test splits differ
    (the shared baseline would not be comparable then).
    """
    results: dict[str, list[dict]] = {}
    commands, splits, facts = [], {}, {}
    for i, objective in enumerate(checkpoints):
        # same architecture, seed and subsets: one random init and one raw-feature regression serve all
        baseline = "scratch,logistic" if i == 0 else "none"
        out = ctx.work / "ssl_finetune" / f"{modality}_{mode}_{objective}"
        shutil.rmtree(out, ignore_errors=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        info(f"ssl: {modality} {mode} fine-tuning on the {objective} encoder")
        metrics = run_finetune(FinetuneSettings(
            checkpoint=str(checkpoints[objective]), data=[str(store)], labels=f"{labels}:{LABEL_COLUMN}",
            out=str(out), mode=mode, fractions=list(fractions), repeats=repeats, test_fraction=TEST_FRACTION,
            seed=ctx.seed, baseline=baseline, head=HeadSettings(mode=mode, epochs=epochs)))
        commands.append(_ft_command(checkpoints[objective], store, labels, out, mode, fractions, repeats, ctx.seed,
                                    baseline, epochs))
        results[objective] = _summary(metrics, "pretrained")
        if i == 0:
            results[RANDOM] = _summary(metrics, "scratch")
            results[RAW] = _summary(metrics, "logistic_raw")
        splits[objective] = _test_split(out)
        facts = {"n_labelled": metrics["n_labelled"], "n_test": metrics["n_test"],
                 "classes": metrics["task"]["classes"],
                 "n_test_held_out_of_pretraining": min(facts.get("n_test_held_out_of_pretraining", 10**9),
                                                       metrics["n_test_held_out_of_pretraining"])}
    first = next(iter(splits.values()))
    if any(s != first for s in splits.values()):
        raise RuntimeError(f"{modality} {mode}: the fine-tuning runs drew different test splits")
    facts["test_samples"] = first
    return results, commands, facts


def raw_features(store: Path) -> tuple[list[str], np.ndarray]:
    """(samples, (N, F) float64) of a tabular store: expression values or variant dosages.

    Missing dosage calls (negative) are NaN here (only the training subset may set their imputed
    value). Constant columns are harmless (the scaler leaves them at zero).
    """
    with open_store(store) as s:
        modality = SCHEMA_MODALITY.get(s.schema)
        name = {"expr": "values", "gene": "dosage"}[modality]
        x = s[name][...].astype(np.float64)
        samples = list(s.samples)
    x = x.reshape(len(samples), -1)
    if modality == "gene":
        x[x < 0] = np.nan
    return samples, x


def run(ctx: BenchContext) -> SuiteResult:
    torch.set_num_threads(1)  # the benchmark's CPU budget: two cores shared by every suite
    cfg = SETTINGS["quick" if ctx.quick else "full"]
    cohort = bench_cohort(ctx)
    if cohort.labels is None:
        raise RuntimeError("the ssl suite needs a labels.tsv with a 'disease' column beside the cohort")
    result = SuiteResult(name="ssl")
    modalities = [m for m in cfg["modalities"] if m in cohort.stores]
    if not modalities:
        raise RuntimeError("the ssl suite needs a tabular store (expression or variants) in the cohort")
    for modality in modalities:
        store = cohort.stores[modality]
        fractions = feasible_fractions(store, cohort.labels)
        if len(fractions) < 2:
            raise RuntimeError(f"too few labelled patients per class in the {modality} store for a label-fraction "
                               "curve (fewer than two label fractions leave every class a training patient)")
        checkpoints = {}
        for objective in OBJECTIVES:
            folder, command = pretrained(ctx, cohort, modalities=[modality], objectives=[objective],
                                         epochs=cfg["pretrain_epochs"], architectures={modality: "mlp"},
                                         val_fraction=VAL_FRACTION)
            checkpoints[objective] = folder
            result.commands.append(command)
        by_mode, facts_by_mode = {}, {}
        for mode in MODES:
            by_mode[mode], commands, facts_by_mode[mode] = finetune_all(
                ctx, modality, store, cohort.labels, checkpoints, mode, fractions, cfg["repeats"], cfg["full_epochs"])
            result.commands += commands
        facts = facts_by_mode[MODES[0]]
        if any(f["test_samples"] != facts["test_samples"] for f in facts_by_mode.values()):
            raise RuntimeError(f"{modality}: linear and full fine-tuning drew different test splits")
        figure = "ssl_curves.png" if modality == "expr" else f"ssl_curves_{modality}.png"
        plot_ssl_curves(by_mode, ctx.out / figure, modality, facts["n_test"])
        result.figures.append(figure)
        result.tables += tables_for(modality, by_mode, facts, cfg)
        result.metrics[modality] = {
            "settings": {**{k: v for k, v in cfg.items() if k != "modalities"}, "fractions": fractions,
                         "val_fraction": VAL_FRACTION, "test_fraction": TEST_FRACTION, "architecture": "mlp",
                         "preset": "tiny", "seed": ctx.seed},
            **{k: v for k, v in facts.items() if k != "test_samples"},
            "results": by_mode,
            "not_beating_random_init": {mode: compare_to_random(by_mode[mode]) for mode in MODES}}
        result.shortfalls += [f"{modality}, {mode} fine-tuning: {line}" for mode in MODES
                              for line in shortfall_lines(by_mode[mode])]
    return result
