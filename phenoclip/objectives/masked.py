"""Masked-modelling losses: reconstruct masked patches (MVM, MAE-style) or predict masked tokens (MHM).

Both average over masked positions only and return an exact 0, still attached to the graph,
when a batch has nothing masked (a tiny batch at a low mask ratio), never NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MaskedReconstructionLoss(nn.Module):
    """MAE's loss: mean squared error over the masked patches.

    Parameters
    ----------
    norm_pix : normalise each target patch to zero mean and unit variance first (MAE's
        ``norm_pix_loss``: unbiased variance, ``eps`` added), so the encoder learns structure
        rather than intensity offsets. Needs P >= 2.
    eps : added to the variance.
    name : key of the returned term.

    forward(pred (B, L, P), target (B, L, P), mask (B, L)) with ``mask`` True/1 for a masked
    (hidden) patch, or float weights. Each patch's MSE is averaged over its P values, then over the
    masked patches. Returns ``{name}``.
    """

    def __init__(self, norm_pix: bool = True, eps: float = 1e-6, name: str = "mvm") -> None:
        super().__init__()
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.norm_pix, self.eps, self.name = norm_pix, float(eps), name

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        if pred.shape != target.shape or pred.ndim != 3 or tuple(mask.shape) != tuple(pred.shape[:2]):
            raise ValueError(f"expected pred/target (B, L, P) and mask (B, L), got {tuple(pred.shape)}, "
                             f"{tuple(target.shape)}, {tuple(mask.shape)}")
        if self.norm_pix:
            if target.shape[-1] < 2:
                raise ValueError("norm_pix needs at least 2 values per patch")
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + self.eps).sqrt()
        per_patch = ((pred - target) ** 2).mean(dim=-1)  # (B, L)
        weight = mask.to(per_patch.dtype)
        # where(): unmasked patches cannot leak NaN; clamp: nothing masked gives an exact 0, not 0/0
        weighted = torch.where(weight != 0, per_patch * weight, 0.0)
        loss = weighted.sum() / weight.sum().clamp(min=torch.finfo(weight.dtype).tiny)
        return {self.name: loss}


class MaskedTokenLoss(nn.Module):
    """Cross-entropy over masked tokens (masked dosage / haplotype modelling).

    Parameters
    ----------
    ignore_index : target value excluded from the loss (missing genotypes are -1).
    name : prefix of the returned terms.

    forward(logits (..., C), targets (...), mask (...) bool) with ``mask`` True for a masked
    token, e.g. logits (B, V, 3) for dosages 0/1/2, or (B, 2, V, 2) for haplotype alleles.
    ``targets`` are class indices: long, or float holding whole numbers (the batch's dosage).
    Averages over tokens that are masked *and* have a target. Returns ``{name: cross-entropy,
    name/accuracy: fraction of those tokens predicted right (no grad; 0 when there are none)}``.
    """

    def __init__(self, ignore_index: int = -1, name: str = "mhm") -> None:
        super().__init__()
        self.ignore_index, self.name = int(ignore_index), name

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        if tuple(logits.shape[:-1]) != tuple(targets.shape) or targets.shape != mask.shape:
            raise ValueError(f"expected logits (..., C), targets (...) and mask (...), got {tuple(logits.shape)}, "
                             f"{tuple(targets.shape)}, {tuple(mask.shape)}")
        use = mask.bool() & (targets != self.ignore_index)
        safe = torch.where(use, targets, 0).long()  # cross_entropy must not see -1 even where unused
        per_token = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), safe.reshape(-1),
                                    reduction="none").view(targets.shape)
        count = use.sum().clamp(min=1)
        loss = torch.where(use, per_token, 0.0).sum() / count
        correct = (logits.detach().argmax(dim=-1) == targets) & use
        return {self.name: loss, f"{self.name}/accuracy": correct.sum().float() / count}
