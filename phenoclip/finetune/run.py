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
``--mode full`` trains through the one training loop (:mod:`phenoclip.train.loop`), each fit
checkpointing into ``.OUT.partial/fits/`` beside ``--out``: a stop signal (SIGTERM, SIGUSR1)
saves and exits 75, ``--resume`` continues exactly where it stopped (finished fits are
reloaded, not retrained; the linear fits are recomputed, they are deterministic and cheap),
and under torchrun every fit is data-parallel while rank 0 alone writes.
"""

from __future__ import annotations

import contextlib

from phenoclip.progress import info, track
from phenoclip.staging import staged_folder
from phenoclip.train import distributed as dist_utils
from phenoclip.train import workdir
from phenoclip.finetune.experiment import Experiment
from phenoclip.finetune.settings import FinetuneSettings

__all__ = ["FinetuneSettings", "run_finetune"]


def run_finetune(s: FinetuneSettings) -> dict:
    """Run the label-fraction experiment and write the output folder ``s.out``; return metrics.json."""
    s.validate()
    with workdir.resumable_run(s.out, s.fingerprint(), s.resume, uses_work_folder=s.mode == "full"):
        result = _run(s)
    if dist_utils.rank() == 0:
        _print_summary(result)
    return result


def _run(s: FinetuneSettings) -> dict:
    writer = dist_utils.rank() == 0
    # under torchrun every rank runs the experiment (the fits are data-parallel); rank 0 writes
    with (staged_folder(s.out) if writer else contextlib.nullcontext()) as tmp:
        exp = Experiment(s)
        rows = []
        runs = [(f, r, m) for r in range(s.repeats) for f in s.fractions for m in exp.model_names]
        for fraction, repeat, name in track(runs, "fine-tuning", unit="fits"):
            rows.append(exp.fit_and_score(fraction, repeat, name))
        return exp.write_outputs(tmp, rows) if writer else exp.summarise(rows)


def _print_summary(result: dict) -> None:
    metric = result["headline_metric"]
    for row in result["summary"]:
        info(f"fraction {row['fraction']:<5g} {row['model']:<10} {metric} {row[metric + '_mean']:.3f} "
             f"± {row[metric + '_sd']:.3f} (n_train {row['n_train_mean']:.0f}, {row['n_repeats']} repeats)")
