"""The label-fraction experiment behind ``phenoclip finetune`` (see :mod:`phenoclip.finetune.run`)."""

from __future__ import annotations

import copy
import os
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from phenoclip.data.multimodal import CohortStores, MultimodalDataset
from phenoclip.errors import InconsistentInputError, UsageError
from phenoclip.eval import plots
from phenoclip.eval.linear_models import fit_elasticnet, fit_logistic, fit_ridge
from phenoclip.eval.metrics import classification_metrics, mean_sd, regression_metrics
from phenoclip.eval.eqtl_screen import screen_cohort
from phenoclip.eval.raw_features import classic_features, fuse, on_patients, standardise
from phenoclip.pretrained import expr_stats, load_pretrained, random_init_like
from phenoclip.models.finetune import FinetuneModel
from phenoclip.progress import info
from phenoclip.store_write import create_store
from phenoclip.checkpoint_save import save_checkpoint, write_data_stats
from phenoclip.models.linear_path import PROBE_COMPONENTS
from phenoclip.finetune.settings import RAW_MODELS, FinetuneSettings, describe_labels, write_json
from phenoclip.finetune.heads import (fit_linear_head, fused_features, predict_scores, scores_from_features,
                                            train_full)
from phenoclip.finetune.labels import (fraction_orders, fraction_subset, held_out_split, load_task_labels,
                                    restrict_to)
from phenoclip.finetune.stack_caps import crossfit_scores, measure_stack_caps

#: the fine-tuned model kind written into config.json (``finetune predict`` checks it)
KIND = "finetune"


def choose_modalities(pre, stores: CohortStores, asked: list[str] | None) -> list[str]:
    """The checkpoint's modalities that a given store provides (or the ones asked for, checked)."""
    if asked:
        for m in asked:
            pre.require(m)
            if m not in stores.by_modality:
                raise InconsistentInputError(f"--modalities names '{m}' but no --data store provides it")
        return list(asked)
    mods = [m for m in pre.modalities if m in stores.by_modality]
    if not mods:
        raise InconsistentInputError(f"no --data store holds a modality of the checkpoint "
                                     f"({', '.join(pre.modalities)}); stores give {', '.join(stores.modalities)}",
                                     pre.path)
    return mods


