"""``segment train``'s fitting as a task of the one training loop (:mod:`phenoclip.train.loop`).

Through the loop, segmentation gains what pretraining has: exact ``--resume`` after a stop
anywhere, SIGTERM/SIGUSR1 checkpoints (exit 75) and data parallelism under torchrun. Every random
draw of a step (the crop window, the gene dropout, dropout inside the networks) comes from
per-patient streams keyed by a number drawn from the checkpointed ``generators``
(:mod:`phenoclip.ops.draws`); Dice is per volume and cross-entropy a mean over equally sized
volumes, so N ranks with batch B average to the loss of one process with batch N x B.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from phenoclip.data.batch import SAMPLE_IDS
from phenoclip.models.heads import freeze_attention_key_bias, freeze_bias_before_batch_norm
from phenoclip.ops.draws import RowDraws, drawing, row_dropout

ENCODERS = ("image_encoder", "gene_encoder")


class SegmentDataset(torch.utils.data.Dataset):
    """Training patients of a :class:`~phenoclip.segment.data.SegmentData` as loop items."""

    def __init__(self, data, samples: Sequence[str], genes: bool):
        self.data, self.samples, self.genes = data, list(samples), genes

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        s = self.samples[i]
        return {SAMPLE_IDS: s, "image": self.data.image(s), "mask": self.data.mask(s),
                "values": self.data.values(s) if self.genes else None}

    @staticmethod
    def collate(items: list[dict]) -> dict:
        return {SAMPLE_IDS: [it[SAMPLE_IDS] for it in items],
                "image": torch.from_numpy(np.stack([it["image"] for it in items])),
                "mask": torch.from_numpy(np.stack([it["mask"] for it in items])),
                "values": (torch.from_numpy(np.stack([it["values"] for it in items]))
                           if items[0]["values"] is not None else None)}


def encoder_parameters(model: nn.Module) -> list[nn.Parameter]:
    mods = [getattr(model, n) for n in ENCODERS if getattr(model, n, None) is not None]
    return [p for m in mods for p in m.parameters()]


def crop(x: torch.Tensor, y: torch.Tensor, patch: Sequence[int], u: torch.Tensor):
    """The same ``patch`` window of images ``(B, C, ...)`` and masks per patient, placed by ``u``
    (B, 3) uniform in [0, 1): offset ``floor(u * (size - patch + 1))`` along each axis."""
    if tuple(x.shape[2:]) == tuple(patch):
        return x, y
    xs, ys = [], []
    for i in range(x.shape[0]):
        o = [min(int(float(u[i, d]) * (s - p + 1)), s - p) for d, (s, p) in enumerate(zip(x.shape[2:], patch))]
        sl = (i, slice(None), *(slice(a, a + p) for a, p in zip(o, patch)))
        xs.append(x[sl])
        ys.append(y[sl])
    return torch.stack(xs), torch.stack(ys)


class SegmentTask(nn.Module):
    """Dice-CE of a segmenter on a batch's random patch windows (see the module docstring)."""

    def __init__(self, model: nn.Module, loss_fn: nn.Module, *, lr_scale: float, freeze_encoders: bool,
                 gene_dropout: float, seed: int):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn
        self.lr_scale, self.freeze_encoders, self.gene_dropout = lr_scale, freeze_encoders, gene_dropout
        self.generators = {"task": torch.Generator().manual_seed(seed + 1)}
        for p in encoder_parameters(model):
            p.requires_grad_(not freeze_encoders)
        row_dropout(self)
        freeze_bias_before_batch_norm(self)  # zero gradient in exact arithmetic; frozen, ranks agree bit for bit
        freeze_attention_key_bias(self)

    def train(self, mode: bool = True) -> "SegmentTask":
        super().train(mode)
        if mode and self.freeze_encoders:  # frozen encoders keep their normalisation statistics
            for n in ENCODERS:
                if getattr(self.model, n, None) is not None:
                    getattr(self.model, n).eval()
        return self

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """The decoder at ``lr``, trainable encoders at ``lr * lr_scale``; weight decay on both."""
        enc = {id(p) for p in encoder_parameters(self.model)}
        dec = [p for p in self.model.parameters() if id(p) not in enc and p.requires_grad]
        groups = [{"params": dec, "lr": lr, "weight_decay": weight_decay}]
        trainable = [p for p in encoder_parameters(self.model) if p.requires_grad]
        if trainable:
            groups.append({"params": trainable, "lr": lr * self.lr_scale, "weight_decay": weight_decay})
        return groups

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        step_key = int(torch.randint(0, 1 << 62, (1,), generator=self.generators["task"]))
        g = RowDraws.for_batch(step_key, batch[SAMPLE_IDS])
        x, y = crop(batch["image"], batch["mask"], self.model.patch_shape, g.rand((len(g), 3)))
        v = batch["values"]
        if v is not None and self.gene_dropout > 0:  # blank some patients' genes: the image must carry the mask
            v = v * (g.rand((len(g), 1), device=v.device) >= self.gene_dropout)
        with drawing(g):
            terms = self.loss_fn(self.model.forward_volumes(x, v), y)
        return terms.loss, {k: float(getattr(terms, k).detach()) for k in ("loss", "dice", "ce")}

    def after_step(self, progress: float, lr: float) -> None:
        pass
