"""Evaluation metrics for fine-tuned heads: discrimination, calibration, regression, repeats.

Data contract for the classification functions: ``y_true`` is an integer array (N,) of class
indices ``0..C-1`` and ``proba`` a float array (N, C) whose rows are probabilities (they sum to 1),
column ``c`` belonging to class ``c``. The predicted class is the row's argmax.

Calibration is top-label (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017):
the confidence of a prediction is its largest probability, binned into equal-width bins over
[0, 1]; :func:`expected_calibration_error` is computed from :func:`reliability_bins`, so the number
and the reliability diagram cannot disagree.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, r2_score, roc_auc_score

# Rows of a softmax in float32 sum to 1 within ~1e-6; the looser bound only catches inputs that
# are not probabilities at all (logits, a single column of P(y=1)).
_ROW_SUM_ATOL = 1e-3


def _check_classification(y_true: Any, proba: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert the (y_true, proba) pair; see the module docstring for the contract."""
    y = np.asarray(y_true)
    p = np.asarray(proba, dtype=np.float64)
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-D (N,), got shape {y.shape}")
    if p.ndim != 2:
        raise ValueError(f"proba must be 2-D (N, C), got shape {p.shape}")
    if p.shape[0] != y.shape[0]:
        raise ValueError(f"y_true has {y.shape[0]} rows but proba has {p.shape[0]}")
    if y.shape[0] == 0:
        raise ValueError("no samples: y_true and proba are empty")
    if p.shape[1] < 2:
        raise ValueError(f"proba needs at least 2 columns (one per class), got {p.shape[1]}")
    if y.dtype.kind not in "iu":
        if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise ValueError(f"y_true must hold integer class indices, got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"y_true holds class indices outside 0..{p.shape[1] - 1}: "
                         f"min {int(y.min())}, max {int(y.max())}")
    if not np.all(np.isfinite(p)):
        raise ValueError("proba holds NaN or infinite values")
    sums = p.sum(axis=1)
    if not np.allclose(sums, 1.0, atol=_ROW_SUM_ATOL):
        worst = int(np.argmax(np.abs(sums - 1.0)))
        raise ValueError(f"proba rows must sum to 1 (row {worst} sums to {sums[worst]:.6g})")
    return y.astype(np.int64), p