class Experiment:
    """Data, split, models and fits of one ``phenoclip finetune`` run."""

    def __init__(self, s: FinetuneSettings):
        self.s = s
        self.pre = load_pretrained(s.checkpoint)
        self.stores = CohortStores(s.data)
        self.modalities = choose_modalities(self.pre, self.stores, s.modalities)
        self.baselines = s.baselines_for(self.modalities, "signal" in self.pre.model.linear_paths,
                                         "expr" in self.stores.by_modality)
        if "spectral" in self.baselines and (self.modalities != ["signal"]
                                             or "signal" not in self.pre.model.linear_paths):
            raise UsageError("--baseline spectral is logistic regression on the principal components of a recording's "
                             "amplitude spectra: it needs a head over signals alone (--modalities signal) and a "
                             "checkpoint with a signal linear path; use logistic or elasticnet otherwise")
        if "eqtl" in self.baselines and (self.modalities != ["gene"] or "expr" not in self.stores.by_modality):
            raise UsageError("--baseline eqtl is logistic regression on the SNPs an eQTL screen keeps: it needs a head "
                             "over genotypes alone (--modalities gene) and an expression store among --data (the "
                             "screen reads the pretraining patients' expression, no labels); use logistic or "
                             "elasticnet otherwise")
        labels = load_task_labels(s.labels, s.task, s.positive)
        usable = [x for x in self.stores.samples
                  if any(self.stores.present(m, [x])[0] for m in self.modalities)]
        self.labels = restrict_to(labels, usable, ", ".join(self.stores.by_modality[m].path for m in self.modalities))
        self.classification = self.labels.is_classification
        self.test = held_out_split(self.labels, s.test_fraction, s.seed, prefer=self.pre.validation_samples)
        self.pool = ~self.test
        self.orders = [fraction_orders(self.labels, self.pool, s.seed + 1000 * (r + 1)) for r in range(s.repeats)]
        for f in s.fractions:  # refuse impossible fractions before any long work
            fraction_subset(self.labels, self.orders[0], f)
        self.stats = expr_stats(self.pre, self.stores)
        self.dataset = MultimodalDataset(self.stores, self.modalities, self.labels.samples, expr_stats=self.stats)
        self.test_index = np.flatnonzero(self.test)
        self.test_dataset = self._subset(self.test_index)
        n_out = len(self.labels.classes) if self.classification else 1
        if s.fusion == "auto":  # measured: stacking beats concatenation at every label fraction (docs/results.md)
            s.fusion = "stack" if self.classification and len(self.modalities) >= 2 else "concat"
        elif s.fusion == "stack" and not self.classification:
            raise UsageError(f"--fusion stack needs a class label; '{self.labels.column}' is a {self.labels.task} "
                             "target: use --fusion concat or mean")
        # the linear head reads the genotype read-out where pretraining fitted one (models.readout)
        # and, for MRI and expression, the linear path's principal-component scores beside the embedding
        # (for signals, beside the deep encoder's pooled output instead of the embedding)
        # (models.linear_path.PROBE_COMPONENTS)
        readout = s.head.mode == "linear"
        blocks = FinetuneModel.default_components(self.pre.model, self.modalities, s.fusion, readout)
        self.models = {"pretrained": FinetuneModel(self.pre.model, self.modalities, s.fusion, n_out, readout, blocks)}
        if "scratch" in self.baselines:
            scratch = random_init_like(self.pre, s.seed + 7919, self.stores)
            # the same blocks, but no read-out (it is fitted to pretrained embeddings), so no eQTL SNPs beside one
            self.models["scratch"] = FinetuneModel(scratch, self.modalities, s.fusion, n_out, readout,
                                                   [m for m in blocks if scratch.probe_components(m)])
        self.features = {}
        if s.head.mode == "linear":  # frozen encoders: embed every labelled patient once per model
            self.features = {name: fused_features(ft, self.dataset) for name, ft in self.models.items()}
        # a gene head that chooses between the read-out and the eQTL SNPs scores its folds on the
        # training patients' cross-fitted read-outs (eval.gene_probe)
        self.honest = {name: self.pre.honest_gene_block(self.labels.samples, self.features[name])
                       for name, ft in self.models.items() if name == "pretrained" and ft.gene_choice and self.features}
        # the stack's block weights capped by what each encoder keeps on patients pretraining did not fit
        self.caps = (measure_stack_caps(self.pre, self.stores, self.modalities, self.stats, s.seed)
                     if s.fusion == "stack" and s.head.mode == "linear" else None)
        self.raw_models = [RAW_MODELS[b] for b in self.baselines if b in RAW_MODELS]
        self.raw_blocks = self._raw_blocks() if self.raw_models else {}
        self.spectral_scores = self._spectral_scores() if RAW_MODELS["spectral"] in self.raw_models else None
        self.eqtl_dosages = self._eqtl_dosages() if RAW_MODELS["eqtl"] in self.raw_models else None
        self.saved: tuple[FinetuneModel, np.ndarray, np.ndarray] | None = None
        self.compared: dict[str, np.ndarray] = {}
        n_pref = int(sum(self.labels.samples[i] in set(self.pre.validation_samples) for i in self.test_index))
        self.test_never_seen = n_pref
        info(f"{self.labels.task} task on '{self.labels.column}': {len(self.labels.samples)} labelled patients, "
             f"test {len(self.test_index)} ({n_pref} held out of pretraining too), modalities {','.join(self.modalities)}")

    @property
    def model_names(self) -> list[str]:
        return list(self.models) + self.raw_models

    def _raw_blocks(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per modality, (raw features with NaN rows and missing calls, present) of the labelled patients.

        A recording's raw features are its amplitude spectra: its time-domain samples, which start at an
        arbitrary beat, are a weak reference (logistic regression 0.55-0.64 against 0.70-0.73 on the
        spectra, sample cohort, 12 seeds; docs/experiments.md, "2026-12-07 (last)")."""
        out = {}
        for m in self.modalities:
            ids, x = classic_features(self.stores, m, self.labels.samples, self.stats if m == "expr" else None,
                                      impute_dosage=False)
            out[m] = on_patients(ids, x, self.labels.samples)
        return out

    def _spectral_scores(self) -> np.ndarray:
        """``(N, k)``: every labelled patient's principal-component scores of its amplitude spectra (the
        signal raw block already read), on the checkpoint's signal linear path's axes (PCA fitted without
        labels on the pretraining run's training patients, one component per 4 of them), at their own
        scale: ``--baseline spectral``'s features. Every labelled patient has a recording (the head is
        over signals alone), so the block has no NaN rows."""
        spectra, _ = self.raw_blocks["signal"]
        path = self.pre.model.linear_paths["signal"]
        with torch.no_grad():
            return path.project(torch.from_numpy(spectra).to(path.mean.dtype)).double().numpy()

    def _eqtl_dosages(self) -> np.ndarray | None:
        """``(N, k)``: the labelled patients' dosages (NaN: a missing call) of the SNPs the eQTL screen keeps
        on the pretraining run's training patients with genotypes and expression (no labels):
        ``--baseline eqtl``'s features. None, and the baseline dropped with a line in the log, when no
        gene's strongest variant passes the screen's Bonferroni bound."""
        keep = screen_cohort(self.stores, self.pre.train_samples)
        if not len(keep):
            info("--baseline eqtl: no expression gene's strongest variant passes the Bonferroni bound on the "
                 "pretraining patients; the eQTL baseline is not fitted")
            self.raw_models.remove(RAW_MODELS["eqtl"])
            return None
        info(f"--baseline eqtl: {len(keep)} SNPs kept by the eQTL screen of the pretraining patients")
        return self.raw_blocks["gene"][0][:, keep]

    def _fit_raw(self, name: str, idx: np.ndarray, seed: int) -> np.ndarray:
        """A raw-feature baseline fitted on patients ``idx``: scores of the test split.

        Imputation, standardisation and the modalities' equal weighting are fitted on ``idx``
        only (:func:`phenoclip.eval.raw_features.fuse`), the penalty by inner CV on them.
        """
        fit_rows = np.zeros(len(self.labels.samples), bool)
        fit_rows[idx] = True
        if name == RAW_MODELS["spectral"]:  # at the components' own scale: only centred
            x = self.spectral_scores - self.spectral_scores[idx].mean(axis=0)
        elif name == RAW_MODELS["eqtl"]:
            x = standardise(self.eqtl_dosages, fit_rows)
        else:
            x = fuse(self.raw_blocks, fit_rows)
        y = self.labels.y
        if not self.classification:
            target_mean, target_scale = float(y[idx].mean()), float(y[idx].std() or 1.0)
            fit = fit_ridge(x[idx], (y[idx] - target_mean) / target_scale, seed)
            return fit.predict(x[self.test_index]) * target_scale + target_mean
        n_classes = len(self.labels.classes)
        fitter = fit_elasticnet if name == RAW_MODELS["elasticnet"] else fit_logistic
        return fitter(x[idx], y[idx], n_classes, seed).predict(x[self.test_index])

    def _subset(self, index: np.ndarray) -> MultimodalDataset:
        return MultimodalDataset(self.stores, self.modalities, [self.labels.samples[i] for i in index],
                                 expr_stats=self.stats)

    def fit_and_score(self, fraction: float, repeat: int, name: str) -> dict:
        """Fit one head (or fine-tune one model) and score it on the test split: one metrics row."""
        idx = fraction_subset(self.labels, self.orders[repeat], fraction)
        seed = self.s.seed + 31 * repeat
        y = self.labels.y
        last = repeat == 0 and fraction == max(self.s.fractions)
        keep = last and name == "pretrained"  # the saved model
        if name in self.raw_models:
            scores = kept = self._fit_raw(name, idx, seed)
        elif self.s.head.mode == "linear":
            ft, x = self.models[name], self.features[name]

            honest = self.honest[name][idx] if name in self.honest else None

            def fit_and_score(caps: list[float] | None) -> np.ndarray:
                fit_linear_head(ft, x[idx], y[idx], self.classification, self.s.head, seed, caps, honest)
                return scores_from_features(ft, x[self.test_index], self.classification)

            # caps only for the pretrained encoders: a random initialisation memorised nothing
            caps = self.caps if name == "pretrained" else None
            scores = fit_and_score(None) if caps is None else crossfit_scores(
                caps, [self.labels.samples[i] for i in self.test_index], fit_and_score)
            # the model kept for later use takes its caps from every validation patient; predictions.h5 holds
            # its own scores (what `finetune predict` gives), metrics the cross-fitted ones
            kept = fit_and_score(caps.deploy) if caps is not None and keep else scores
        else:
            ft = copy.deepcopy(self.models[name])
            train_full(ft, self._subset(idx), y[idx], self.classification, self.s.head, seed,
                       self.s.work / "fits" / f"{fraction:g}-r{repeat}-{name}",
                       stop_after_steps=self.s.stop_after_steps)
            scores = predict_scores(ft, self.test_dataset, self.classification)
            kept = scores
        y_test = y[self.test_index]
        metrics = (classification_metrics(y_test, scores, self.labels.classes) if self.classification
                   else regression_metrics(y_test, scores))
        if last:
            self.compared[name] = scores  # roc.png draws every model on the same test patients
        if keep:
            self.saved = (copy.deepcopy(ft), kept, idx)
        return {"fraction": fraction, "repeat": repeat, "model": name, "n_train": int(len(idx)), **metrics}

    # ------------------------------------------------------------------ outputs
    def summarise(self, rows: list[dict]) -> dict:
        """Mean and sd over repeats per fraction and model (metrics.json's ``summary``)."""
        metric_names = [k for k in rows[0] if k not in ("fraction", "repeat", "model", "n_train", "n")]
        return {"summary": mean_sd(rows, ["fraction", "model"], ["n_train", *metric_names]), "rows": rows,
                "headline_metric": "auroc" if self.classification else "r2"}

    def write_outputs(self, folder: Path, rows: list[dict]) -> dict:
        _write_tsv(folder / "metrics.tsv", rows)
        summarised = self.summarise(rows)
        summary, headline = summarised["summary"], summarised["headline_metric"]
        ft, scores, train_idx = self.saved
        by_modalities = self._held_out_by_modalities(ft)
        self._write_checkpoint(folder, ft, train_idx)
        self._write_predictions(folder / "predictions.h5", scores)
        figures = self._plots(folder, scores, summary, headline)
        result = {"task": describe_labels(self.labels), "mode": self.s.head.mode, "fusion": self.s.fusion,
                  "modalities": self.modalities, "checkpoint": os.path.abspath(self.s.checkpoint),
                  "headline_metric": headline, "n_labelled": len(self.labels.samples),
                  "n_test": int(len(self.test_index)), "n_test_held_out_of_pretraining": self.test_never_seen,
                  "fractions": self.s.fractions, "repeats": self.s.repeats, "seed": self.s.seed,
                  "summary": summary, "rows": rows, "figures": figures, "held_out_by_modalities": by_modalities,
                  "saved_model": {"model": "pretrained", "fraction": max(self.s.fractions), "repeat": 0},
                  "stack_caps": self.caps.record if self.caps is not None else None}
        write_json(folder / "metrics.json", result)
        return result

    def _held_out_by_modalities(self, ft: FinetuneModel) -> list[dict]:
        """The saved model's test metrics when a patient has only some modalities: for every
        non-empty subset, scored on the test patients that have all of it with the others left
        out, exactly as ``finetune predict`` scores such patients. ``predict`` reports these
        beside its predictions, so a prediction from fewer modalities carries its expected
        accuracy instead of looking as good as one from all of them."""
        out = []
        test = [self.labels.samples[i] for i in self.test_index]
        y = self.labels.y[self.test_index]
        for k in range(len(self.modalities), 0, -1):
            for subset in combinations(self.modalities, k):
                have = np.all([self.stores.present(m, test) for m in subset], axis=0)
                if have.sum() < 2 or (self.classification and len(np.unique(y[have])) < 2):
                    continue
                ds = MultimodalDataset(self.stores, list(subset), [t for t, h in zip(test, have) if h],
                                       expr_stats=self.stats)
                scores = predict_scores(ft, ds, self.classification)
                metrics = (classification_metrics(y[have], scores, self.labels.classes) if self.classification
                           else regression_metrics(y[have], scores))
                out.append({"modalities": ",".join(subset), "n_test": int(have.sum()),
                            **{key: float(v) for key, v in metrics.items() if isinstance(v, (int, float))}})
        return out

    def _write_checkpoint(self, folder: Path, ft: FinetuneModel, train_idx: np.ndarray) -> None:
        config = {"kind": KIND, "pretrain_checkpoint": os.path.abspath(self.s.checkpoint),
                  "pretrain_config": self.pre.config, "modalities": self.modalities, "fusion": self.s.fusion,
                  "n_outputs": ft.head.out_features, "mode": self.s.head.mode, "probe_components": ft.components,
                  "probe_kinds": {m: PROBE_COMPONENTS[m] for m in ft.components},
                  **describe_labels(self.labels)}
        samples = self.labels.samples
        state = {"split": {"test": [samples[i] for i in self.test_index],
                           "pool": [s for s, p in zip(samples, self.pool) if p],
                           "train": [samples[i] for i in train_idx]},
                 "fraction": max(self.s.fractions), "repeat": 0, "seed": self.s.seed}
        save_checkpoint(folder, model=ft, config=config, state=state)
        if self.stats is not None:
            write_data_stats(folder, {"expr_mean": self.stats[0], "expr_std": self.stats[1]})

    def _write_predictions(self, path: Path, scores: np.ndarray) -> None:
        samples = [self.labels.samples[i] for i in self.test_index]
        y = self.labels.y[self.test_index]
        attrs = {"task": self.labels.task, "label_column": self.labels.column,
                 "checkpoint": os.path.abspath(self.s.out), "split": "test"}
        with create_store(path, "predictions", samples, attrs=attrs) as w:
            if self.classification:
                w.per_sample("truth", y.astype(np.int64), attrs={"index_into": "classes"})
                w.per_sample("probabilities", scores.astype(np.float32), attrs={"columns": "classes"})
                w.per_sample("predicted", scores.argmax(1).astype(np.int64), attrs={"index_into": "classes"})
                w.array("classes", list(self.labels.classes))
            else:
                w.per_sample("truth", y.astype(np.float64))
                w.per_sample("predicted", scores.astype(np.float64))

    def _plots(self, folder: Path, scores: np.ndarray, summary: list[dict], headline: str) -> list[str]:
        y = self.labels.y[self.test_index]
        title = f"{self.labels.column}, test split (n={len(y)}), pretrained, fraction {max(self.s.fractions):g}"
        figures = []
        if self.classification:
            compared = {name: self.compared[name] for name in self.model_names if name in self.compared}
            plots.plot_roc_models(y, compared or {"pretrained": scores}, self.labels.classes, folder / "roc.png",
                                  title=f"{self.labels.column}, test split (n={len(y)}), fraction "
                                        f"{max(self.s.fractions):g}, repeat 0")
            plots.plot_reliability(y, scores, folder / "reliability.png", title=title)
            figures += ["roc.png", "reliability.png"]
        else:
            plots.plot_regression(y, scores, folder / "regression.png", title=title)
            figures.append("regression.png")
        plots.plot_label_fraction_curve(summary, headline, folder / "label_fractions.png",
                                        title=f"{self.labels.column}: {headline} on the test split, "
                                              f"{self.s.head.mode} fine-tuning")
        figures.append("label_fractions.png")
        return figures


def _write_tsv(path: Path, rows: list[dict]) -> None:
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]

    def fmt(v) -> str:
        if isinstance(v, float):
            return "nan" if np.isnan(v) else f"{v:.6g}"
        return str(v)

    lines = ["\t".join(columns)] + ["\t".join(fmt(r.get(c, "")) for c in columns) for r in rows]
    path.write_text("\n".join(lines) + "\n")
