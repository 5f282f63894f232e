"""Evaluation plots for ``phenoclip finetune``: ROC, reliability, label-fraction curve, regression.

Every function writes one PNG and returns its path. The figure is drawn on a
:class:`matplotlib.figure.Figure` with the Agg canvas rather than through ``pyplot``: nothing
depends on a display, the process-wide backend of a caller (a notebook) is left alone, and no
figure stays registered in pyplot's global state. matplotlib is imported inside the functions so
that CLI start-up does not pay for it. The PNG is written to a temporary name in the target
folder and renamed over the target, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from phenoclip.errors import OutputError
from phenoclip.eval.metrics import ece_from_bins, regression_metrics, reliability_bins

DPI = 120


def new_figure(**kwargs: Any):
    """A new Figure attached to the non-interactive Agg canvas (imported lazily)."""
    # imported here: only drawing pays for matplotlib (importing this module must not load it)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically: a temporary file in the same folder, then rename."""
    target = Path(path)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}.png"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(tmp, format="png", dpi=DPI)
        os.replace(tmp, target)
    except OSError as e:
        raise OutputError(f"cannot write the plot ({e.strerror or e})", target) from None
    finally:
        if tmp.exists():
            tmp.unlink()
        # a Figure made without pyplot is freed by the garbage collector; clearing releases its
        # artists now, which matters when a repeat loop draws hundreds of plots
        fig.clear()
    return target


def wrap_title(title: str, width: int) -> str:
    """A title broken at spaces into lines of at most ``width`` characters (a long one is not cut at the edges)."""
    return "\n".join(textwrap.wrap(title, width)) if title else title


def _roc_axes(ax, y: np.ndarray, p: np.ndarray, classes: Sequence[str], title: str) -> None:
    """One model's ROC curves (one per class; the positive class of a binary task) on ``ax``."""
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    drawn = 0
    for c in ([1] if p.shape[1] == 2 else range(p.shape[1])):
        positive = y == c
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = roc_curve(positive, p[:, c])
        auc = roc_auc_score(positive, p[:, c])
        ax.plot(fpr, tpr, linewidth=1.5, label=f"{classes[c]} (AUC {auc:.3f})")
        drawn += 1
    if not drawn:
        ax.text(0.5, 0.5, "no class has both positives and negatives", ha="center", va="center")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate")
    ax.set_title(title, fontsize="medium")
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize="small")


def plot_roc_models(y_true: Any, by_model: dict[str, Any], classes: Sequence[str], path: str | os.PathLike,
                    title: str = "") -> Path:
    """ROC curves of several models on the same patients, one panel each (pretrained beside scratch
    and the raw-feature baselines), sharing axes so the panels compare at a glance."""
    y = np.asarray(y_true)
    if not by_model:
        raise ValueError("no model to plot")
    fig = new_figure(figsize=(4.2 * len(by_model), 4.8))
    axes = np.atleast_1d(fig.subplots(1, len(by_model), sharey=True))
    for ax, (name, proba) in zip(axes, by_model.items()):
        p = np.asarray(proba, dtype=np.float64)
        if p.ndim != 2 or p.shape[0] != y.shape[0] or p.shape[1] != len(classes):
            raise ValueError(f"{name}: need proba (N, {len(classes)}) for {y.shape[0]} patients, got {p.shape}")
        _roc_axes(ax, y, p, classes, name)
    if title:
        fig.suptitle(wrap_title(title, int(60 * len(by_model))), fontsize="medium")
    fig.tight_layout()
    return save_png(fig, path)


def plot_roc(y_true: Any, proba: Any, classes: Sequence[str], path: str | os.PathLike, title: str = "") -> Path:
    """ROC curve per class, with its AUC in the legend, and the chance diagonal.

    Parameters
    ----------
    y_true : array-like of int, shape (N,)
        True class indices ``0..C-1``.
    proba : array-like of float, shape (N, C)
        Predicted class probabilities.
    classes : sequence of str, length C
        Class names for the legend.
    path : str or os.PathLike
        PNG to write.
    title : str, optional
        Figure title.

    Returns
    -------
    pathlib.Path
        The PNG written.

    Notes
    -----
    A binary task (C == 2) draws only the positive class (index 1). A class without both
    positives and negatives in ``y_true`` has no ROC curve and is left out of the plot.
    """
    y = np.asarray(y_true)
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or y.ndim != 1 or p.shape[0] != y.shape[0]:
        raise ValueError(f"need y_true (N,) and proba (N, C), got shapes {y.shape} and {p.shape}")
    if len(classes) != p.shape[1]:
        raise ValueError(f"{len(classes)} class names for {p.shape[1]} probability columns")
    fig = new_figure(figsize=(5, 5))
    _roc_axes(fig.add_subplot(), y, p, classes, wrap_title(title or "ROC", 55))
    fig.tight_layout()
    return save_png(fig, path)


