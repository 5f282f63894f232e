"""The gene probe's honest choice: the read-out, the eQTL-screened SNPs, or both.

A linear probe of genotypes reads the genotype read-out (:mod:`phenoclip.models.readout`), a
linear map of the dosages to the other modalities' consensus. Its labelled patients are usually
the read-out's own fit patients, on whom it is an in-sample fit pulled towards that consensus, so
on them it looks far stronger than on a new patient; the SNPs an eQTL screen keeps
(:mod:`phenoclip.eval.eqtl_screen`) are the classic reference, and on a small cohort they can carry
more of a label than the read-out does (sample cohort, six seeds: AUROC 0.723 against 0.615 with
every label; docs/experiments.md, 2026-12-08).

:func:`fit_gene_probe` fits three candidates on the labelled patients, each with its penalty by
inner CV (:mod:`phenoclip.eval.linear_models`):

* ``readout``: a probe on the read-out's columns;
* ``eqtl``: a probe on the eQTL-screened SNPs' columns;
* ``average``: the mean of the two probes' logits (a linear model of both blocks);

and keeps the one with the best score over :data:`~phenoclip.eval.linear_models.FOLDS`-fold
cross-validation of the labelled patients (macro AUROC, or R^2 for a regression; a tie keeps the
read-out). In each fold the read-out probe is fitted on the in-sample read-outs, as the final
probe is, but the held patients are scored on their *cross-fitted* read-out (a read-out fitted
without them): how a new patient looks to it. Every candidate is one linear layer over the
block, so the choice is saved as the fine-tuned model's head.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import r2_score

from phenoclip.eval.linear_models import _folds, as_logits, fit_logistic, fit_ridge
from phenoclip.eval.metrics import classification_metrics

CANDIDATES = ("readout", "eqtl", "average")


@dataclass
class GeneProbe:
    """A chosen gene probe: ``z @ weight.T + bias`` over the standardised block (read-out, then SNPs)."""

    weight: np.ndarray  # (K, E + S); K = n_classes, or 1 for a regression (standardised target)
    bias: np.ndarray    # (K,)
    chosen: dict

    def predict(self, z: np.ndarray, classification: bool = True) -> np.ndarray:
        """Class probabilities ``(N, K)`` (or values ``(N,)`` of the standardised target)."""
        out = np.asarray(z, dtype=np.float64) @ self.weight.T + self.bias
        return _softmax(out) if classification else out[:, 0]


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def _linear(z: np.ndarray, y: np.ndarray, n_classes: int | None, seed: int, c: float | None):
    """``(weight, bias)`` of one block's probe (classification: ``n_classes`` logits)."""
    if n_classes is None:
        return fit_ridge(z, y, seed).coefficients()
    return as_logits(fit_logistic(z, y, n_classes, seed, c=c), n_classes)


def _candidate(name: str, parts: dict, width: int, total: int) -> tuple[np.ndarray, np.ndarray]:
    """Weight ``(K, total)`` and bias of a candidate from its blocks' fits (zero weight elsewhere)."""
    k = next(iter(parts.values()))[0].shape[0]
    weight, bias = np.zeros((k, total)), np.zeros(k)
    share = 0.5 if name == "average" else 1.0
    if name in ("readout", "average"):
        weight[:, :width] += share * parts["readout"][0]
        bias += share * parts["readout"][1]
    if name in ("eqtl", "average"):
        weight[:, width:] += share * parts["eqtl"][0]
        bias += share * parts["eqtl"][1]
    return weight, bias


def _score(y: np.ndarray, out: np.ndarray, n_classes: int | None) -> float:
    if n_classes is None:
        return float(r2_score(y, out[:, 0]))
    auroc = classification_metrics(y, _softmax(out), [str(i) for i in range(n_classes)])["auroc"]
    return float(auroc) if np.isfinite(auroc) else -np.inf


def fit_gene_probe(z: np.ndarray, z_honest: np.ndarray, y: np.ndarray, width: int, n_classes: int | None,
                   seed: int = 0, c: float | None = None) -> GeneProbe:
    """Choose and fit the gene probe (see the module docstring).

    ``z`` ``(N, width + S)``: the labelled patients' standardised block, the read-out's ``width``
    columns then the ``S`` SNPs'; ``z_honest``: the same with each patient's cross-fitted read-out
    where it has one (standardised alike). ``y``: class indices (``n_classes``) or, with
    ``n_classes`` None, a standardised regression target. ``c`` fixes the logistic regressions'
    ``C`` (None: inner CV). With too few patients for the folds, or no SNP column, the read-out.
    """
    z, z_honest = np.asarray(z, dtype=np.float64), np.asarray(z_honest, dtype=np.float64)
    total = z.shape[1]
    blocks = {"readout": slice(0, width), "eqtl": slice(width, total)}
    classification = n_classes is not None
    folds = _folds(np.asarray(y), classification, seed) if total > width else None
    scores = {}
    if folds is not None:
        held_out = {name: np.zeros((len(y), n_classes or 1)) for name in CANDIDATES}
        for train, held in folds.split(z, y):
            if classification and len(np.unique(y[train])) < 2:
                held_out = None
                break
            parts = {b: _linear(z[train, s], y[train], n_classes, seed, c) for b, s in blocks.items()}
            for name in CANDIDATES:
                weight, bias = _candidate(name, parts, width, total)
                held_out[name][held] = z_honest[held] @ weight.T + bias
        if held_out is not None:
            scores = {name: _score(y, out, n_classes) for name, out in held_out.items()}
    # ties keep the read-out, then the average (the order of CANDIDATES)
    choice = max(CANDIDATES, key=lambda n: (scores.get(n, -np.inf), -CANDIDATES.index(n))) if scores else "readout"
    needed = {"readout": ["readout"], "eqtl": ["eqtl"], "average": ["readout", "eqtl"]}[choice]
    parts = {b: _linear(z[:, blocks[b]], y, n_classes, seed, c) for b in needed}
    weight, bias = _candidate(choice, parts, width, total)
    return GeneProbe(weight, bias, {"gene_probe": choice, "gene_probe_scores": {n: float(s) for n, s in scores.items()},
                                    "snps": int(total - width)})
