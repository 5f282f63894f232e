"""Building, training and applying a segmenter (:mod:`phenoclip.models.segmentation`).

* :func:`build_for_training`: the fusion decoder on a pretraining checkpoint's ViT (+ Mamba)
  encoders (pretrained or re-initialised), or a monai U-Net, with its JSON description.
* :func:`fit`: through the one training loop (exact resume, stop signals, torchrun): AdamW with
  a warm-up + cosine schedule, Dice-CE, the encoders at a tenth of the decoder's learning rate
  (or frozen); the state with the best validation Dice is kept.
* :func:`train_into`: ``segment train``'s split, training, test metrics and model folder.
* :func:`run_segment_train`: the step: work folder, staged output, torchrun ranks.

Applying a model is :mod:`phenoclip.segment.inference`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from phenoclip.errors import InconsistentInputError
from phenoclip.io.tables import read_id_list
from phenoclip.pretrained import expr_stats, load_pretrained, random_init_like
from phenoclip.models.segmentation import build_segmenter, count_parameters, fusion_config, monai_config
from phenoclip.objectives.segmentation import build_loss
from phenoclip.progress import info, warn
from phenoclip.staging import staged_folder
from phenoclip.checkpoint_files import MODEL_FILE, STATE_FILE
from phenoclip.checkpoint_load import read_state
from phenoclip.checkpoint_save import save_checkpoint, write_data_stats
from phenoclip.train import distributed as dist_utils
from phenoclip.train import workdir
from phenoclip.train.loop import LoopSettings, train
from phenoclip.segment.data import KIND, SegmentData, describe, summarise, three_way_split, write_metrics
from phenoclip.segment.inference import evaluate
from phenoclip.segment.predict import write_overlays
from phenoclip.segment.settings import FitSettings, SegmentSettings
from phenoclip.segment.task import SegmentDataset, SegmentTask

#: a best validation Dice below this means the model has not started to segment (a warning says so)
UNTRAINED_DICE = 0.05


def build_for_training(decoder: str, preset: str, data: SegmentData, pre=None, init: str = "pretrained",
                       use_genes: bool = False, image_skips: bool = True, seed: int = 0) -> tuple[nn.Module, dict]:
    """``(model, description)``; the description (decoder, its arguments, encoders) goes into config.json."""
    torch.manual_seed(seed)
    if decoder != "fusion":
        cfg = monai_config(decoder, data.in_channels, data.grid, preset)
        try:
            model = build_segmenter(decoder, cfg)
        except ValueError as e:
            raise InconsistentInputError(f"{e}", data.images_path, "preprocess mri with another --shape") from None
        return model, {"decoder": decoder, "decoder_config": cfg, "encoders": [], "genes": False}

    pre.require("mri")
    if use_genes:
        pre.require("expr")
    source = pre.model if init == "pretrained" else random_init_like(pre, seed + 7919)
    encoders = {m: copy.deepcopy(source.encoders[m]) for m in ("mri", "expr") if m in source.encoders}
    vit = encoders["mri"]
    if vit.in_channels != data.in_channels or any(g < v for g, v in zip(data.grid, vit.volume_shape)):
        raise InconsistentInputError(
            f"the checkpoint's image encoder takes {vit.in_channels} x {'x'.join(map(str, vit.volume_shape))} "
            f"volumes; this store holds {data.in_channels} x {'x'.join(map(str, data.grid))}", data.images_path,
            "preprocess mri with a --shape at least the pretraining one")
    if use_genes and data.expr is not None and data.expr.shapes["values"][0] != encoders["expr"].tokens.n_genes:
        raise InconsistentInputError(f"the expression store has {data.expr.shapes['values'][0]} genes, the "
                                     f"checkpoint's gene encoder {encoders['expr'].tokens.n_genes}", data.genes_path,
                                     "preprocess expression as for pretraining")
    torch.manual_seed(seed)
    cfg = fusion_config(vit, encoders.get("expr"), preset, image_skips)
    model = build_segmenter("fusion", cfg, encoders, use_genes=use_genes)
    return model, {"decoder": "fusion", "decoder_config": cfg, "encoders": list(encoders), "genes": use_genes}


BEST_FILE = "best.safetensors"


def fit(model: nn.Module, data: SegmentData, train_ids: list[str], val_ids: list[str], s: FitSettings,
        folder: str | os.PathLike, log=info, stop_after_steps: int | None = None) -> dict:
    """Train ``model`` in place through the one training loop, checkpointing into ``folder`` (a
    folder holding a checkpoint is continued exactly); it ends with the weights of its best
    validation-Dice epoch (kept in ``folder/best.safetensors`` as training goes)."""
    genes = bool(getattr(model, "needs_genes", False))
    task = SegmentTask(model, build_loss(s.loss), lr_scale=s.encoder_lr_scale, freeze_encoders=s.freeze_encoders,
                       gene_dropout=s.gene_dropout, seed=s.seed)
    dataset = SegmentDataset(data, train_ids, genes)
    world = max(1, dist_utils.world_size())
    loop = LoopSettings(epochs=s.epochs, batch_size=max(1, min(s.batch_size, len(train_ids) // world)), lr=s.lr,
                        weight_decay=s.weight_decay, warmup_fraction=s.warmup_fraction, grad_clip=0.0, seed=s.seed,
                        progress="segment training", stop_after_steps=stop_after_steps)
    folder = Path(folder)
    best_val = max((h["val_dice"] for h in read_state(folder).get("history", [])), default=-1.0) \
        if (folder / STATE_FILE).exists() else -1.0

    def on_epoch_end(epoch: int, logged: dict) -> dict:
        nonlocal best_val
        val = float(np.mean([r["dice"] for r in evaluate(model, data, val_ids, genes, hd95=False)]))
        if val > best_val and dist_utils.rank() == 0:
            # written before the epoch's checkpoint: a kill in between repeats the epoch, which
            # writes the same weights again
            tmp = folder / f".{BEST_FILE}.tmp"
            save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(tmp))
            tmp.replace(folder / BEST_FILE)
        best_val = max(best_val, val)
        task.train()
        log(f"epoch {epoch + 1}/{s.epochs}: loss {logged['loss']:.3f} (dice {logged['dice']:.3f}, "
            f"ce {logged['ce']:.4f}), validation Dice {val:.3f}")
        return {"val_dice": val}

    t0 = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    result = train(task, dataset, loop, folder, config={"kind": "segment-fit"}, state={},
                   resume=(folder / MODEL_FILE).exists(), on_epoch_end=on_epoch_end, log=lambda line: None)
    dist_utils.barrier()
    history = [{k: h[k] for k in ("epoch", "loss", "dice", "ce", "val_dice")} for h in result["history"]]
    best = max(history, key=lambda h: h["val_dice"])  # the first epoch reaching the best Dice
    model.load_state_dict(load_file(str(folder / BEST_FILE)))
    model.eval()
    return {"history": history, "best_epoch": best["epoch"], "best_val_dice": best["val_dice"],
            "train_seconds": time.perf_counter() - t0}


def train_into(s: SegmentSettings, folder: Path | None, log=info) -> dict:
    """Everything of ``segment train`` written into ``folder`` (the temporary output folder; None
    on the ranks of a torchrun job that do not write)."""
    # a monai decoder uses the checkpoint only to put its held-out patients into the test split
    pre = load_pretrained(s.checkpoint) if s.checkpoint else None
    use_genes = bool(s.genes) and s.decoder == "fusion"
    if s.genes and not use_genes:
        warn(f"--decoder {s.decoder} segments the images alone: --genes is ignored")
    data = SegmentData(s.images, s.genes if use_genes else None)
    samples = data.require_masks()
    if s.keep:
        keep = set(read_id_list(s.keep))
        samples = [x for x in samples if x in keep]
        if not samples:
            raise InconsistentInputError("no patient with a mask is in the --keep list", s.keep)
    if use_genes:
        samples = data.restrict_to_genes(samples)
    split = three_way_split(samples, s.test_fraction, s.val_fraction, s.fit.seed,
                            prefer_test=pre.validation_samples if pre else ())
    preset = s.preset or (pre.config.get("preset", "tiny") if pre else "tiny")
    model, described = build_for_training(s.decoder, preset, data, pre, s.init, use_genes, s.image_skips,
                                          s.fit.seed)
    stats = expr_stats(pre, data.stores) if pre is not None and data.expr is not None else None
    data.expr_stats = stats
    log(f"segment train: {s.decoder} decoder{' with genes' if use_genes else ''}, {len(split['train'])} train / "
        f"{len(split['validation'])} validation / {len(split['test'])} test patients")
    trained = fit(model, data, split["train"], split["validation"], s.fit, workdir.work_folder(s.out) / "fit",
                  log=log, stop_after_steps=s.stop_after_steps)
    rows = evaluate(model, data, split["test"], use_genes)
    for r in rows:
        r.pop("prob", None)
    summary = summarise(rows)
    if folder is None:  # another rank of a torchrun job: rank 0 writes
        return {"test": summary, "best_epoch": trained["best_epoch"], "best_val_dice": trained["best_val_dice"],
                "n": {k: len(v) for k, v in split.items()}}
    write_metrics(folder / "metrics.tsv", rows)
    fusion = s.decoder == "fusion"
    config = {"kind": KIND, **described, "preset": preset, "init": s.init if fusion else None,
              "freeze_encoders": s.fit.freeze_encoders, "loss": s.fit.loss, "patch_shape": list(model.patch_shape),
              "grid_spacing": list(data.spacing), "in_channels": data.in_channels,
              "pretrain_checkpoint": os.path.abspath(s.checkpoint) if s.checkpoint else None,
              "pretrain_config": pre.config if fusion else None, "parameters": count_parameters(model)}
    state = {"split": split, "seed": s.fit.seed, "fit": dataclasses.asdict(s.fit), "images": os.path.abspath(s.images),
             "genes": os.path.abspath(s.genes) if use_genes else None, **trained, "test": summary}
    save_checkpoint(folder, model=model, config=config, state=state)
    if stats is not None:
        write_data_stats(folder, {"expr_mean": stats[0], "expr_std": stats[1]})
    figures = write_overlays(model, data, rows, folder / "overlays", use_genes, s.overlays)
    result = {"decoder": s.decoder, "genes": use_genes, "init": config["init"], "preset": preset,
              "parameters": config["parameters"], "train_seconds": trained["train_seconds"],
              "best_epoch": trained["best_epoch"], "best_val_dice": trained["best_val_dice"],
              "epochs": s.fit.epochs, "n": {k: len(v) for k, v in split.items()}, "test": summary,
              "rows": rows, "figures": figures}
    (folder / "metrics.json").write_text(json.dumps(result, indent=2))
    log(f"test {describe(summary, 'held-out test patients')} (best validation Dice "
        f"{trained['best_val_dice']:.3f} at epoch {trained['best_epoch']})")
    if summary.get("n_empty"):
        warn(f"{summary['n_empty']} of {summary['n']} test predictions are empty where there is a lesion; "
             f"HD95 over the non-empty ones is {summary['hd95_mm_nonempty_mean']:.2f} mm (metrics.json)")
    if trained["best_val_dice"] < UNTRAINED_DICE:
        warn(f"validation Dice stayed at {trained['best_val_dice']:.3f} over {s.fit.epochs} epoch(s): the model has "
             f"not learnt the lesions yet; train longer (the default is --epochs {FitSettings().epochs}) "
             "or check that the masks match the images")
    return result


def run_segment_train(s: SegmentSettings, log=info) -> dict:
    """Split, train, test and write the model folder ``s.out``; return what metrics.json holds.

    Training checkpoints go to ``.OUT.partial`` beside ``--out`` (:mod:`phenoclip.train.workdir`):
    a stop signal saves and exits 75, ``--resume`` continues exactly. Under torchrun the ranks
    train data-parallel and rank 0 alone writes.
    """
    s.validate()
    with workdir.resumable_run(s.out, s.fingerprint(), s.resume):
        with staged_folder(s.out) if dist_utils.rank() == 0 else contextlib.nullcontext() as tmp:
            return train_into(s, tmp, log)
