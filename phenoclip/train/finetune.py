"""``phenoclip finetune`` as a library function: label-efficient prediction, pretrained vs scratch.

Steps: open the pretraining checkpoint and the stores -> read the label column and settle the
task -> one fixed, stratified, patient-level test split (the pretraining run's held-out patients
first) -> for every repeat, nested stratified training subsets at each label fraction -> fit
the head on the pretrained model and, as baselines, on the same architecture at random
initialisation and (logistic regression, elastic net) on the raw standardised features of the
same modalities and patients, every penalty chosen by inner cross-validation -> scikit-learn
metrics on the test split -> the output folder:

* ``metrics.tsv`` (one row per fraction x repeat x model) and ``metrics.json`` (rows, the mean
  and standard deviation over repeats, the split, the task);
* the fine-tuned model (pretrained, largest fraction, first repeat) as a checkpoint directory
  (``model.safetensors``, ``config.json`` with ``kind = "finetune"``, ``state.json``);
* ``predictions.h5`` (schema ``predictions``) for the test split;
* PNG plots: ROC curves and a reliability diagram (classification) or predicted vs true
  (regression), and the label-fraction curve.

The folder is assembled under a temporary name and renamed at the end: a failed run leaves none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from phenoclip.errors import UsageError
from phenoclip.models.finetune import FUSIONS
from phenoclip.progress import info, track
from phenoclip.staging import staged_folder
from phenoclip.train.finetune_heads import MODES, HeadSettings
from phenoclip.train.labels import TaskLabels

#: what each fit is held against: the same architecture at random initialisation, and logistic
#: regression / elastic net on the standardised raw features of the same modalities and patients
BASELINES = ("scratch", "logistic", "elasticnet")
#: rows of metrics.tsv written by the raw-feature baselines (the ``model`` column)
RAW_MODELS = {"logistic": "logistic_raw", "elasticnet": "elasticnet_raw"}


@dataclass
class FinetuneSettings:
    """Everything ``phenoclip finetune`` needs (the CLI builds one)."""

    checkpoint: str
    data: list[str]
    labels: str
    out: str
    mode: str = "linear"
    fractions: list[float] = field(default_factory=lambda: [0.02, 0.05, 0.1, 0.2, 0.5, 1.0])
    repeats: int = 3
    task: str = "auto"
    positive: str | None = None
    test_fraction: float = 0.2
    seed: int = 0
    #: comma-separated subset of BASELINES, or "none"
    baseline: str = "scratch,logistic"
    #: concat | mean | stack, or auto: stack for a class label over two or more modalities, else concat
    fusion: str = "auto"
    modalities: list[str] | None = None
    head: HeadSettings = field(default_factory=HeadSettings)

    @property
    def baselines(self) -> list[str]:
        names = [b.strip() for b in self.baseline.split(",") if b.strip()]
        return [] if names == ["none"] else names

    def validate(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"unknown --mode '{self.mode}': use {' or '.join(MODES)}")
        for b in self.baselines:
            if b not in BASELINES:
                raise UsageError(f"unknown --baseline '{b}': use a comma-separated list of {', '.join(BASELINES)}, "
                                 "or none")
        if self.fusion not in ("auto", *FUSIONS):
            raise UsageError(f"unknown --fusion '{self.fusion}': use auto, {', '.join(FUSIONS)}")
        if self.repeats < 1:
            raise UsageError("--repeats must be at least 1")
        if not self.data:
            raise UsageError("give at least one --data STORE")


def run_finetune(s: FinetuneSettings) -> dict:
    """Run the label-fraction experiment and write the output folder ``s.out``; return metrics.json."""
    from phenoclip.train.finetune_run import Experiment

    s.validate()
    with staged_folder(s.out) as tmp:
        exp = Experiment(s)
        rows = []
        runs = [(f, r, m) for r in range(s.repeats) for f in s.fractions for m in exp.model_names]
        for fraction, repeat, name in track(runs, "fine-tuning", unit="fits"):
            rows.append(exp.fit_and_score(fraction, repeat, name))
        result = exp.write_outputs(tmp, rows)
    _print_summary(result)
    return result


def _print_summary(result: dict) -> None:
    metric = result["headline_metric"]
    for row in result["summary"]:
        info(f"fraction {row['fraction']:<5g} {row['model']:<10} {metric} {row[metric + '_mean']:.3f} "
             f"± {row[metric + '_sd']:.3f} (n_train {row['n_train_mean']:.0f}, {row['n_repeats']} repeats)")


def describe_labels(labels: TaskLabels) -> dict:
    return {"source": labels.source, "column": labels.column, "task": labels.task, "classes": labels.classes}


def write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, default=_json_default))


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)
