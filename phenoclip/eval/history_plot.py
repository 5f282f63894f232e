"""The pretraining history figure: training losses per epoch and held-out retrieval MRR per modality pair.

Drawn like every evaluation plot (:mod:`phenoclip.eval.plots`): an Agg figure, matplotlib
imported only when drawing, the PNG written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from phenoclip.eval.plots import new_figure, save_png, wrap_title

#: history keys that are not losses
_NOT_LOSSES = {"epoch", "samples_per_s", "data_wait_share", "lr", "temperature"}


def plot_pretrain_history(history: Sequence[dict[str, Any]], path: str | os.PathLike,
                          init_validation: dict[str, float] | None = None, title: str = "") -> Path:
    """Training losses per epoch (left) and held-out retrieval MRR per modality pair (right).

    ``history`` is ``state.json``'s list of per-epoch dicts; losses are the keys that are neither
    validation metrics (``val/...``) nor bookkeeping; ``init_validation`` (the same model at random
    initialisation) is drawn as a dashed level per pair, the weak reference a curve must clear.
    """
    if not history:
        raise ValueError("no epochs to plot")
    epochs = np.array([h.get("epoch", i + 1) for i, h in enumerate(history)], dtype=np.float64)
    losses = [k for k in history[-1] if k not in _NOT_LOSSES and not k.startswith("val/") and "/" not in k]
    if len(losses) == 2 and "loss" in losses:  # one objective: its loss is the total
        losses.remove("loss")
    pairs = sorted({k.split("/")[1] for h in history for k in h if k.startswith("val/") and k.endswith("/MRR")})
    fig = new_figure(figsize=(11 if pairs else 6, 4.5))
    axes = fig.subplots(1, 2 if pairs else 1)
    left = axes[0] if pairs else axes
    for k in losses:
        left.plot(epochs, [h.get(k, np.nan) for h in history], linewidth=1.5, label=k)
    left.set(xlabel="epoch", ylabel="training loss (mean over the epoch's steps)")
    left.set_title("training loss", fontsize="medium")
    left.grid(True, alpha=0.3)
    left.legend(fontsize="small")
    if pairs:
        right = axes[1]
        for i, pair in enumerate(pairs):
            line, = right.plot(epochs, [h.get(f"val/{pair}/MRR", np.nan) for h in history], linewidth=1.2,
                               label=pair)
            level = (init_validation or {}).get(f"val/{pair}/MRR")
            if level is not None:
                right.axhline(level, color=line.get_color(), linestyle=":", linewidth=1)
        right.set(xlabel="epoch", ylabel="MRR on held-out validation patients")
        right.set_title("held-out retrieval (dotted: the same model at random init)", fontsize="medium")
        right.grid(True, alpha=0.3)
        right.legend(fontsize="x-small", ncol=2)
    if title:
        fig.suptitle(wrap_title(title, 110), fontsize="medium")
    fig.tight_layout()
    return save_png(fig, path)
