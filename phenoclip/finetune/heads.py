"""Fitting a :class:`~phenoclip.models.finetune.FinetuneModel`'s head: linear (frozen encoders) or full.

* ``linear``: the encoders stay frozen; the fused features of the training patients are
  standardised and a scikit-learn ``LogisticRegression`` (classification) or ``Ridge``
  (regression) is fitted on them, its penalty chosen by inner cross-validation on the training
  patients (:mod:`phenoclip.eval.linear_models`, the same procedure as the raw-feature
  baselines), then copied into the torch head, so the saved model predicts exactly what was
  evaluated. Paper 002's linear evaluation.
* ``full``: encoders and head are trained together with AdamW (the encoders at a tenth of the
  head's learning rate, so fine-tuning adjusts rather than overwrites the pretrained features),
  cross-entropy or mean squared error on the standardised target, for a fixed number of epochs,
  through the one training loop (:mod:`phenoclip.train.loop`: exact resume, stop signals, torchrun).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import Ridge

from phenoclip.data.multimodal import MultimodalDataset, collate
from phenoclip.eval.linear_models import as_logits, fit_logistic, fit_ridge, probe_scaling
from phenoclip.eval.gene_probe import fit_gene_probe
from phenoclip.eval.stacking import fit_stacked
from phenoclip.models.finetune import FinetuneModel
from phenoclip.checkpoint_files import MODEL_FILE
from phenoclip.train import distributed as dist_utils
from phenoclip.train.loop import LoopSettings, train
from phenoclip.finetune.task import FinetuneTask

MODES = ("linear", "full")


@dataclass
class HeadSettings:
    mode: str = "linear"
    #: inverse L2 strength of the logistic regression (sklearn's C); None: chosen by inner CV
    #: (regression: ridge's alpha by inner CV, else ``ridge_alpha``)
    c: float | None = None
    ridge_alpha: float = 1.0
    epochs: int = 30          # full mode
    lr: float = 1e-3          # full mode, head; encoders get lr / 10
    batch_size: int = 32
    weight_decay: float = 0.01


@torch.no_grad()
def fused_features(ft: FinetuneModel, dataset: MultimodalDataset, batch_size: int = 64) -> np.ndarray:
    """(N, F) float64 fused features of every patient of ``dataset`` (eval mode)."""
    ft.eval()
    out = []
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(len(dataset), start + batch_size))])
        out.append(ft.features(batch))
    return torch.cat(out).double().numpy() if out else np.zeros((0, ft.in_features))


def fit_linear_head(ft: FinetuneModel, x: np.ndarray, y: np.ndarray, classification: bool,
                    settings: HeadSettings, seed: int, caps: list[float] | None = None,
                    honest: np.ndarray | None = None) -> dict:
    """Fit the head of ``ft`` on features ``x`` (N, F) and targets ``y``; encoders untouched.

    The penalty (``C`` or ridge ``alpha``) is chosen by inner cross-validation on these
    patients unless ``settings.c`` fixes ``C``; returns what was chosen. ``caps``: a stacked
    head's per-block weight caps (:mod:`phenoclip.finetune.stack_caps`; None: uncapped). A head over
    genotypes alone whose block holds the eQTL-screened SNPs beside the read-out
    (:attr:`FinetuneModel.gene_choice`) chooses between them (:func:`phenoclip.eval.gene_probe.fit_gene_probe`),
    scoring its folds on ``honest``: ``x`` with each patient's cross-fitted read-out (default ``x``).
    """
    if ft.fusion == "stack":
        return _fit_stacked_head(ft, x, y, classification, settings, seed, caps)
    mean, scale = probe_scaling(x, ft.natural)  # constant features (an absent modality) stay at 0
    z = (x - mean) / scale
    n_out = ft.head.out_features
    weight = np.zeros((n_out, x.shape[1]))
    bias = np.zeros(n_out)
    if ft.gene_choice:
        target_mean, target_scale = (0.0, 1.0) if classification else (float(y.mean()), float(y.std() or 1.0))
        z_honest = z if honest is None else (np.asarray(honest, dtype=np.float64) - mean) / scale
        probe = fit_gene_probe(z, z_honest, y if classification else (y - target_mean) / target_scale,
                               ft.model.embed_dim, n_out if classification else None, seed, c=settings.c)
        weight, bias, chosen = probe.weight, probe.bias, probe.chosen
    elif classification:
        fit = fit_logistic(z, y, n_out, seed, c=settings.c)
        weight, bias = as_logits(fit, n_out)
        target_mean, target_scale, chosen = 0.0, 1.0, fit.chosen
    else:
        target_mean, target_scale = float(y.mean()), float(y.std() or 1.0)
        fit = fit_ridge(z, (y - target_mean) / target_scale, seed) if settings.c is None else None
        if fit is None:
            reg = Ridge(alpha=settings.ridge_alpha).fit(z, (y - target_mean) / target_scale)
            weight[0], bias[0], chosen = reg.coef_, reg.intercept_, {"alpha": settings.ridge_alpha}
        else:
            w, b = fit.coefficients()
            weight[0], bias[0], chosen = w[0], b[0], fit.chosen
    with torch.no_grad():
        ft.feature_mean.copy_(torch.as_tensor(mean))
        ft.feature_scale.copy_(torch.as_tensor(scale))
        ft.head.weight.copy_(torch.as_tensor(weight))
        ft.head.bias.copy_(torch.as_tensor(bias))
        ft.target_mean.fill_(target_mean)
        ft.target_scale.fill_(target_scale)
    return chosen


def _fit_stacked_head(ft: FinetuneModel, x: np.ndarray, y: np.ndarray, classification: bool,
                      settings: HeadSettings, seed: int, caps: list[float] | None = None) -> dict:
    """``fusion="stack"``: per-modality probes and the meta regression
    (:func:`phenoclip.eval.stacking.fit_stacked`), copied into ``ft``'s block heads and head."""
    if not classification:
        raise ValueError("stacked fusion needs a class label (use --fusion concat for a regression)")
    k = ft.head.out_features
    fit = fit_stacked(x, ft.widths, y, k, seed, c=settings.c, caps=caps, natural=ft.natural)
    with torch.no_grad():
        ft.feature_mean.copy_(torch.as_tensor(np.concatenate(
            [b.mean if b else np.zeros(w) for b, w in zip(fit.blocks, fit.widths)])))
        ft.feature_scale.copy_(torch.as_tensor(np.concatenate(
            [b.scale if b else np.ones(w) for b, w in zip(fit.blocks, fit.widths)])))
        for head, b in zip(ft.block_heads, fit.blocks):
            # a block whose probe could not be fitted (one class among its patients) stays uniform
            head.weight.copy_(torch.as_tensor(b.weight if b else np.zeros(tuple(head.weight.shape))))
            head.bias.copy_(torch.as_tensor(b.bias if b else np.zeros(k)))
        ft.head.weight.copy_(torch.as_tensor(fit.meta_weight))
        ft.head.bias.copy_(torch.as_tensor(fit.meta_bias))
    return fit.chosen


