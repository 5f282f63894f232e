"""Single-modality networks trained from scratch for ``--suite classify`` (paper 000's supervised baselines).

Kept tiny on purpose (a few thousand to ~100k parameters): the benchmark runs on two CPU cores,
and a cohort of ~200 patients cannot feed anything larger. Each network trains through the one
training loop (:mod:`phenoclip.train.loop`: AdamW at a constant rate, cross-entropy) on the
training patients minus a stratified validation slice; the loop stops when the validation loss
has not improved for ``patience`` epochs, and the weights of the best epoch are restored, so the
test split never steers training.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from phenoclip.data.batch import SAMPLE_IDS
from phenoclip.ops.draws import RowDraws, drawing, row_dropout
from phenoclip.train.loop import LoopSettings, best_epoch, train


def gene_mlp(n_variants: int, n_classes: int, hidden: int = 32) -> nn.Module:
    """Dosages (standardised) -> dropout -> 32 -> classes; dropout on the input too, ~2,000 inputs for ~150 patients."""
    return nn.Sequential(nn.Dropout(0.2), nn.Linear(n_variants, hidden), nn.ReLU(), nn.Dropout(0.3),
                         nn.Linear(hidden, n_classes))


def mri_cnn3d(n_classes: int, in_channels: int = 1, width: int = 8) -> nn.Module:
    """Three stride-2 3D convolutions (8-16-16 channels), global average pooling, a linear layer."""
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv3d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm3d(cout), nn.ReLU()]

    return nn.Sequential(*block(in_channels, width), *block(width, 2 * width), *block(2 * width, 2 * width),
                         nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Dropout(0.3), nn.Linear(2 * width, n_classes))


def signal_cnn1d(n_channels: int, n_classes: int, width: int = 16) -> nn.Module:
    """Four stride-2 1D convolutions (kernel 7), global average and max pooling, a linear layer.

    Max pooling beside the average keeps rare events (an irregular beat) visible after pooling.
    """
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv1d(cin, cout, 7, stride=2, padding=3), nn.BatchNorm1d(cout), nn.ReLU()]

    class _Pool(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x.mean(-1), x.amax(-1)], dim=1)

    return nn.Sequential(*block(n_channels, width), *block(width, width), *block(width, 2 * width),
                         *block(2 * width, 2 * width), _Pool(), nn.Dropout(0.3), nn.Linear(4 * width, n_classes))


@dataclass
class TrainSettings:
    max_epochs: int = 30
    patience: int = 5
    lr: float = 1e-3
    weight_decay: float = 1e-3
    batch_size: int = 16
    val_fraction: float = 0.2


@dataclass
class TrainLog:
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    n_fit: int
    n_val: int


def validation_slice(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """bool mask: a stratified ``fraction`` of the training patients held out for early stopping."""
    rng = np.random.default_rng(seed)
    val = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        val[members[:max(1, int(round(len(members) * fraction)))]] = True
    return val


class _Rows(torch.utils.data.Dataset):
    """Feature rows and classes as items of the training loop (a row's index is its ID)."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x, self.y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> int:
        return i

    def collate(self, rows: list[int]) -> dict:
        return {SAMPLE_IDS: [str(i) for i in rows], "x": self.x[rows], "y": self.y[rows]}


class ClassifyTask(nn.Module):
    """Cross-entropy of a classifier, as a task of :func:`phenoclip.train.loop.train`: its dropout
    draws from per-row streams keyed by the step (so a fit is reproducible from its seed alone)."""

    def __init__(self, net: nn.Module, seed: int):
        super().__init__()
        self.net = net
        self.generators = {"task": torch.Generator().manual_seed(seed + 1)}
        row_dropout(self)

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        step_key = int(torch.randint(0, 1 << 62, (1,), generator=self.generators["task"]))
        with drawing(RowDraws.for_batch(step_key, batch[SAMPLE_IDS])):
            loss = nn.functional.cross_entropy(self.net(batch["x"]), batch["y"])
        return loss, {"loss": float(loss.detach())}

    def after_step(self, progress: float, lr: float) -> None:
        pass


def _loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 64) -> float:
    net.eval()
    with torch.no_grad():
        total = sum(float(nn.functional.cross_entropy(net(x[i:i + batch_size]), y[i:i + batch_size],
                                                      reduction="sum")) for i in range(0, len(x), batch_size))
    return total / max(1, len(x))


def train_classifier(net: nn.Module, x: np.ndarray, y: np.ndarray, settings: TrainSettings,
                     seed: int) -> TrainLog:
    """Train ``net`` in place on ``(x, y)`` through the one training loop (AdamW at a constant rate),
    stopping early on the loss of a stratified validation slice; ends with the best epoch's weights."""
    val = validation_slice(y, settings.val_fraction, seed)
    fit_rows = _Rows(x[~val], y[~val])
    xv, yv = torch.as_tensor(x[val], dtype=torch.float32), torch.as_tensor(y[val], dtype=torch.long)
    task = ClassifyTask(net, seed)
    loop = LoopSettings(epochs=settings.max_epochs, batch_size=min(settings.batch_size, len(fit_rows)),
                        lr=settings.lr, weight_decay=settings.weight_decay, schedule="constant", grad_clip=0.0,
                        seed=seed, progress=None, monitor="val_loss", patience=settings.patience, min_delta=1e-4)
    best: dict = {"loss": float("inf"), "state": copy.deepcopy(net.state_dict())}

    def on_epoch_end(epoch: int, logged: dict) -> dict:
        # leaves the net in eval mode: the loop puts the task back in training mode at each epoch's start
        current = _loss(net, xv, yv)
        if current < best["loss"] - loop.min_delta:  # the loop's own rule for the best epoch
            best.update(loss=current, state=copy.deepcopy(net.state_dict()))
        return {"val_loss": current}

    with tempfile.TemporaryDirectory(prefix="phenoclip_scratch_") as folder:
        result = train(task, fit_rows, loop, folder, config={"kind": "bench-scratch"}, state={},
                       on_epoch_end=on_epoch_end, log=lambda line: None)
    history = result["history"]
    net.load_state_dict(best["state"])
    net.eval()
    best_at = best_epoch(history, "val_loss", "min", loop.min_delta)
    return TrainLog(len(history), best_at, best["loss"], len(fit_rows), int(val.sum()))


def predict_proba(net: nn.Module, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """(N, C) softmax probabilities, float64 (eval mode)."""
    net.eval()
    with torch.no_grad():
        out = [torch.softmax(net(torch.as_tensor(x[i:i + batch_size], dtype=torch.float32)), dim=1)
               for i in range(0, len(x), batch_size)]
    return torch.cat(out).double().numpy()
