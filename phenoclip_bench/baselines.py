"""``--suite baselines``: do the pretrained embeddings beat what a user fits in ten lines of scikit-learn?

Over several pretraining seeds (3 with ``--quick``, 5 without), each seed drawing its own
held-out patients (the pretraining run's validation split; every figure below is measured on
them), ``phenoclip pretrain`` runs with its defaults (CLIP over every modality pair, with SCARF on
expression beside it; SCARF for a cohort of one tabular modality) and is compared, on the same
patients, with:

* **classification** (the cohort's first label column): ``phenoclip finetune --mode linear``'s
  probe (logistic regression on the frozen, standardised embeddings, C by inner CV) against
  logistic regression (C by inner CV) and an elastic net on the raw standardised features of the
  same modality (a recording read as its amplitude spectra, as every classic baseline here reads
  it; for signals also logistic regression on the principal components of those spectra, the
  strongest classic model of a recording measured; for genotypes beside expression also logistic
  regression on the variants an eQTL screen keeps, :mod:`phenoclip.eval.eqtl_screen`), at label
  fractions 0.1-1 with
  repeated nested subsets, per modality and fused
  (every modality but hpo; raw features fused with equal weight per modality), and against
  MOFA+ factors of the same views (fused row); beside them, the weak claim: the same probe on the
  same architecture at random initialisation (``finetune``'s scratch model: the data-derived
  parts, such as the linear paths' principal axes, copied; its stack uncapped);
* **retrieval**: held-out Recall@1 and MRR for every modality pair against a CCA on the training
  patients' PCA-reduced raw features (a recording's amplitude spectra) and against MOFA+ (each
  modality placed in the factor space from its own view).

Tables give mean ± sd over seeds, and every row where phenoclip is below a baseline becomes a
shortfall of the report.
"""

from __future__ import annotations

import dataclasses
import json
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import PCA
from threadpoolctl import threadpool_limits

from phenoclip_bench import BenchContext, SuiteResult, Table
from phenoclip_bench.cohort import bench_cohort, pretrained
from phenoclip_bench.mofa import fit_mofa
from phenoclip_bench.retrieval_eval import (cca_pair_metrics, cross_modal_metrics, embed_modalities,
                                            paired_metrics, reduce_features)
from phenoclip.data.multimodal import CohortStores
from phenoclip.eval.eqtl_screen import screen_cohort
from phenoclip.eval.gene_probe import fit_gene_probe
from phenoclip.eval.linear_models import fit_elasticnet, fit_logistic, probe_scaling
from phenoclip.eval.metrics import classification_metrics
from phenoclip.eval.raw_features import amplitude_spectra, classic_features, fuse, on_patients
from phenoclip.eval.stacking import fit_stacked
from phenoclip.finetune.labels import (fraction_orders, fraction_subset, held_out_split, load_task_labels,
                                       restrict_to)
from phenoclip.finetune.stack_caps import crossfit_scores, measure_stack_caps
from phenoclip.models.finetune import FinetuneModel
from phenoclip.models.linear_path import PATIENTS_PER_COMPONENT
from phenoclip.pretrained import embed_samples, expr_stats, load_pretrained, random_init_like
from phenoclip.pretrain.settings import default_objectives as pretrain_default_objectives
from phenoclip.progress import info

FRACTIONS = [0.1, 0.2, 0.5, 1.0]
SETTINGS = {"quick": {"seeds": 3, "repeats": 3, "enet_max_features": 10_000},
            "full": {"seeds": 5, "repeats": 3, "enet_max_features": None}}