def plot_reliability(y_true: Any, proba: Any, path: str | os.PathLike, n_bins: int = 10, title: str = "") -> Path:
    """Reliability diagram (accuracy per confidence bin) above a histogram of confidences.

    Parameters
    ----------
    y_true : array-like of int, shape (N,)
        True class indices ``0..C-1``.
    proba : array-like of float, shape (N, C)
        Predicted class probabilities; rows sum to 1.
    path : str or os.PathLike
        PNG to write.
    n_bins : int, default 10
        Equal-width confidence bins, as in :func:`phenoclip.eval.metrics.reliability_bins`.
    title : str, optional
        Figure title; the ECE is appended.

    Returns
    -------
    pathlib.Path
        The PNG written.
    """
    bins = reliability_bins(y_true, proba, n_bins=n_bins)
    ece = ece_from_bins(bins)
    width = bins["upper"] - bins["lower"]
    full = bins["count"] > 0
    fig = new_figure(figsize=(5, 6))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(bins["lower"][full], bins["accuracy"][full], width=width[full], align="edge",
            edgecolor="black", linewidth=0.5, label="accuracy")
    top.plot(bins["confidence"][full], bins["accuracy"][full], "o", color="black", markersize=3,
             label="mean confidence")
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy")
    top.set_title(wrap_title(f"{title + ': ' if title else ''}ECE {ece:.3f} ({n_bins} bins)", 55), fontsize="medium")
    top.legend(loc="upper left", fontsize="small")
    bottom.bar(bins["lower"], bins["count"], width=width, align="edge", color="grey", edgecolor="black",
               linewidth=0.5)
    bottom.set(xlabel="confidence (top-label probability)", ylabel="count")
    fig.tight_layout()
    return save_png(fig, path)


def plot_label_fraction_curve(summary_rows: Sequence[dict[str, Any]], metric: str, path: str | os.PathLike,
                              title: str = "") -> Path:
    """Metric against the fraction of labelled training data, one line per model.

    Parameters
    ----------
    summary_rows : sequence of dict
        Rows as returned by :func:`phenoclip.eval.metrics.mean_sd` grouped by ``fraction`` and
        ``model``: each holds ``fraction`` (> 0), ``model``, ``<metric>_mean`` and ``<metric>_sd``.
    metric : str
        Metric name, e.g. ``"auroc"``.
    path : str or os.PathLike
        PNG to write.
    title : str, optional
        Figure title.

    Returns
    -------
    pathlib.Path
        The PNG written.

    Notes
    -----
    The x axis is logarithmic with a tick at each fraction; error bars are one sample standard
    deviation over repeats. Models keep the order in which they first appear.
    """
    need = ("fraction", "model", f"{metric}_mean", f"{metric}_sd")
    lines: dict[str, list[tuple[float, float, float]]] = {}
    for i, row in enumerate(summary_rows):
        missing = [k for k in need if k not in row]
        if missing:
            raise ValueError(f"summary row {i} lacks {missing}")
        fraction = float(row["fraction"])
        if not fraction > 0:
            raise ValueError(f"summary row {i}: fraction must be > 0 for a log axis, got {row['fraction']!r}")
        lines.setdefault(str(row["model"]), []).append(
            (fraction, float(row[f"{metric}_mean"]), float(row[f"{metric}_sd"])))
    if not lines:
        raise ValueError("no summary rows to plot")
    fig = new_figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    for model, points in lines.items():
        x, mean, sd = (np.array(v) for v in zip(*sorted(points)))
        ax.errorbar(x, mean, yerr=sd, marker="o", capsize=3, linewidth=1.5, label=model)
    fractions = sorted({x for points in lines.values() for x, _, _ in points})
    ax.set_xscale("log")
    ax.set_xticks(fractions)
    ax.set_xticklabels([f"{f:g}" for f in fractions])
    ax.minorticks_off()
    n_repeats = sorted({int(r["n_repeats"]) for r in summary_rows if "n_repeats" in r})
    repeats = f" over {n_repeats[0]} repeats" if len(n_repeats) == 1 else " over repeats"
    ax.set(xlabel=f"fraction of labelled training patients (log scale); bars: ± 1 sd{repeats}", ylabel=metric)
    ax.set_title(wrap_title(title or f"{metric} vs label fraction", 70), fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return save_png(fig, path)


def plot_regression(y_true: Any, y_pred: Any, path: str | os.PathLike, title: str = "") -> Path:
    """Predicted against true values with the identity line; R2 in the title.

    Parameters
    ----------
    y_true, y_pred : array-like of float, shape (N,) or (N, 1)
        Targets and predictions.
    path : str or os.PathLike
        PNG to write.
    title : str, optional
        Figure title; R2 and MAE are appended.

    Returns
    -------
    pathlib.Path
        The PNG written.
    """
    scores = regression_metrics(y_true, y_pred)
    t = np.asarray(y_true, dtype=np.float64).reshape(-1)
    q = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    lo, hi = float(min(t.min(), q.min())), float(max(t.max(), q.max()))
    pad = 0.05 * (hi - lo) if hi > lo else 1.0
    fig = new_figure(figsize=(5, 5))
    ax = fig.add_subplot()
    ax.scatter(t, q, s=12, alpha=0.7, edgecolors="none")
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], linestyle="--", color="grey", linewidth=1, label="y = x")
    ax.set(xlim=(lo - pad, hi + pad), ylim=(lo - pad, hi + pad), xlabel="true", ylabel="predicted",
           title=f"{title + ' - ' if title else ''}R2 {scores['r2']:.3f}, MAE {scores['mae']:.3g}")
    ax.set_aspect("equal")
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    return save_png(fig, path)
