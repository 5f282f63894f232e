"""``phenoclip pretrain``: self-supervised pretraining of the multimodal model on a cohort's stores."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from phenoclip.cli.common import Threads, capped_epochs, run_step
from phenoclip.errors import UsageError

HELP = ("Pretrain encoders whose embeddings line up across modalities (CLIP-style contrastive loss over "
        "every modality pair, HPO ontology alignment, masked volume / haplotype modelling) or one tabular "
        "modality alone (SCARF, VIME, BYOL). Writes a checkpoint directory: model.safetensors, config.json, "
        "state.json (split, per-epoch losses and validation retrieval), optimizer.pt.")


def _csv(text: Optional[str]) -> Optional[list[str]]:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def _pairs(items: list[str], what: str) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"{what} must be NAME=VALUE, got '{item}'")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def pretrain(
    modalities: Optional[str] = typer.Option(None, "--modalities", help="Comma-separated: gene, expr, mri, signal, hpo."),
    data: List[Path] = typer.Option([], "--data", help="A store from phenoclip preprocess; repeatable. Its schema tells its modality."),
    objective: Optional[str] = typer.Option(None, "--objective", help="Comma-separated: clip, ontology, mvm, mhm, scarf, vime, byol [default: clip,scarf when expr is one of two or more modalities, else clip]. scarf, vime and byol pretrain one tabular modality; beside clip, scarf runs on expr."),
    out: Path = typer.Option(..., "--out", help="Checkpoint directory (runs/NAME)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="tiny (CPU, minutes) | small | paper (GPU) [default: tiny]."),
    arch: List[str] = typer.Option([], "--arch", help="MODALITY=ARCH, e.g. gene=mlp, expr=mamba; repeatable."),
    weight: List[str] = typer.Option([], "--weight", help="OBJECTIVE=W loss weight, e.g. ontology=0.5; repeatable."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Epochs [default: 100]."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=2, help="Patients per batch (per process) [default: 32]."),
    lr: Optional[float] = typer.Option(None, "--lr", min=0.0, help="Peak learning rate (AdamW, warm-up then cosine) [default: 0.002]."),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", min=0.0, help="AdamW weight decay [default: 0.5]."),
    val_fraction: Optional[float] = typer.Option(None, "--val-fraction", help="Held-out patients for validation retrieval [default: 0.2]."),
    val_samples: Optional[Path] = typer.Option(None, "--val-samples", help="File of sample IDs (one a line) to hold out for validation instead of a random --val-fraction split: the same held-out patients for models of different modality sets (ablations)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda [default: auto]."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed [default: 0]."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file with a [pretrain] table; options given here win."),
    augment: Optional[bool] = typer.Option(None, "--augment/--no-augment", help="Perturb each view during contrastive training (dosage/term dropout, noise, shifts) [default: on]."),
    linear_path: Optional[int] = typer.Option(None, "--linear-path", min=0, help="Principal components of each raw input (gene, expr, mri, signal) mapped linearly into the embedding beside the deep encoder; 0 turns it off [default: 128]."),
    gene_readout: Optional[bool] = typer.Option(None, "--gene-readout/--no-gene-readout", help="After the last epoch, fit a linear map of the dosages to the other modalities' embeddings (a ridge on the variants most associated with them, or a multi-task elastic net where it cross-validates clearly better) on the training patients: what finetune's linear probes read for gene (the encoder memorises its pretraining patients; the read-out cannot). Needs clip and another modality [default: on]."),
    resume: bool = typer.Option(False, "--resume", help="Continue the checkpoint in --out exactly where it stopped."),
    threads: Optional[int] = Threads,
) -> None:
    # imported here, not at the top: `phenoclip --help` stays fast and torch-free
    from phenoclip.train.stop import StopFlag

    # listen for SLURM's/torchrun's stop signal before the slow imports (torch, the stores)
    with StopFlag():
        from phenoclip.pretrain.settings import PretrainSettings, merge, read_sample_ids, read_toml
        from phenoclip.progress import info
        from phenoclip.pretrain.run import run_pretrain

        file_values = read_toml(config, "pretrain") if config else {}
        weights = {k: float(v) for k, v in _pairs(weight, "--weight").items()} if weight else None
        cli = {"modalities": _csv(modalities), "data": [str(d) for d in data] or None, "objectives": _csv(objective),
               "preset": preset, "architectures": _pairs(arch, "--arch") or None, "weights": weights, "epochs": epochs,
               "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "val_fraction": val_fraction, "device": device, "seed": seed,
               "threads": threads, "augment": augment, "linear_path": linear_path, "gene_readout": gene_readout,
               "val_samples": read_sample_ids(val_samples, "--val-samples") if val_samples else None}
        values = merge(file_values, cli)
        if not values.get("modalities"):
            raise UsageError("--modalities is required (or 'modalities' in the --config file)")
        if not values.get("data"):
            raise UsageError("give at least one --data STORE")
        try:
            cfg = PretrainSettings.from_dict(values)
        except TypeError as e:
            raise UsageError(f"bad configuration: {e}") from None
        cfg.epochs = capped_epochs(cfg.epochs)
        with run_step("pretrain", str(out) + "/", seed=cfg.seed, threads=threads, device=cfg.device) as log:
            result = run_pretrain(cfg, out, resume=resume, log=lambda line: (info(line), log.note(line)))
            log.outputs.append(str(out))
            info(f"checkpoint: {out} ({result['epoch']} epochs)")