TEST_FRACTION = 0.2
PROBE, LOGISTIC, ENET, MOFA = "pretrained probe", "logistic regression, raw", "elastic net, raw", "MOFA+ factors"
#: signals only: logistic regression on the principal components of the amplitude spectra (time-domain
#: samples of a recording that starts at an arbitrary beat are a weak reference: 0.55-0.64 against
#: 0.73-0.75 on the sample cohort, docs/experiments.md, "2026-12-07 (last)")
SPECTRAL = "logistic regression, spectral PCs"
#: the spectral baseline keeps one component per this many training patients (at most SPECTRAL_MAX),
#: as the signal linear path does; over 1 per 2-16 patients and all of them the baseline moved by
#: at most ~0.01 (docs/experiments.md)
SPECTRAL_PATIENTS_PER_COMPONENT, SPECTRAL_MAX = PATIENTS_PER_COMPONENT["signal"], 128
#: genotypes beside expression: logistic regression on the dosages of the variants an eQTL screen keeps
#: (phenoclip.eval.eqtl_screen: per gene its strongest variant, Bonferroni over genes x variants), fitted
#: without labels on the pretraining run's training patients; the classic two-stage, expression-informed
#: model (PrediXcan / TWAS's idea), above both raw models on the sample cohort (docs/experiments.md,
#: "2026-12-07 (session 55)")
EQTL = "logistic regression, eQTL-screened SNPs"
#: the same probe on the same architecture at random initialisation (beating it is the weak claim)
RANDOM = "random-init probe"
#: the classic baselines a verdict is taken against
CLASSIC = (LOGISTIC, SPECTRAL, EQTL, ENET, MOFA)
#: simulated cohorts, signals only: logistic regression on each recording's noise-free planted
#: parameters (truth.json), what the recording is made from; a reference for how much any model of the
#: recording could gain, not a baseline the verdict is taken against
PLANTED = "logistic regression, planted signal parameters"
#: the truth.json fields of a recording's planted parameters (rhythm, rate, T wave, pulse wave)
PLANTED_SIGNAL = ("af", "heart_rate_bpm", "trait_effects.t_wave_scale", "trait_effects.ppg_amplitude_scale",
                  "trait_effects.ppg_dicrotic_ratio")
#: retrieval methods and the columns of the retrieval table
OURS, CCA, MOFA_R = "phenoclip", "PCA + CCA", "MOFA+"
MOFA_FACTORS = 10
#: pretraining epochs: the CLI's default
EPOCHS = 100


def run(ctx: BenchContext) -> SuiteResult:
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):  # two cores shared by the whole benchmark: BLAS threads only fight
        return _run(ctx)


def default_objectives(modalities: list[str]) -> list[str]:
    """What ``phenoclip pretrain`` is told by a user who tunes nothing: its default for two or more
    modalities (CLIP, with SCARF on expression beside it), or SCARF for one tabular modality."""
    return pretrain_default_objectives(modalities) if len(modalities) >= 2 else ["scarf"]


def _run(ctx: BenchContext) -> SuiteResult:
    cfg = SETTINGS["quick" if ctx.quick else "full"]
    cohort = bench_cohort(ctx)
    if cohort.labels is None:
        raise RuntimeError("the baselines suite needs a labels.tsv beside the cohort's stores")
    modalities = list(cohort.stores)
    objectives = default_objectives(modalities)
    per_seed, commands = [], []
    for s in range(ctx.seed, ctx.seed + cfg["seeds"]):
        seed_ctx = dataclasses.replace(ctx, seed=s)
        folder, command = pretrained(seed_ctx, cohort, modalities=modalities, objectives=objectives, epochs=EPOCHS)
        commands.append(command)
        info(f"baselines: seed {s}: classification and retrieval against the linear baselines")
        per_seed.append(evaluate(folder, cohort, s, cfg))
    result = SuiteResult(name="baselines", commands=commands + [
        "# every baseline in-process (scikit-learn, mofapy2) on the same patients: phenoclip_bench.baselines"])
    cls_table, cls_short = classification_table(per_seed, cohort.labels)
    result.tables.append(cls_table)
    result.shortfalls += cls_short
    if any(r["retrieval"] for r in per_seed):
        ret_table, ret_short = retrieval_table(per_seed)
        result.tables.append(ret_table)
        result.shortfalls += ret_short
    result.metrics = {"seeds": list(range(ctx.seed, ctx.seed + cfg["seeds"])), "per_seed": per_seed,
                      "objectives": objectives, "fractions": FRACTIONS, **{k: v for k, v in cfg.items()}}
    return result


# ----------------------------------------------------------------------------- one seed

def evaluate(folder, cohort, seed: int, cfg: dict) -> dict:
    """Classification and retrieval of one pretraining run against the baselines, on its held-out patients."""
    pre = load_pretrained(folder)
    stores = CohortStores(cohort.data())
    mods = [m for m in pre.modalities if m in stores.by_modality]
    stats = expr_stats(pre, stores)
    out = {"seed": seed, "classification": classification(pre, stores, mods, stats, cohort.labels, seed, cfg,
                                                          truth=cohort.truth)}
    out["retrieval"] = retrieval(pre, stores, mods, stats, seed) if len(mods) >= 2 else {}
    return out