def train_full(ft: FinetuneModel, dataset: MultimodalDataset, y: np.ndarray, classification: bool,
               settings: HeadSettings, seed: int, folder: str | os.PathLike, *,
               stop_after_steps: int | None = None) -> None:
    """Train encoders and head of ``ft`` end to end on ``dataset`` (targets ``y`` in its order).

    Through the one training loop (:mod:`phenoclip.train.loop`) with checkpoints in ``folder``:
    a folder that already holds one is continued exactly where it stopped (a finished one only
    loads its weights), a stop signal saves and raises :class:`~phenoclip.train.loop.Preempted`,
    and under torchrun each rank takes its share of every global batch. AdamW at a constant
    rate, no gradient clipping.
    """
    # standardise with the starting features, so the head's learning rate means the same for any encoder
    x0 = fused_features(ft, dataset)
    fit_linear_head(ft, x0, y, classification, settings, seed)  # a warm start: the linear solution
    targets = y if classification else (y - float(ft.target_mean)) / float(ft.target_scale)
    task = FinetuneTask(ft, dict(zip(dataset.samples, targets.tolist())), classification, seed)
    world = max(1, dist_utils.world_size())
    loop = LoopSettings(epochs=settings.epochs, batch_size=max(1, min(settings.batch_size, len(dataset) // world)),
                        lr=settings.lr, weight_decay=settings.weight_decay, warmup_fraction=0.0, grad_clip=0.0,
                        seed=seed, schedule="constant", progress=None, stop_after_steps=stop_after_steps)
    folder = Path(folder)
    train(task, dataset, loop, folder, config={"kind": "finetune-fit", "n_patients": len(dataset)}, state={},
          resume=(folder / MODEL_FILE).exists(), log=lambda line: None)
    ft.eval()


@torch.no_grad()
def predict_scores(ft: FinetuneModel, dataset: MultimodalDataset, classification: bool) -> np.ndarray:
    """(N, C) class probabilities or (N,) predicted values for ``dataset``'s patients."""
    ft.eval()
    outs = []
    for start in range(0, len(dataset), 64):
        outs.append(ft(collate([dataset[i] for i in range(start, min(len(dataset), start + 64))])))
    out = torch.cat(outs).double()
    return torch.softmax(out, dim=1).numpy() if classification else out[:, 0].numpy()


def scores_from_features(ft: FinetuneModel, x: np.ndarray, classification: bool) -> np.ndarray:
    """As :func:`predict_scores`, from precomputed fused features (linear mode's fast path)."""
    with torch.no_grad():
        out = ft.head_output(torch.as_tensor(x, dtype=torch.float32)).double()
    return torch.softmax(out, dim=1).numpy() if classification else out[:, 0].numpy()
