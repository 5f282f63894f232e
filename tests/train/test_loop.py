"""The one training loop's early stopping: decided from the history, so resume stays exact."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from phenoclip.checkpoint_load import read_state
from phenoclip.train.loop import LoopSettings, Preempted, best_epoch, patience_spent, train


def _history(values, key="val"):
    return [{"epoch": i + 1, key: v} for i, v in enumerate(values)]


def test_best_epoch_follows_mode_and_min_delta():
    h = _history([1.0, 0.8, 0.79, 0.9, 0.5])
    assert best_epoch(h, "val", "min") == 5
    assert best_epoch(h[:4], "val", "min") == 3
    assert best_epoch(h[:4], "val", "min", min_delta=0.05) == 2  # 0.79 is not better than 0.8 by 0.05
    assert best_epoch(h, "val", "max") == 1
    assert best_epoch(_history([0.2, 0.9, 0.95]), "val", "max", min_delta=0.1) == 2
    assert best_epoch([], "val") == 0
    with pytest.raises(ValueError):
        best_epoch(h, "val", "mean")


def test_patience_counts_epochs_since_the_best():
    s = LoopSettings(monitor="val", patience=2)
    assert not patience_spent(_history([1.0, 0.9, 0.95]), s)
    assert patience_spent(_history([1.0, 0.9, 0.95, 0.91]), s)
    assert not patience_spent(_history([1.0, 0.9, 0.95, 0.91]), LoopSettings())  # no monitor: every epoch


class _Rows(torch.utils.data.Dataset):
    def __init__(self, n=48, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 6, generator=g)
        self.y = self.x @ torch.randn(6, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return i

    def collate(self, rows):
        return {"sample_ids": [str(i) for i in rows], "x": self.x[rows], "y": self.y[rows]}


class _Regression(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(6, 1)
        self.generators = {"task": torch.Generator().manual_seed(1)}

    def forward(self, batch):
        loss = nn.functional.mse_loss(self.net(batch["x"]), batch["y"])
        return loss, {"loss": float(loss.detach())}

    def after_step(self, progress, lr):
        pass


def _fit(folder, resume=False, stop_after_steps=None):
    # watched: the epoch's training loss with "max", whose best is epoch 1 while training works,
    # so the run must end after 1 + patience of its 20 epochs
    task, data = _Regression(), _Rows()
    s = LoopSettings(epochs=20, batch_size=8, lr=0.05, schedule="constant", progress=None, monitor="loss",
                     monitor_mode="max", patience=3, stop_after_steps=stop_after_steps)
    result = train(task, data, s, folder, config={"kind": "test"}, state={}, resume=resume, log=lambda line: None)
    return task, result


def test_early_stop_ends_training_and_a_resumed_run_stops_at_the_same_epoch_with_the_same_weights(tmp_path):
    whole, result = _fit(tmp_path / "whole")
    losses = [h["loss"] for h in result["history"]]
    assert result["stopped_early"] and len(losses) == 4 and losses[-1] < losses[0]  # trained, then stopped
    assert read_state(tmp_path / "whole")["finished"]

    with pytest.raises(Preempted):  # killed in the middle of epoch 3 (6 steps per epoch)
        _fit(tmp_path / "cut", stop_after_steps=15)
    resumed, again = _fit(tmp_path / "cut", resume=True)
    assert again["stopped_early"] and [h["epoch"] for h in again["history"]] == [1, 2, 3, 4]
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)

    # resuming a run that already stopped early trains nothing more
    done, third = _fit(tmp_path / "whole", resume=True)
    assert third["stopped_early"] and len(third["history"]) == 4
    for a, b in zip(whole.state_dict().values(), done.state_dict().values()):
        assert torch.equal(a, b)
