"""Labels for supervised fine-tuning: reading a column, the task it implies, and the patient splits.

* ``labels.tsv[:COLUMN]``: a table with a ``sample`` column (see :func:`phenoclip.io.phenopackets.read_labels`);
  COLUMN defaults to the first label column.
* The task: text columns are classification (binary with two classes); numeric columns are
  classification when every value is an integer and there are at most :data:`MAX_INTEGER_CLASSES`
  of them, else regression. ``--task`` overrides.
* Splits are by patient: one fixed test split (stratified by class), then, per repeat, a
  stratified permutation of the remaining *pool*; label fraction ``f`` trains on the first
  ``round(f x n_class)`` patients of every class, so the subsets of one repeat are nested and
  a curve over fractions is not noisier than its points.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from phenoclip.errors import InconsistentInputError, MalformedInputError, UsageError
from phenoclip.io.phenopackets import read_labels
from phenoclip.progress import warn

TASKS = ("auto", "binary", "multiclass", "regression")
MAX_INTEGER_CLASSES = 10
#: class names read as the negative class of a binary label (so the other one is 'positive')
NEGATIVE_NAMES = {"0", "control", "controls", "no", "false", "negative", "unaffected", "healthy", "normal", "ctrl"}


@dataclass
class TaskLabels:
    """One label column, restricted to patients that have a value.

    ``y`` holds class indices into ``classes`` (classification) or float values (regression).
    For binary tasks ``classes[1]`` is the positive class.
    """

    source: str
    column: str
    task: str
    samples: list[str]
    y: np.ndarray
    classes: list[str] | None

    @property
    def is_classification(self) -> bool:
        return self.task != "regression"


def split_label_argument(text: str) -> tuple[str, str | None]:
    """``labels.tsv:disease`` -> (``labels.tsv``, ``disease``); a path that exists as given wins."""
    if os.path.exists(text) or ":" not in text:
        return text, None
    path, column = text.rsplit(":", 1)
    return path, (column or None)


def _int_like(values: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(values)) and np.all(values == np.round(values)))


def _class_order(names: list[str]) -> list[str]:
    """Sorted classes; for two classes, a recognisably negative name first (positive = index 1)."""
    try:
        names = sorted(names, key=float)
    except ValueError:
        names = sorted(names)
    if len(names) == 2 and names[1].lower() in NEGATIVE_NAMES and names[0].lower() not in NEGATIVE_NAMES:
        names = names[::-1]
    return names


def load_task_labels(argument: str, task: str = "auto", positive: str | None = None) -> TaskLabels:
    """Read ``labels.tsv[:COLUMN]`` and settle the task (see the module docstring)."""
    if task not in TASKS:
        raise UsageError(f"unknown --task '{task}': use {', '.join(TASKS)}")
    path, column = split_label_argument(argument)
    labels = read_labels(path)
    if column is None:
        column = next(iter(labels.columns))
    elif column not in labels.columns:
        raise UsageError(f"{path} has no label column '{column}' (columns: {', '.join(labels.columns)})")
    raw = labels.columns[column]
    numeric = raw.dtype.kind == "f"
    keep = ~np.isnan(raw) if numeric else np.array([v != "" for v in raw])
    samples = [s for s, k in zip(labels.samples, keep) if k]
    values = raw[keep]
    if not samples:
        raise MalformedInputError(f"label column '{column}' has no values", path)
    if task == "auto":
        if numeric and not (_int_like(values) and len(np.unique(values)) <= MAX_INTEGER_CLASSES):
            task = "regression"
        else:
            task = "binary" if len(np.unique(values)) == 2 else "multiclass"
    if task == "regression":
        if not numeric:
            raise UsageError(f"--task regression but column '{column}' of {path} is not numeric")
        return TaskLabels(str(path), column, task, samples, values.astype(np.float64), None)
    names = [str(int(v)) if numeric else str(v) for v in values]
    classes = _class_order(list(set(names)))
    if len(classes) < 2:
        raise MalformedInputError(f"label column '{column}' has one class only ('{classes[0]}'); "
                                  "a classifier needs at least two", path)
    if task == "binary" and len(classes) != 2:
        raise UsageError(f"--task binary but column '{column}' has {len(classes)} classes ({', '.join(classes[:5])})")
    if task == "binary" and positive is not None:
        if positive not in classes:
            raise UsageError(f"--positive '{positive}' is not a class of '{column}' ({', '.join(classes)})")
        classes = [c for c in classes if c != positive] + [positive]
    index = {c: i for i, c in enumerate(classes)}
    return TaskLabels(str(path), column, task, samples, np.array([index[n] for n in names], dtype=np.int64), classes)


def restrict_to(labels: TaskLabels, available: Sequence[str], stores_hint: str) -> TaskLabels:
    """Keep the labelled patients the stores hold; none at all is an error (exit 5)."""
    have = set(available)
    keep = np.array([s in have for s in labels.samples])
    if not keep.any():
        raise InconsistentInputError(f"none of the {len(labels.samples)} labelled patients is in the stores "
                                     f"({stores_hint})", labels.source, "check that sample IDs match")
    if not keep.all():
        missing = [s for s, k in zip(labels.samples, keep) if not k]
        warn(f"{labels.source}: {len(missing)} labelled patient(s) are in no store and are left out "
             f"(e.g. {', '.join(missing[:3])})")
    return TaskLabels(labels.source, labels.column, labels.task, [s for s, k in zip(labels.samples, keep) if k],
                      labels.y[keep], labels.classes)


def _strata(labels: TaskLabels, n_bins: int = 4) -> np.ndarray:
    """Class index, or for regression the quartile of the value, per patient."""
    if labels.is_classification:
        return labels.y
    edges = np.quantile(labels.y, np.linspace(0, 1, n_bins + 1)[1:-1])
    return np.searchsorted(edges, labels.y, side="right")


def held_out_split(labels: TaskLabels, fraction: float, seed: int, prefer: Sequence[str] = ()) -> np.ndarray:
    """bool mask over ``labels.samples``: the fixed, stratified test split.

    Within each stratum, patients in ``prefer`` (the pretraining run's validation patients, never
    trained on, not even without labels) are taken first, in random order, then the others.
    """
    if not 0 < fraction < 1:
        raise UsageError(f"--test-fraction must be between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    strata = _strata(labels)
    preferred = set(prefer)
    test = np.zeros(len(labels.samples), dtype=bool)
    for value in np.unique(strata):
        members = np.flatnonzero(strata == value)
        members = rng.permutation(members)
        first = [i for i in members if labels.samples[i] in preferred]
        rest = [i for i in members if labels.samples[i] not in preferred]
        n = int(np.floor(len(members) * fraction + 0.5))
        test[(first + rest)[:n]] = True
    return test


def fraction_orders(labels: TaskLabels, pool: np.ndarray, seed: int) -> dict:
    """Per stratum, a random order of the pool's patients (one repeat's nested subsets)."""
    rng = np.random.default_rng(seed)
    strata = _strata(labels)
    return {v: rng.permutation(np.flatnonzero(pool & (strata == v))) for v in np.unique(strata[pool])}


def fraction_subset(labels: TaskLabels, orders: dict, fraction: float) -> np.ndarray:
    """Indices of the training subset for one label fraction (stratified, nested within a repeat).

    A classification subset must hold at least one patient of every class: a fraction too small
    for that is a usage error naming the smallest fraction that works.
    """
    if not 0 < fraction <= 1:
        raise UsageError(f"label fractions must be in (0, 1], got {fraction}")
    chosen = []
    for value, order in orders.items():
        n = int(np.floor(len(order) * fraction + 0.5))
        if n == 0 and labels.is_classification:
            name = labels.classes[int(value)]
            need = np.ceil(500.0 / len(order)) / 1000  # rounds to one patient of this class
            raise UsageError(f"label fraction {fraction} leaves no training example of class '{name}' "
                             f"({len(order)} in the training pool); use fractions of at least {need:g}")
        chosen.append(order[:n])
    out = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
    if len(out) < 2:
        raise UsageError(f"label fraction {fraction} leaves {len(out)} training patient(s); use a larger fraction")
    return out


def parse_fractions(text: str) -> list[float]:
    """``"0.02,0.1,1"`` -> sorted unique floats in (0, 1]."""
    try:
        values = sorted({float(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise UsageError(f"--label-fractions must be comma-separated numbers, got '{text}'") from None
    if not values or values[0] <= 0 or values[-1] > 1:
        raise UsageError(f"--label-fractions must lie in (0, 1], got '{text}'")
    return values