def reliability_bins(y_true: Any, proba: Any, n_bins: int = 10) -> dict[str, np.ndarray]:
    """Top-label accuracy and mean confidence in equal-width confidence bins.

    Parameters
    ----------
    y_true : array-like of int, shape (N,)
        True class indices ``0..C-1``.
    proba : array-like of float, shape (N, C)
        Predicted class probabilities; rows sum to 1.
    n_bins : int, default 10
        Number of equal-width bins over [0, 1].

    Returns
    -------
    dict of str to numpy.ndarray, each of shape (n_bins,)
        ``lower`` and ``upper`` bin edges, ``count`` (int) of predictions per bin, and
        ``accuracy`` and ``confidence`` (mean top-label probability) per bin, NaN for empty bins.

    Notes
    -----
    Bin ``b`` holds confidences in ``[b / n_bins, (b + 1) / n_bins)``; the last bin is closed, so a
    confidence of exactly 1.0 lands in it (and 0.0 in the first), as in :func:`numpy.histogram`.
    """
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    n_bins = int(n_bins)
    y, p = _check_classification(y_true, proba)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    # floor(conf * n_bins) is exact at the edges k / n_bins that matter in practice (0.5, 0.3, 1.0);
    # clipping sends 1.0 (index n_bins) to the last bin.
    idx = np.clip(np.floor(conf * n_bins).astype(np.int64), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(idx, weights=correct, minlength=n_bins) / count
        confidence = np.bincount(idx, weights=conf, minlength=n_bins) / count
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return {"lower": edges[:-1], "upper": edges[1:], "count": count.astype(np.int64),
            "accuracy": accuracy, "confidence": confidence}


def ece_from_bins(bins: dict[str, np.ndarray]) -> float:
    """Expected calibration error from the output of :func:`reliability_bins`.

    Parameters
    ----------
    bins : dict of str to numpy.ndarray
        As returned by :func:`reliability_bins`.

    Returns
    -------
    float
        ``sum_b (n_b / N) * |accuracy_b - confidence_b|`` over the non-empty bins.
    """
    count = np.asarray(bins["count"])
    full = count > 0
    gaps = np.abs(np.asarray(bins["accuracy"])[full] - np.asarray(bins["confidence"])[full])
    return float(np.sum(count[full] / count.sum() * gaps))


def expected_calibration_error(y_true: Any, proba: Any, n_bins: int = 10) -> float:
    """Top-label expected calibration error (Guo et al. 2017).

    Parameters
    ----------
    y_true : array-like of int, shape (N,)
        True class indices ``0..C-1``.
    proba : array-like of float, shape (N, C)
        Predicted class probabilities; rows sum to 1.
    n_bins : int, default 10
        Number of equal-width confidence bins over [0, 1] (see :func:`reliability_bins`).

    Returns
    -------
    float
        ECE in [0, 1]; 0 means that, in every bin, accuracy equals mean confidence.

    Raises
    ------
    ValueError
        If the shapes or values break the contract above.
    """
    return ece_from_bins(reliability_bins(y_true, proba, n_bins=n_bins))


def _binary_auroc(positive: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of a score for a boolean target; NaN when only one of the two outcomes occurs."""
    if positive.all() or not positive.any():
        return math.nan
    return float(roc_auc_score(positive, score))


def classification_metrics(y_true: Any, proba: Any, classes: Sequence[str], n_bins: int = 10
                           ) -> dict[str, float]:
    """Accuracy, F1, AUROC and ECE of class probabilities.

    Parameters
    ----------
    y_true : array-like of int, shape (N,)
        True class indices ``0..C-1``.
    proba : array-like of float, shape (N, C)
        Predicted class probabilities; rows sum to 1; the prediction is the argmax.
    classes : sequence of str, length C
        Class names, used in the per-class keys of a multiclass task.
    n_bins : int, default 10
        Confidence bins of the ECE.

    Returns
    -------
    dict of str to float
        ``accuracy``, ``f1``, ``auroc``, ``ece`` and ``n`` (the number of samples, an int).
        Binary (C == 2): ``f1`` is the F1 of the positive class (index 1) and ``auroc`` that of
        ``proba[:, 1]``. Multiclass (C > 2): ``auroc`` and ``f1`` are macro averages, and
        ``auroc/<class>`` and ``f1/<class>`` are added for each class (one-vs-rest).

    Notes
    -----
    A small test split can miss a class. Such a class gets ``auroc/<class> = NaN`` and the macro
    AUROC is the mean over the classes present in ``y_true``; if ``y_true`` holds a single class,
    every AUROC is NaN. Likewise ``f1/<class>`` is NaN for a class neither present in ``y_true``
    nor ever predicted, and the macro F1 averages the other classes (scikit-learn's default label
    set); a class that is predicted but absent still counts, with F1 0. Undefined precision or
    recall count as 0 (``zero_division=0``).
    """
    y, p = _check_classification(y_true, proba)
    n_classes = p.shape[1]
    classes = [str(c) for c in classes]
    if len(classes) != n_classes:
        raise ValueError(f"{len(classes)} class names for {n_classes} probability columns")
    pred = p.argmax(axis=1)
    out: dict[str, float] = {"accuracy": float(accuracy_score(y, pred))}
    labels = list(range(n_classes))
    per_f1 = f1_score(y, pred, labels=labels, average=None, zero_division=0)
    if n_classes == 2:
        out["f1"] = float(per_f1[1])
        out["auroc"] = _binary_auroc(y == 1, p[:, 1])
    else:
        seen = np.zeros(n_classes, dtype=bool)
        seen[np.unique(np.concatenate([y, pred]))] = True
        f1s = np.where(seen, per_f1, np.nan)
        aurocs = np.array([_binary_auroc(y == c, p[:, c]) for c in labels])
        out["f1"] = float(np.mean(f1s[seen]))  # seen is never empty: N > 0
        out["auroc"] = float(np.mean(aurocs[~np.isnan(aurocs)])) if not np.all(np.isnan(aurocs)) else math.nan
        for name, a, f in zip(classes, aurocs, f1s):
            out[f"auroc/{name}"] = float(a)
            out[f"f1/{name}"] = float(f)
    out["ece"] = expected_calibration_error(y, p, n_bins=n_bins)
    out["n"] = int(y.shape[0])
    return out


def regression_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    """R2 and mean absolute error of a regression head.

    Parameters
    ----------
    y_true, y_pred : array-like of float, shape (N,) or (N, 1)
        Targets and predictions, in the same units.

    Returns
    -------
    dict of str to float
        ``r2`` (:func:`sklearn.metrics.r2_score`; NaN with fewer than 2 samples), ``mae`` and
        ``n`` (an int).
    """
    t = np.asarray(y_true, dtype=np.float64)
    q = np.asarray(y_pred, dtype=np.float64)
    t = t[:, 0] if t.ndim == 2 and t.shape[1] == 1 else t
    q = q[:, 0] if q.ndim == 2 and q.shape[1] == 1 else q
    if t.ndim != 1 or q.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-D (N,), got shapes {t.shape} and {q.shape}")
    if t.shape != q.shape:
        raise ValueError(f"y_true has {t.shape[0]} values but y_pred has {q.shape[0]}")
    if t.shape[0] == 0:
        raise ValueError("no samples: y_true and y_pred are empty")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(q))):
        raise ValueError("y_true or y_pred holds NaN or infinite values")
    # r2_score warns and returns NaN below 2 samples; say it without the warning.
    r2 = float(r2_score(t, q)) if t.shape[0] >= 2 else math.nan
    return {"r2": r2, "mae": float(mean_absolute_error(t, q)), "n": int(t.shape[0])}


def _as_float(value: Any) -> float:
    """A metric value as a float; None (a metric a run did not produce) becomes NaN."""
    return math.nan if value is None else float(value)


def mean_sd(rows: Sequence[dict[str, Any]], by: Sequence[str], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation of metrics over repeated runs.

    Parameters
    ----------
    rows : sequence of dict
        One dict per run, holding the ``by`` keys and the metrics.
    by : sequence of str
        Keys that identify a setting (e.g. ``["fraction", "model"]``); rows with equal values are
        repeats of one setting.
    metrics : sequence of str
        Metric keys to summarise. A metric missing from a row, or None, counts as NaN.

    Returns
    -------
    list of dict
        One dict per setting, in the order settings are first seen: the ``by`` keys, then
        ``<metric>_mean`` and ``<metric>_sd`` for each metric, then ``n_repeats`` (rows in the
        setting). NaN values are ignored; the sd uses ``ddof=1`` and is 0.0 when a single value
        remains; both are NaN when every value is NaN.

    Raises
    ------
    KeyError
        If a row lacks one of the ``by`` keys.
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for i, row in enumerate(rows):
        missing = [k for k in by if k not in row]
        if missing:
            raise KeyError(f"row {i} lacks the grouping key(s) {missing}")
        groups.setdefault(tuple(row[k] for k in by), []).append(row)
    out = []
    for key, members in groups.items():
        summary: dict[str, Any] = dict(zip(by, key))
        for m in metrics:
            values = np.array([_as_float(r.get(m)) for r in members], dtype=np.float64)
            values = values[~np.isnan(values)]
            # computed by hand rather than nanmean/nanstd so that 0 or 1 values give the documented
            # NaN / 0.0 without RuntimeWarnings
            if values.size == 0:
                mean, sd = math.nan, math.nan
            elif values.size == 1:
                mean, sd = float(values[0]), 0.0
            else:
                mean, sd = float(values.mean()), float(values.std(ddof=1))
            summary[f"{m}_mean"] = mean
            summary[f"{m}_sd"] = sd
        summary["n_repeats"] = len(members)
        out.append(summary)
    return out