def _views(stores, mods, samples, stats) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for m in mods:
        ids, x = classic_features(stores, m, samples, stats if m == "expr" else None, impute_dosage=False)
        out[m] = on_patients(ids, x, samples)
    return out


def classification(pre, stores, mods, stats, labels_path, seed: int, cfg: dict, truth=None) -> dict:
    """``{row: {fraction: {method: mean AUROC over repeats}}}`` for every modality but hpo, and fused
    (with a simulated cohort's ``truth`` file, the signal row also gets :data:`PLANTED`)."""
    rows = [m for m in mods if m != "hpo"]
    usable = [x for x in stores.samples if any(stores.present(m, [x])[0] for m in rows)]
    labels = restrict_to(load_task_labels(str(labels_path)), usable, "benchmark stores")
    if not labels.is_classification:
        raise RuntimeError(f"the first label column '{labels.column}' is not a class label")
    samples, y, k = labels.samples, labels.y, len(labels.classes)
    test = held_out_split(labels, TEST_FRACTION, seed, prefer=pre.validation_samples)
    emb, present, emb_random = {}, {}, {}
    # finetune's scratch model (same seed offset): no read-out, so its probe reads the encoder
    scratch = random_init_like(pre, seed + 7919, stores)
    natural = {m: pre.model.probe_natural(m) for m in rows}  # columns the probe only centres
    # the stack's blocks: as finetune's default head over these modalities (signals' summed embedding)
    fused_blocks = FinetuneModel.default_components(pre.model, rows, "stack", readout=True)
    emb_fused, random_fused = {}, {}
    for m in rows:  # what `finetune --mode linear` reads: a modality's read-out where it has one, and
        # MRI's and expression's principal-component scores beside the embedding, signals' beside their
        # encoder's pooled output (models.linear_path.PROBE_COMPONENTS)
        emb[m], present[m] = embed_samples(pre.model, stores, m, samples, stats if m == "expr" else None,
                                           readout=True, components=True)
        emb_random[m] = embed_samples(scratch, stores, m, samples, stats if m == "expr" else None, readout=True,
                                      components=True)[0]
        emb_fused[m], random_fused[m] = emb[m], emb_random[m]
        if pre.model.probe_components(m) and m not in fused_blocks:
            emb_fused[m], random_fused[m] = (embed_samples(model, stores, m, samples, stats if m == "expr" else None,
                                                           readout=True)[0] for model in (pre.model, scratch))
    natural_fused = np.concatenate([pre.model.probe_natural(m, components=m in fused_blocks) for m in rows])
    raw = _views(stores, rows, samples, stats)
    spectral = _spectral_components(stores, samples, pre.train_samples) if "signal" in rows else None
    planted = planted_signal(truth, samples) if "signal" in rows and truth is not None else None
    screened = screen_cohort(stores, pre.train_samples) if "gene" in rows else []
    # the eQTL baseline's dosages (NaN: a missing call or an absent patient), screened without labels
    eqtl = raw["gene"][0][:, screened] if len(screened) else None
    targets = rows + (["fused"] if len(rows) >= 2 else [])
    mofa = _mofa_factors(raw, samples, pre.train_samples, seed) if len(rows) >= 2 else None
    result: dict = {"task": labels.column, "classes": labels.classes, "n_test": int(test.sum())}
    # as finetune does for a stacked probe: block weights capped, held-out patients scored cross-fitted
    caps = measure_stack_caps(pre, stores, rows, stats, seed) if len(rows) >= 2 else None
    result["stack_caps"] = caps.record if caps is not None else None
    for target in targets:
        have = np.ones(len(samples), bool) if target == "fused" else present[target]
        x_emb = np.concatenate([emb_fused[m] for m in rows], 1) if target == "fused" else emb[target]
        x_rand = np.concatenate([random_fused[m] for m in rows], 1) if target == "fused" else emb_random[target]
        widths = [emb_fused[m].shape[1] for m in rows]
        nat = natural_fused if target == "fused" else np.asarray(natural[target])
        # the scratch model has no read-out, so no eQTL SNPs beside its gene block
        nat_random = natural_fused if target == "fused" else np.asarray(scratch.probe_natural(target))
        blocks = raw if target == "fused" else {target: raw[target]}
        n_raw = sum(b[0].shape[1] for b in blocks.values())
        run_enet = cfg["enet_max_features"] is None or n_raw <= cfg["enet_max_features"]
        te = test & have
        by_fraction: dict = {}
        # the gene probe's choice between the read-out and the eQTL SNPs (eval.gene_probe), where it has one
        honest = (pre.honest_gene_block(samples, emb["gene"])
                  if target == "gene" and pre.model.probe_components("gene") else None)
        picks: dict[str, list[str]] = {str(f): [] for f in FRACTIONS}
        for f in FRACTIONS:
            scores: dict[str, list[float]] = {}
            for r in range(cfg["repeats"]):
                orders = fraction_orders(labels, ~test & have, seed + 1000 * (r + 1))
                idx = fraction_subset(labels, orders, f)
                fit = np.zeros(len(samples), bool)
                fit[idx] = True
                xr = fuse(blocks, fit)
                xe = _probe_inputs(x_emb, fit, nat)
                fits = {}
                if target == "gene" and honest is not None:  # as finetune's gene head: its honest choice
                    mean, scale = probe_scaling(x_emb[fit], nat)
                    probe = fit_gene_probe(xe[idx], ((honest - mean) / scale)[idx], y[idx], pre.model.embed_dim, k,
                                           seed + r)
                    fits[PROBE] = (probe, xe)
                    picks[str(f)].append(probe.chosen["gene_probe"])
                elif target != "fused":
                    fits[PROBE] = (fit_logistic(xe[idx], y[idx], k, seed + r), xe)
                if target != "fused":
                    xz = _probe_inputs(x_rand, fit, nat_random)
                    fits[RANDOM] = (fit_logistic(xz[idx], y[idx], k, seed + r), xz)
                else:  # as `finetune --fusion auto` does for a class label: per-modality probes stacked
                    def stack(c, idx=idx, r=r):
                        return fit_stacked(x_emb[idx], widths, y[idx], k, seed + r, caps=c,
                                           natural=nat).predict(x_emb[te])
                    p = stack(None) if caps is None else crossfit_scores(caps, [samples[i] for i in np.flatnonzero(te)],
                                                                         stack)
                    m = classification_metrics(y[te], p, labels.classes)
                    scores.setdefault(PROBE, []).append(float(m["auroc"]))
                    # caps only for pretrained encoders (as finetune): a random initialisation memorised nothing
                    p = fit_stacked(x_rand[idx], widths, y[idx], k, seed + r, natural=nat).predict(x_rand[te])
                    scores.setdefault(RANDOM, []).append(float(classification_metrics(y[te], p, labels.classes)["auroc"]))
                fits[LOGISTIC] = (fit_logistic(xr[idx], y[idx], k, seed + r), xr)
                if run_enet:
                    fits[ENET] = (fit_elasticnet(xr[idx], y[idx], k, seed + r), xr)
                if target == "signal":  # at the spectrum's own scale: only centred
                    xs = _probe_inputs(spectral, fit, np.ones(spectral.shape[1], bool))
                    fits[SPECTRAL] = (fit_logistic(xs[idx], y[idx], k, seed + r), xs)
                    if planted is not None:
                        xp = _probe_inputs(planted, fit)
                        fits[PLANTED] = (fit_logistic(xp[idx], y[idx], k, seed + r), xp)
                if target == "gene" and eqtl is not None:
                    xq = _probe_inputs(eqtl, fit)
                    fits[EQTL] = (fit_logistic(xq[idx], y[idx], k, seed + r), xq)
                if target == "fused" and mofa is not None:
                    xm = _probe_inputs(mofa, fit)  # its factors probed like the embeddings
                    fits[MOFA] = (fit_logistic(xm[idx], y[idx], k, seed + r), xm)
                for name, (model, x) in fits.items():
                    m = classification_metrics(y[te], model.predict(x[te]), labels.classes)
                    scores.setdefault(name, []).append(float(m["auroc"]))
            by_fraction[str(f)] = {name: float(np.mean(v)) for name, v in scores.items()}
        result[target] = {"n_features_raw": int(n_raw), "elasticnet_run": bool(run_enet), "auroc": by_fraction}
        if honest is not None:
            result[target]["gene_probe_choice"] = picks
    return result


