"""Building, training and applying a segmenter (:mod:`phenoclip.models.segmentation`).

* :func:`build_for_training`: the fusion decoder on a pretraining checkpoint's ViT (+ Mamba)
  encoders (pretrained or re-initialised), or a monai U-Net, with its JSON description.
* :func:`fit`: AdamW with a warm-up + cosine schedule, Dice-CE, the encoders at a tenth of the
  decoder's learning rate (or frozen); the state with the best validation Dice is kept.
* :func:`train_into`: ``segment train``'s split, training, test metrics and model folder.
* :func:`predict_probabilities`: lesion probabilities on a patient's grid; monai's
  ``sliding_window_inference`` (Gaussian-weighted, 25 % overlap) when the grid differs from the
  model's training patch.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from phenoclip.errors import InconsistentInputError
from phenoclip.models.segmentation import build_segmenter, count_parameters, fusion_config, monai_config
from phenoclip.progress import info, warn
from phenoclip.train import checkpoint as ckpt
from phenoclip.train.segment import (KIND, FitSettings, SegmentData, SegmentSettings, describe, lesion_metrics,
                                     summarise, three_way_split, write_metrics)

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
    from phenoclip.eval.encode import random_init_like

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


def encoder_parameters(model: nn.Module) -> list[nn.Parameter]:
    mods = [getattr(model, n) for n in ("image_encoder", "gene_encoder") if getattr(model, n, None) is not None]
    return [p for m in mods for p in m.parameters()]


def _random_crop(x: torch.Tensor, y: torch.Tensor, patch: Sequence[int], g: torch.Generator):
    """The same random ``patch`` window of images ``(B, C, ...)`` and masks, per patient."""
    if tuple(x.shape[2:]) == tuple(patch):
        return x, y
    xs, ys = [], []
    for i in range(x.shape[0]):
        o = [int(torch.randint(0, s - p + 1, (1,), generator=g)) for s, p in zip(x.shape[2:], patch)]
        sl = (i, slice(None), *(slice(a, a + p) for a, p in zip(o, patch)))
        xs.append(x[sl])
        ys.append(y[sl])
    return torch.stack(xs), torch.stack(ys)


def _batches(data: SegmentData, samples: list[str], batch_size: int, genes: bool,
             g: torch.Generator | None) -> Iterator[tuple[list[str], torch.Tensor, torch.Tensor | None, torch.Tensor]]:
    """``(ids, images (B, C, D, H, W), values (B, G) or None, masks (B, 1, D, H, W))``, shuffled when ``g``."""
    order = torch.randperm(len(samples), generator=g).tolist() if g is not None else list(range(len(samples)))
    n = len(order)
    stop = n - n % batch_size if g is not None and n > batch_size else n  # drop a ragged last training batch
    for start in range(0, stop, batch_size):
        ids = [samples[i] for i in order[start:start + batch_size]]
        x = torch.from_numpy(np.stack([data.image(s) for s in ids]))
        v = torch.from_numpy(np.stack([data.values(s) for s in ids])) if genes else None
        y = torch.from_numpy(np.stack([data.mask(s) for s in ids]))
        yield ids, x, v, y


def _schedule(total_steps: int, warmup: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))
    return factor


def fit(model: nn.Module, data: SegmentData, train_ids: list[str], val_ids: list[str], s: FitSettings,
        log=info) -> dict:
    """Train ``model`` in place; it ends with the weights of its best validation-Dice epoch."""
    from phenoclip.objectives.segmentation import build_loss

    torch.manual_seed(s.seed)
    g = torch.Generator().manual_seed(s.seed)
    loss_fn = build_loss(s.loss)
    enc = encoder_parameters(model)
    enc_ids = {id(p) for p in enc}
    dec = [p for p in model.parameters() if id(p) not in enc_ids]
    for p in enc:
        p.requires_grad_(not s.freeze_encoders)
    groups = [{"params": dec, "lr": s.lr}]
    if enc and not s.freeze_encoders:
        groups.append({"params": enc, "lr": s.lr * s.encoder_lr_scale})
    opt = torch.optim.AdamW(groups, weight_decay=s.weight_decay)
    batch = min(s.batch_size, len(train_ids))
    steps_per_epoch = max(1, len(train_ids) // batch)
    total = s.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(total, max(1, int(s.warmup_fraction * total))))
    genes = bool(getattr(model, "needs_genes", False))
    best = (-1.0, 0, copy.deepcopy(model.state_dict()))
    history = []
    t0 = time.perf_counter()
    for epoch in range(1, s.epochs + 1):
        model.train()
        if s.freeze_encoders:
            for n in ("image_encoder", "gene_encoder"):
                if getattr(model, n, None) is not None:
                    getattr(model, n).eval()
        sums = {"loss": 0.0, "dice": 0.0, "ce": 0.0}
        n = 0
        for _, x, v, y in _batches(data, train_ids, batch, genes, g):
            x, y = _random_crop(x, y, model.patch_shape, g)
            if v is not None and s.gene_dropout > 0:  # blank some patients' genes: the image must carry the mask
                v = v * (torch.rand(v.shape[0], 1, generator=g) >= s.gene_dropout)
            terms = loss_fn(model.forward_volumes(x, v), y)
            opt.zero_grad(set_to_none=True)
            terms.loss.backward()
            opt.step()
            sched.step()
            for k in sums:
                sums[k] += float(getattr(terms, k).detach())
            n += 1
        val = float(np.mean([r["dice"] for r in evaluate(model, data, val_ids, genes, hd95=False)]))
        row = {"epoch": epoch, **{k: v / max(n, 1) for k, v in sums.items()}, "val_dice": val,
               "seconds": time.perf_counter() - t0}
        history.append(row)
        if val > best[0]:
            best = (val, epoch, copy.deepcopy(model.state_dict()))
        log(f"epoch {epoch}/{s.epochs}: loss {row['loss']:.3f} (dice {row['dice']:.3f}, ce {row['ce']:.4f}), "
            f"validation Dice {val:.3f}")
    model.load_state_dict(best[2])
    model.eval()
    return {"history": history, "best_epoch": best[1], "best_val_dice": best[0],
            "train_seconds": time.perf_counter() - t0}


@torch.no_grad()
def predict_probabilities(model: nn.Module, images: torch.Tensor, values: torch.Tensor | None,
                          sw_batch_size: int = 4, overlap: float = 0.25) -> torch.Tensor:
    """``images (B, C, D, H, W)`` -> probabilities ``(B, D, H, W)``; sliding windows of the model's
    patch when the volume has another shape (larger, or smaller: then padded)."""
    model.eval()
    patch = tuple(model.patch_shape)
    if tuple(images.shape[2:]) == patch:
        return torch.sigmoid(model.forward_volumes(images, values))[:, 0]
    from monai.inferers import sliding_window_inference

    out = []
    for i in range(images.shape[0]):
        v = None if values is None else values[i:i + 1]
        logits = sliding_window_inference(
            images[i:i + 1], patch, sw_batch_size,
            lambda w: model.forward_volumes(w, None if v is None else v.expand(w.shape[0], -1)),
            overlap=overlap, mode="gaussian")
        out.append(torch.sigmoid(logits)[0, 0])
    return torch.stack(out)


def evaluate(model: nn.Module, data: SegmentData, samples: list[str], genes: bool, hd95: bool = True,
             keep: Sequence[str] = (), batch_size: int = 8) -> list[dict]:
    """Per patient Dice (and HD95) of the thresholded prediction; ``prob`` kept for ``keep`` patients."""
    rows = []
    for ids, x, v, y in _batches(data, samples, batch_size, genes, None):
        prob = predict_probabilities(model, x, v).numpy()
        for i, s in enumerate(ids):
            pred = prob[i] > 0.5
            if hd95:
                row = {"sample": s, **lesion_metrics(pred, y[i, 0].numpy(), data.spacing)}
            else:  # validation: Dice only, cheaply
                t = y[i, 0].numpy() > 0
                inter, total = float((pred & t).sum()), float(pred.sum() + t.sum())
                row = {"sample": s, "dice": 1.0 if total == 0 else 2 * inter / total}
            if s in keep:
                row["prob"] = prob[i]
            rows.append(row)
    return rows


def train_into(s: SegmentSettings, folder: Path, log=info) -> dict:
    """Everything of ``segment train`` written into ``folder`` (the temporary output folder)."""
    from phenoclip.eval.encode import expr_stats, load_pretrained
    from phenoclip.io.tables import read_id_list
    from phenoclip.train.segment_predict import write_overlays

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
    trained = fit(model, data, split["train"], split["validation"], s.fit, log=log)
    rows = evaluate(model, data, split["test"], use_genes)
    for r in rows:
        r.pop("prob", None)
    summary = summarise(rows)
    write_metrics(folder / "metrics.tsv", rows)
    fusion = s.decoder == "fusion"
    config = {"kind": KIND, **described, "preset": preset, "init": s.init if fusion else None,
              "freeze_encoders": s.fit.freeze_encoders, "loss": s.fit.loss, "patch_shape": list(model.patch_shape),
              "grid_spacing": list(data.spacing), "in_channels": data.in_channels,
              "pretrain_checkpoint": os.path.abspath(s.checkpoint) if s.checkpoint else None,
              "pretrain_config": pre.config if fusion else None, "parameters": count_parameters(model)}
    state = {"split": split, "seed": s.fit.seed, "fit": dataclasses.asdict(s.fit), "images": os.path.abspath(s.images),
             "genes": os.path.abspath(s.genes) if use_genes else None, **trained, "test": summary}
    ckpt.save_checkpoint(folder, model=model, config=config, state=state)
    if stats is not None:
        ckpt.write_data_stats(folder, {"expr_mean": stats[0], "expr_std": stats[1]})
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
