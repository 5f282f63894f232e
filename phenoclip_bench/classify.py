"""``--suite classify``: disease classification per modality and fused, paper 000's Table 2.

One cohort (``bench_cohort``), the shared pretrained multimodal model (``pretrained`` with its
defaults), the ``disease`` label (control / neuro / cardio) and ONE fixed, stratified test split
by patient (:func:`phenoclip.finetune.labels.held_out_split`, which takes the pretraining run's
validation patients first, so the encoders never saw the test patients). Every method is fitted
on the remaining (training) patients only; a modality's row uses the split's patients that have
that modality. Methods:

1. pretrained model, linear probe: logistic regression on the frozen embeddings of the modality
   (for "all": the embeddings concatenated, zeros where absent, as ``phenoclip finetune --fusion
   concat``), standardised, with C chosen by 3-fold CV on the training patients. The "all" row is
   re-run through :func:`phenoclip.finetune.run.run_finetune` (the CLI's code path) and the two
   must agree;
2. ElasticNet early fusion on hand-made features (:mod:`phenoclip_bench.classify_features`);
3. single-modality networks from scratch (:mod:`phenoclip_bench.classify_scratch`): an MLP on
   dosages, a 3D CNN on MRI, a 1D CNN on the ECG/PPG signals.

Macro AUROC and macro F1 (one-vs-rest, scikit-learn) via
:func:`phenoclip.eval.metrics.classification_metrics`; ROC curves and reliability diagrams of the
pretrained "all" probe beside the best baseline.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from phenoclip_bench import BenchContext, SuiteResult, Table
from phenoclip_bench.classify_features import (BUILDERS, N_GENE_PCS, early_fusion, fit_elasticnet, fit_probe,
                                               full_proba)
from phenoclip_bench.classify_scratch import (TrainSettings, gene_mlp, mri_cnn3d, predict_proba, signal_cnn1d,
                                              train_classifier)
from phenoclip_bench.classify_report import ENET, PROBE, SCRATCH, Rows, note, shortfalls
from phenoclip_bench.classify_report import figures as report_figures
from phenoclip_bench.cohort import bench_cohort, pretrained
from phenoclip.data.batch import IMAGES, SIGNALS
from phenoclip.data.multimodal import CohortStores
from phenoclip.eval.gene_probe import fit_gene_probe
from phenoclip.eval.linear_models import probe_scaling
from phenoclip.finetune.heads import HeadSettings
from phenoclip.finetune.labels import held_out_split, load_task_labels, restrict_to
from phenoclip.finetune.run import FinetuneSettings, run_finetune
from phenoclip.models.finetune import FinetuneModel
from phenoclip.pretrained import embed_samples, expr_stats, load_pretrained
from phenoclip.progress import info

TEST_FRACTION = 0.2
#: modalities of the table, in order; "all" is the fusion of every modality present
ORDER = ["gene", "expr", "mri", "signal", "hpo"]
#: CV grids, with and without --quick
PROBE_C = {"quick": [0.01, 0.1, 1.0], "full": [0.003, 0.01, 0.03, 0.1, 0.3, 1.0]}
ENET_GRID = {"quick": {"C": [0.05, 0.5], "l1_ratio": [0.2, 0.8]},
             "full": {"C": [0.02, 0.05, 0.2, 1.0], "l1_ratio": [0.1, 0.5, 0.9]}}
SCRATCH_EPOCHS = {"quick": (60, 10), "full": (150, 15)}  # (max epochs, patience)
ENET_MAX_ITER = {"quick": 100, "full": 300}


def _mode(ctx: BenchContext) -> str:
    return "quick" if ctx.quick else "full"


def run(ctx: BenchContext) -> SuiteResult:
    """The suite (see the module docstring), with torch and the BLAS libraries on one thread each."""
    torch.set_num_threads(1)
    # OpenBLAS's own threads fight over the two cores the benchmark has: one SVD took 4 s instead of 0.15 s
    with threadpool_limits(limits=1):
        return _run(ctx)


def _run(ctx: BenchContext) -> SuiteResult:
    t_start = time.perf_counter()
    mode = _mode(ctx)
    cohort = bench_cohort(ctx)
    if cohort.labels is None:
        raise RuntimeError("the cohort has no labels.tsv with a disease column")
    ckpt_dir, pretrain_cmd = pretrained(ctx, cohort)
    t_ready = time.perf_counter()
    pre = load_pretrained(ckpt_dir)
    stores = CohortStores(cohort.data())
    mods = [m for m in ORDER if m in stores.by_modality and m in pre.model.encoders]
    # the same labelled set and split as `phenoclip finetune` on these stores (checked below)
    usable = [x for x in stores.samples if any(stores.present(m, [x])[0] for m in mods)]
    labels = restrict_to(load_task_labels(f"{cohort.labels}:disease"), usable, "bench stores")
    test = held_out_split(labels, TEST_FRACTION, ctx.seed, prefer=pre.validation_samples)
    train, y, samples = ~test, labels.y, labels.samples
    never_seen = int(sum(samples[i] in set(pre.validation_samples) for i in np.flatnonzero(test)))
    info(f"classify: {len(samples)} labelled patients, test {int(test.sum())} ({never_seen} never seen in "
         f"pretraining), modalities {','.join(mods)}")
    rows = Rows(list(labels.classes))

    # 1. pretrained: frozen embeddings + linear probe
    stats = expr_stats(pre, stores)
    emb, present, emb_all = {}, {}, {}
    # a head over every modality reads signals' summed embedding (FinetuneModel.default_components)
    all_blocks = FinetuneModel.default_components(pre.model, mods, "concat", readout=True)
    for m in mods:
        emb[m], present[m] = embed_samples(pre.model, stores, m, samples, stats=stats if m == "expr" else None,
                                           readout=True, components=True)  # as finetune --mode linear reads them
        emb_all[m] = emb[m] if m in all_blocks or not pre.model.probe_components(m) else embed_samples(
            pre.model, stores, m, samples, stats=stats if m == "expr" else None, readout=True)[0]
    probe_c = {}
    for m in mods + ["all"]:
        x = np.concatenate([emb_all[k] for k in mods], axis=1) if m == "all" else emb[m]
        have = np.ones(len(samples), bool) if m == "all" else present[m]
        tr, te = train & have, test & have
        natural = (np.concatenate([pre.model.probe_natural(k, components=k in all_blocks) for k in mods])
                   if m == "all" else pre.model.probe_natural(m))  # columns the probe only centres
        if m == "gene" and pre.model.probe_components("gene"):  # as finetune's gene head: its honest choice
            mean, scale = probe_scaling(x[tr], natural)
            z, honest = (x - mean) / scale, (pre.honest_gene_block(samples, x) - mean) / scale
            probe = fit_gene_probe(z[tr], honest[tr], y[tr], pre.model.embed_dim, len(labels.classes), ctx.seed)
            probe_c[m] = probe.chosen["gene_probe"]
            rows.add(m, PROBE, y[te], probe.predict(z[te]), int(tr.sum()), probe.chosen)
            continue
        model, probe_c[m] = fit_probe(x[tr], y[tr], PROBE_C[mode], ctx.seed, natural)
        rows.add(m, PROBE, y[te], full_proba(model, x[te], len(labels.classes)), int(tr.sum()), {"C": probe_c[m]})
    finetune_cmd, finetune_check = _finetune_all(ctx, cohort, ckpt_dir, probe_c["all"], samples, test, rows)
    t_probe = time.perf_counter()

    # 2. ElasticNet on hand-made features, per modality and early fusion
    blocks, enet_seconds, feature_names = {}, {}, {}
    for m in mods:
        blocks[m], present_m, feature_names[m] = BUILDERS[m](cohort.stores[m], samples, train)
        if not (present_m == present[m]).all():
            raise RuntimeError(f"{m}: the store and the dataset disagree on which patients are present")
    for m in mods + ["all"]:
        t0 = time.perf_counter()
        x = early_fusion(blocks, train) if m == "all" else blocks[m]
        have = np.ones(len(samples), bool) if m == "all" else present[m]
        tr, te = train & have, test & have
        model, chosen = fit_elasticnet(x[tr], y[tr], ENET_GRID[mode], ctx.seed, max_iter=ENET_MAX_ITER[mode])
        enet_seconds[m] = time.perf_counter() - t0
        rows.add(m, ENET, y[te], full_proba(model, x[te], len(labels.classes)), int(tr.sum()),
                 {**chosen, "n_features": int(x.shape[1]), "seconds": enet_seconds[m]})
    t_enet = time.perf_counter()

    # 3. single-modality networks from scratch
    scratch_log = _scratch_rows(ctx, cohort, stores, samples, train, test, present, blocks, y, rows)
    t_scratch = time.perf_counter()

    figures = report_figures(ctx, rows)
    table = Table(f"Disease classification (control / neuro / cardio) on one held-out test split: "
                  f"{int(test.sum())} of {len(samples)} patients", ["modality", "method", "macro AUROC",
                                                                    "macro F1", "n train", "n test"],
                  rows.rows, note=note(rows, mods, never_seen, int(test.sum()), probe_c, scratch_log,
                                        finetune_check, feature_names, ENET_MAX_ITER[mode]))
    rows.metrics.update({"n_labelled": len(samples), "n_test": int(test.sum()), "n_test_never_seen": never_seen,
                         "seconds_setup": t_ready - t_start, "seconds_probe": t_probe - t_ready,
                         "seconds_elasticnet": t_enet - t_probe, "seconds_scratch": t_scratch - t_enet,
                         "finetune_cli_matches_probe": finetune_check["matches"],
                         "finetune_cli_auroc": finetune_check["auroc"]})
    commands = [pretrain_cmd, finetune_cmd,
                "# per-modality probes: the same logistic head on one modality's frozen embeddings, same split",
                "# ElasticNet and scratch networks: in-process (scikit-learn, torch), no CLI equivalent"]
    verdict = shortfalls(rows.rows, mods + ["all"])
    listed = [part.strip().strip("*") for part in verdict.split("**") if "falls short" in part]
    return SuiteResult(name="classify", tables=[table], figures=figures, commands=commands, metrics=rows.metrics,
                       shortfalls=listed)


def _finetune_all(ctx: BenchContext, cohort, ckpt_dir: Path, c: float, samples: list[str], test: np.ndarray,
                  rows: Rows) -> tuple[str, dict]:
    """The "all" probe through ``run_finetune`` (the CLI's code): its split and AUROC must match ours."""
    out = ctx.work / "classify_finetune"
    shutil.rmtree(out, ignore_errors=True)
    labels_arg = f"{cohort.labels}:disease"
    result = run_finetune(FinetuneSettings(checkpoint=str(ckpt_dir), data=cohort.data(), labels=labels_arg,
                                           out=str(out), fractions=[1.0], repeats=1, test_fraction=TEST_FRACTION,
                                           seed=ctx.seed, baseline="none", head=HeadSettings(c=c)))
    their_test = set(json.loads((out / "state.json").read_text())["split"]["test"])
    ours = {samples[i] for i in np.flatnonzero(test)}
    auroc = float(result["rows"][0]["auroc"])
    probe_auroc = rows.metrics[f"all/{PROBE}/auroc"]
    check = {"auroc": auroc, "same_split": their_test == ours,
             "matches": bool(their_test == ours and abs(auroc - probe_auroc) < 1e-3)}
    command = (f"phenoclip finetune --checkpoint {ckpt_dir} {cohort.data_args()} --labels {labels_arg} "
               f"--mode linear --label-fractions 1 --repeats 1 --test-fraction {TEST_FRACTION} --baseline none "
               f"--C {c:g} --seed {ctx.seed} --out {out}")
    return command, check


def _scratch_rows(ctx, cohort, stores, samples, train, test, present, blocks, y, rows: Rows) -> dict:
    """MLP (dosages), 3D CNN (MRI), 1D CNN (signals) trained from scratch on the training patients."""
    max_epochs, patience = SCRATCH_EPOCHS[_mode(ctx)]
    n_classes = len(rows.classes)
    inputs = {}
    if "gene" in blocks:
        n_pcs = min(N_GENE_PCS, blocks["gene"].shape[1])
        inputs["gene"] = (blocks["gene"][:, n_pcs:n_pcs + stores.by_modality["gene"].shapes["dosage"][0]],
                          lambda x: gene_mlp(x.shape[1], n_classes))
    for m, key, build in (("mri", IMAGES, lambda x: mri_cnn3d(n_classes, x.shape[1])),
                          ("signal", SIGNALS, lambda x: signal_cnn1d(x.shape[1], n_classes))):
        if m in stores.by_modality and stores.by_modality[m].cache is not None:
            ms = stores.by_modality[m]
            arr = ms.cache[key]
            x = np.zeros((len(samples), *arr.shape[1:]), np.float32)
            for i, s in enumerate(samples):
                if s in ms.row:
                    x[i] = arr[ms.row[s]]
            inputs[m] = (x, build)
    log = {}
    for m, (x, build) in inputs.items():
        t0 = time.perf_counter()
        tr, te = train & present[m], test & present[m]
        torch.manual_seed(ctx.seed)
        net = build(x)
        fit = train_classifier(net, x[tr], y[tr], TrainSettings(max_epochs=max_epochs, patience=patience), ctx.seed)
        seconds = time.perf_counter() - t0
        n_params = sum(p.numel() for p in net.parameters())
        log[m] = {"epochs": fit.epochs_run, "best_epoch": fit.best_epoch, "params": n_params, "seconds": seconds}
        info(f"classify: {SCRATCH[m]}: {fit.epochs_run} epochs (best {fit.best_epoch}), {seconds:.1f} s")
        rows.add(m, SCRATCH[m], y[te], predict_proba(net, x[te]), int(tr.sum()),
                 {**log[m], "n_fit": fit.n_fit, "n_val": fit.n_val})
    return log