def _probe_inputs(x: np.ndarray, fit: np.ndarray, natural=None) -> np.ndarray:
    """``x`` as ``finetune --mode linear`` scales a probe's inputs, fitted on the ``fit`` rows (NaN,
    a MOFA+ factor of a patient without views, at their mean; ``natural`` columns only centred)."""
    x = np.where(np.isnan(x), np.nan_to_num(np.nanmean(x[fit], axis=0)), x)
    mean, scale = probe_scaling(x[fit], natural)
    return (x - mean) / scale


def _spectral_components(stores, samples, train_samples) -> np.ndarray:
    """``(N, k)``: principal-component scores of every patient's signal amplitude spectra (rows of
    patients without signals at 0), the axes fitted on the pretraining run's training patients (no
    labels, as pretraining), at their natural scale (one common scale, mean variance 1)."""
    ids, x = amplitude_spectra(stores, samples)
    train = [i for i, s in enumerate(ids) if s in set(train_samples)]
    k = int(min(SPECTRAL_MAX, max(1, len(train) // SPECTRAL_PATIENTS_PER_COMPONENT), len(train) - 1, x.shape[1]))
    pca = PCA(k, svd_solver="full").fit(x[train])
    z = pca.transform(x)
    z /= np.sqrt(np.mean(pca.explained_variance_))
    return np.nan_to_num(on_patients(ids, z, samples)[0])


def planted_signal(truth_path, samples) -> np.ndarray | None:
    """``(N, 5)``: each patient's planted recording parameters (:data:`PLANTED_SIGNAL`) from a simulated
    cohort's ``truth.json``; None when the file does not give them for every patient (another
    simulator, an older version)."""
    by_sample = {p["sample"]: p for p in json.loads(Path(truth_path).read_text()).get("patients", [])}
    rows = []
    for s in samples:
        row = []
        for field in PLANTED_SIGNAL:
            value = by_sample.get(s, {})
            for key in field.split("."):
                value = value.get(key) if isinstance(value, dict) else None
            if value is None:
                return None
            row.append(float(value))
        rows.append(row)
    return np.asarray(rows, dtype=np.float64)


def _mofa_factors(raw: dict, samples, train_samples, seed: int) -> np.ndarray:
    """MOFA+ factors of every patient, fitted on the pretraining run's training patients' views."""
    train = np.array([s in set(train_samples) for s in samples])
    views = {m: x for m, (x, _) in raw.items()}
    fit = fit_mofa(views, train, n_factors=MOFA_FACTORS, seed=seed)
    return fit.factors(views)


def retrieval(pre, stores, mods, stats, seed: int) -> dict:
    """Per modality pair on the held-out patients: Recall@1 (x chance) and MRR of ours, PCA + CCA and MOFA+."""
    train, val = pre.train_samples, pre.validation_samples
    ours = cross_modal_metrics(embed_modalities(pre.model, pre, stores, mods, val))
    reduced = {m: reduce_features(classic_features(stores, m, train + val, stats if m == "expr" else None), train)
               for m in mods}
    everyone = train + val
    views = {m: _on(reduced[m], everyone) for m in mods}
    train_mask = np.array([i < len(train) for i in range(len(everyone))])
    mofa = fit_mofa(views, train_mask, n_factors=MOFA_FACTORS, seed=seed)
    mofa_emb = {}
    for m in mods:
        ids = [s for s in val if s in set(reduced[m][0])]
        rows = [everyone.index(s) for s in ids]
        mofa_emb[m] = (ids, mofa.view_factors(m, views[m][rows]))
    out = {}
    for a, b in combinations(mods, 2):
        pair = f"{a}-{b}"
        if pair not in ours:
            continue
        cca = cca_pair_metrics(reduced[a], reduced[b], train, val)
        mf = paired_metrics(mofa_emb[a], mofa_emb[b])
        out[pair] = {name: {"x_chance": float(v["x chance@1"]), "MRR": float(v["MRR"]), "n": int(v.get("n", 0))}
                     for name, v in ((OURS, ours[pair]), (CCA, cca), (MOFA_R, mf)) if v is not None}
    return out


def _on(reduced, samples) -> np.ndarray:
    """PCA-reduced rows of ``reduced = (ids, x)`` placed on ``samples`` (NaN rows where absent)."""
    return on_patients(reduced[0], reduced[1], samples)[0]


# ----------------------------------------------------------------------------- tables

def _mean_sd(values: list[float]) -> str:
    v = np.asarray([x for x in values if x == x], dtype=float)
    if not len(v):
        return "—"
    return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}"


def classification_table(per_seed: list[dict], labels_path) -> tuple[Table, list[str]]:
    """Mean ± sd over seeds of the held-out AUROC per row and fraction; shortfalls where a baseline is higher."""
    first = per_seed[0]["classification"]
    targets = [t for t in first if isinstance(first[t], dict) and "auroc" in first[t]]
    methods = [PROBE, LOGISTIC, SPECTRAL, ENET, MOFA, RANDOM]
    if any(EQTL in s["classification"].get("gene", {}).get("auroc", {}).get("1.0", {}) for s in per_seed):
        methods.insert(methods.index(ENET), EQTL)
    if any(PLANTED in s["classification"].get("signal", {}).get("auroc", {}).get("1.0", {}) for s in per_seed):
        methods.append(PLANTED)
    rows, short = [], []
    for target in targets:
        for f in FRACTIONS:
            cells = {m: [s["classification"][target]["auroc"][str(f)].get(m, np.nan) for s in per_seed] for m in methods}
            means = {m: np.nanmean(v) if np.isfinite(v).any() else np.nan for m, v in cells.items()}
            best_other = max((means[m], m) for m in CLASSIC if m in means and means[m] == means[m])
            verdict = "win" if means[PROBE] >= best_other[0] else f"below {best_other[1]}"
            if verdict != "win":
                short.append(f"classification, {target} at label fraction {f}: pretrained probe AUROC "
                             f"{means[PROBE]:.3f} below {best_other[1]} {best_other[0]:.3f} (mean of {len(per_seed)} seeds)")
            if means[RANDOM] == means[RANDOM] and means[PROBE] < means[RANDOM]:
                verdict += "; below random init"
                short.append(f"classification, {target} at label fraction {f}: pretrained probe AUROC "
                             f"{means[PROBE]:.3f} below the same probe at random initialisation "
                             f"{means[RANDOM]:.3f} (mean of {len(per_seed)} seeds)")
            rows.append([target, f, *[_mean_sd(cells[m]) for m in methods], verdict])
    n_test = [s["classification"]["n_test"] for s in per_seed]
    enet_skipped = [t for t in targets if not first[t]["elasticnet_run"]]
    note = (f"Held-out macro AUROC ('{first['task']}' from {labels_path}), mean ± sd over {len(per_seed)} pretraining "
            f"seeds; each seed's test patients ({min(n_test)}-{max(n_test)}) are its pretraining run's validation "
            "patients, never seen in pretraining; within a seed, the mean of 3 nested training subsets per fraction. "
            "Every model is fitted on the same training patients: the probe on the standardised frozen embeddings "
            "(as `phenoclip finetune --mode linear`; fused: one probe per modality, stacked by a weighted product of "
            "their out-of-fold class probabilities (each fold's probe keeping the C its block chose on all the "
            "training patients), each block's weight capped by the share of its cross-modal "
            "agreement kept on the pretraining run's validation patients, measured without labels and cross-fitted "
            "over two halves of them so that no test patient's own inputs set its caps; finetune's default for a "
            "class label), the baselines on the raw standardised features of the same "
            "modality (a recording: its amplitude spectra per channel; fused: every modality but hpo, each weighted "
            "equally, missing-modality indicators; signals also logistic regression on the principal components of their amplitude spectra, one per 4 of the pretraining "
            "run's training patients, fitted on them without labels, at their own scale); C and "
            "l1_ratio by 3-fold CV on the training patients; MOFA+ (10 factors) fitted on the pretraining run's "
            "training patients' views and probed like the embeddings. Random-init probe: the same probe on "
            "`phenoclip finetune`'s scratch model (same architecture, fresh random parameters, the data-derived "
            "parts such as the linear paths' principal axes copied; no genotype read-out; its stack uncapped); "
            "the verdict is taken against the classic baselines, and a probe below random init is said beside it.")
    picks = [p for s in per_seed for v in s["classification"].get("gene", {}).get("gene_probe_choice", {}).values()
             for p in v]
    if picks:
        counts = ", ".join(f"{name} {picks.count(name)}" for name in ("readout", "eqtl", "average") if name in picks)
        note += (" The gene probe (as `finetune --mode linear` over genotypes alone) chooses by 3-fold CV on its "
                 "training patients between logistic regression on the genotype read-out, on the eQTL-screened "
                 "SNPs (the same screen, kept by pretraining) and the mean of the two's logits, each held fold "
                 "scored on its patients' cross-fitted read-out (phenoclip.eval.gene_probe); it chose " + counts +
                 f" of its {len(picks)} fits.")
    if EQTL in methods:
        note += (" eQTL-screened SNPs (genotypes beside expression): logistic regression on the dosages of each "
                 "expression gene's most correlated variant, kept where it passes a Bonferroni bound over every "
                 "gene x variant test, screened without labels on the pretraining run's training patients (the "
                 "two-stage, expression-informed model of PrediXcan and TWAS); a classic baseline of the verdict.")
    if PLANTED in methods:
        note += (" Planted signal parameters (a simulated cohort only): logistic regression on each recording's "
                 "noise-free parameters from truth.json (AF rhythm, mean heart rate, T-wave scale, pulse amplitude "
                 "and dicrotic ratio), what the recording was made from: how far a model of the recording could "
                 "go, not a baseline the verdict is taken against.")
    if enet_skipped:
        note += (f" The elastic net is not run on {', '.join(enet_skipped)} with --quick (over 10,000 raw features: "
                 "about 2 minutes per fit on one core); the full run includes it.")
    return Table("Pretrained probe against linear baselines on the same patients",
                 ["row", "label fraction", *methods, "verdict"], rows, note), short


def retrieval_table(per_seed: list[dict]) -> tuple[Table, list[str]]:
    """Mean ± sd over seeds of held-out R@1 (x chance) and MRR per pair; shortfalls where CCA or MOFA+ is higher."""
    pairs = list(per_seed[0]["retrieval"])
    rows, short = [], []
    for pair in pairs:
        vals = {m: {k: [s["retrieval"][pair][m][k] for s in per_seed if m in s["retrieval"].get(pair, {})]
                    for k in ("x_chance", "MRR")} for m in (OURS, CCA, MOFA_R)}
        mean = {m: {k: float(np.mean(v)) if v else np.nan for k, v in d.items()} for m, d in vals.items()}
        losses = [m for m in (CCA, MOFA_R) if mean[m]["x_chance"] > 2.0 and
                  (mean[m]["x_chance"] > mean[OURS]["x_chance"] or mean[m]["MRR"] > mean[OURS]["MRR"])]
        verdict = "win" if not losses else "below " + " and ".join(losses)
        rows.append([pair, *[f"{np.mean(vals[m]['x_chance']):.2f}" for m in (OURS, CCA, MOFA_R)],
                     *[_mean_sd(vals[m]["MRR"]) for m in (OURS, CCA, MOFA_R)], verdict])
        for m in losses:
            short.append(f"retrieval, {pair}: phenoclip R@1 {mean[OURS]['x_chance']:.2f}x chance / MRR "
                         f"{mean[OURS]['MRR']:.3f} against {m} {mean[m]['x_chance']:.2f}x / {mean[m]['MRR']:.3f} "
                         f"(mean of {len(per_seed)} seeds)")
    note = ("Held-out patients of each seed's pretraining run (those having both modalities), both directions "
            "averaged; R@1 in multiples of chance, MRR mean ± sd over seeds. PCA + CCA: 32 principal components "
            "of each modality's raw standardised features (a recording: its amplitude spectra) and 8 canonical pairs, fitted on the training patients; MOFA+: 10 "
            "factors on the same PCA-reduced views of the training patients, each held-out modality placed in the "
            "factor space from its own view. A baseline counts against phenoclip only where it is above 2x chance.")
    return Table("Cross-modal retrieval against PCA + CCA and MOFA+ on the same patients",
                 ["pair", "R@1 x chance, phenoclip", "PCA + CCA", "MOFA+", "MRR, phenoclip", "PCA + CCA", "MOFA+",
                  "verdict"], rows, note), short
