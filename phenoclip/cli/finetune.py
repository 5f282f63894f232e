"""``phenoclip finetune``: label-efficient prediction from a pretrained checkpoint, against scratch.

``phenoclip finetune --checkpoint ... --out runs/ft`` runs the experiment;
``phenoclip finetune predict --model runs/ft ...`` scores new patients with its model.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import List, Optional

import typer

from phenoclip.cli.common import Threads, capped_epochs, run_step
from phenoclip.errors import UsageError

HELP = ("Fine-tune a prediction head on a pretrained checkpoint at several label fractions, each repeated "
        "with different seeds, beside the same head on a randomly initialised model (paper 002's "
        "comparison). Writes metrics.tsv, metrics.json, the fine-tuned model (a checkpoint folder), "
        "predictions.h5 for the held-out test split, and ROC, reliability and label-fraction plots. "
        "'finetune predict' scores new patients with the model.")

app = typer.Typer(help=HELP, invoke_without_command=True)


@app.callback()
def finetune(
    ctx: typer.Context,
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Pretraining checkpoint folder (phenoclip pretrain --out)."),
    data: List[Path] = typer.Option([], "--data", help="A store from phenoclip preprocess; repeatable."),
    labels: Optional[str] = typer.Option(None, "--labels", help="labels.tsv[:COLUMN]: a table with a 'sample' column; COLUMN defaults to the first label column."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (must not exist yet)."),
    mode: str = typer.Option("linear", "--mode", help="linear (frozen encoders, logistic/ridge head) | full (encoders fine-tuned too)."),
    label_fractions: str = typer.Option("0.02,0.05,0.1,0.2,0.5,1.0", "--label-fractions", help="Fractions of the training pool to train on, comma-separated."),
    repeats: int = typer.Option(3, "--repeats", min=1, help="Repeats per fraction, each with its own training subset and seed."),
    task: str = typer.Option("auto", "--task", help="auto | binary | multiclass | regression."),
    positive: Optional[str] = typer.Option(None, "--positive", help="Positive class of a binary label [default: 1, case, affected, ... or the second class]."),
    test_fraction: float = typer.Option(0.2, "--test-fraction", help="Held-out test patients (stratified; the pretraining run's validation patients first)."),
    baseline: str = typer.Option("auto", "--baseline", help="auto (scratch and logistic; with spectral for a head over signals alone, eqtl for one over genotypes alone beside an expression --data store) or comma-separated: scratch (same head on a randomly initialised model), logistic and elasticnet (on the raw standardised features of the same modalities and patients, a recording's amplitude spectra, penalty by inner CV), spectral (a head over signals alone: logistic regression on the principal components of those spectra at their own scale), eqtl (a head over genotypes alone: logistic regression on the SNPs an eQTL screen of the pretraining patients keeps, each expression gene's most correlated SNP past a Bonferroni bound); or none."),
    fusion: str = typer.Option("auto", "--fusion", help="concat | mean | stack: how the modalities' embeddings are combined; stack fits a probe per modality and a weighted product of their out-of-fold class probabilities, one weight in [0, 1] per modality (class labels only). auto: stack for a class label over two or more modalities, else concat."),
    modalities: Optional[str] = typer.Option(None, "--modalities", help="Comma-separated subset of the checkpoint's modalities [default: all with a store]."),
    epochs: int = typer.Option(30, "--epochs", min=1, help="Epochs of --mode full."),
    lr: float = typer.Option(1e-3, "--lr", min=0.0, help="Learning rate of the head in --mode full (encoders: a tenth)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Patients per step and process in --mode full (under torchrun N processes with batch B train like one with N x B)."),
    c: Optional[float] = typer.Option(None, "--C", min=0.0, help="Inverse L2 strength of the logistic-regression head (scikit-learn's C) [default: chosen by 3-fold CV on the training patients]."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the split, the subsets and the baseline's initialisation."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted --mode full run of this --out exactly where it stopped (its fits are kept in .OUT.partial beside --out; a stop signal, SIGTERM or SIGUSR1, saves them and exits 75)."),
    threads: Optional[int] = Threads,
) -> None:
    if ctx.invoked_subcommand is not None:
        return
    # imported here, not at the top: `phenoclip --help` stays fast and torch-free
    from phenoclip.train.stop import StopFlag

    # --mode full listens for SLURM's/torchrun's stop signal before the slow imports; linear mode
    # has no loop to checkpoint, so a signal keeps its usual meaning there
    with StopFlag() if mode == "full" else contextlib.nullcontext():
        from phenoclip.finetune.run import FinetuneSettings, run_finetune
        from phenoclip.finetune.heads import HeadSettings
        from phenoclip.finetune.labels import parse_fractions

        for name, value in (("--checkpoint", checkpoint), ("--labels", labels), ("--out", out)):
            if value is None:
                raise UsageError(f"{name} is required (or use 'phenoclip finetune predict')")
        if not data:
            raise UsageError("give at least one --data STORE")
        settings = FinetuneSettings(
            checkpoint=str(checkpoint), data=[str(d) for d in data], labels=labels, out=str(out), mode=mode,
            fractions=parse_fractions(label_fractions), repeats=repeats, task=task, positive=positive,
            test_fraction=test_fraction, seed=seed, baseline=baseline, fusion=fusion,
            modalities=[m.strip() for m in modalities.split(",") if m.strip()] if modalities else None,
            head=HeadSettings(mode=mode, c=c, epochs=capped_epochs(epochs), lr=lr, batch_size=batch_size), resume=resume)
        with run_step("finetune", str(out) + "/", seed=seed, threads=threads) as log:
            result = run_finetune(settings)
            log.outputs.append(str(out))
            metric = result["headline_metric"]
            for row in result["summary"]:
                log.note(f"fraction {row['fraction']} {row['model']}: {metric} {row[metric + '_mean']:.4f} "
                         f"sd {row[metric + '_sd']:.4f}")


@app.command("predict", help="Score patients with a fine-tuned model: one row per patient with the "
                             "predicted class (and class probabilities) or value.")
def predict(
    model: Path = typer.Option(..., "--model", help="Output folder of phenoclip finetune."),
    data: List[Path] = typer.Option(..., "--data", help="A store holding one of the model's modalities; repeatable."),
    out: str = typer.Option(..., "--out", help="Predictions TSV ('-' for stdout)."),
    threads: Optional[int] = Threads,
) -> None:
    # imported here, not at the top: `phenoclip --help` stays fast and torch-free
    from phenoclip.finetune.predict import run_predict

    with run_step("finetune predict", out, threads=threads) as log:
        n = run_predict(model, [str(d) for d in data], out)
        log.note(f"predicted {n} patients")
        log.outputs.append(out)
