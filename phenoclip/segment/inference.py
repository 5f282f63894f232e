"""Applying a segmenter to a store's patients: lesion probabilities and per-patient metrics.

Shared by training (validation Dice each epoch, test metrics) and ``segment predict``, so both
score exactly alike. :func:`predict_probabilities` uses monai's ``sliding_window_inference``
(Gaussian-weighted, 25 % overlap) when the grid differs from the model's training patch.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from phenoclip.segment.data import SegmentData, lesion_metrics


def batches(data: SegmentData, samples: list[str],
             batch_size: int, genes: bool) -> Iterator[tuple[list[str], torch.Tensor, torch.Tensor | None, torch.Tensor]]:
    """``(ids, images (B, C, D, H, W), values (B, G) or None, masks (B, 1, D, H, W))`` in order."""
    for start in range(0, len(samples), batch_size):
        ids = samples[start:start + batch_size]
        x = torch.from_numpy(np.stack([data.image(s) for s in ids]))
        v = torch.from_numpy(np.stack([data.values(s) for s in ids])) if genes else None
        y = torch.from_numpy(np.stack([data.mask(s) for s in ids]))
        yield ids, x, v, y


@torch.no_grad()
def predict_probabilities(model: nn.Module, images: torch.Tensor, values: torch.Tensor | None,
                          sw_batch_size: int = 4, overlap: float = 0.25) -> torch.Tensor:
    """``images (B, C, D, H, W)`` -> probabilities ``(B, D, H, W)``; sliding windows of the model's
    patch when the volume has another shape (larger, or smaller: then padded)."""
    model.eval()
    patch = tuple(model.patch_shape)
    if tuple(images.shape[2:]) == patch:
        return torch.sigmoid(model.forward_volumes(images, values))[:, 0]
    # imported here: monai takes seconds to import; only a grid other than the model's patch needs its inferer
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
    for ids, x, v, y in batches(data, samples, batch_size, genes):
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
