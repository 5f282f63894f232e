"""Linear probes: how much a frozen embedding tells about a label (scikit-learn).

A logistic regression on standardised embeddings, fitted on training patients and scored on
held-out ones: the standard way to compare a pretrained encoder with the same encoder at random
initialisation (paper 002's linear evaluation).
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 seed: int = 0, c: float = 1.0) -> dict[str, float]:
    """Accuracy, macro F1 and (one-vs-rest macro) AUROC of a logistic-regression probe."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000, random_state=seed))
    probe.fit(train_x, train_y)
    pred = probe.predict(test_x)
    proba = probe.predict_proba(test_x)
    classes = probe.classes_
    if len(classes) == 2:
        auroc = roc_auc_score(test_y, proba[:, 1])
    else:
        auroc = roc_auc_score(test_y, proba, multi_class="ovr", average="macro", labels=classes)
    return {"accuracy": float(accuracy_score(test_y, pred)), "f1_macro": float(f1_score(test_y, pred, average="macro")),
            "auroc": float(auroc)}
