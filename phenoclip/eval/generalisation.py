"""How much of each modality's cross-modal agreement survives on patients pretraining did not fit.

A contrastive encoder with many inputs and few patients memorises them: on the sample cohort the
genotype encoder matches its own training patients' expression perfectly (MRR 1.00) and new
patients' at 0.26-0.30. A probe fitted on those memorised embeddings finds the label in them
(the partner modality's signal was pulled into them) and its out-of-fold estimate, measured on
the same training patients, is just as inflated: the stacked probe
(:mod:`phenoclip.eval.stacking`) then trusts a block that carries little on new patients
(gene probe 0.999 out-of-fold against 0.72 held-out on the 2,000-patient cohort).

This module measures it without labels. For every modality pair, the ratio of MRR above chance on
unseen patients to MRR above chance on equally many training patients (the same gallery size,
so chance is the same); a pair's ratio is modelled as the product of its two modalities' shares,
``log r_ab = log g_a + log g_b``, solved by least squares over all pairs (with one pair the two
shares are equal), and scaled so that the best-generalising modality has share 1. The stack's
weight for a block is then bounded by its share (:func:`phenoclip.eval.stacking.fit_stacked`).
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import torch

from phenoclip.eval.retrieval import chance_mrr, paired_retrieval

#: fewer unseen patients than this give no bounds (an MRR over a handful of patients is noise)
MIN_UNSEEN = 10
#: training-patient subsets (each as large as the unseen set) averaged for the training MRR
REPEATS = 3
#: a pair ratio is floored here before its logarithm: below it nothing is left, and differences
#: between near-chance MRRs are noise that the logarithm would blow up (planted cohorts: 0.001 vs 0.025
#: turned one generalising modality's share from 1 into 0.04)
FLOOR = 0.05

Embedded = tuple[np.ndarray, np.ndarray]  # (N, D) embeddings, (N,) present


def _mrr(a: Embedded, b: Embedded, rows: np.ndarray) -> tuple[float, int]:
    both = rows[a[1][rows] & b[1][rows]]
    if len(both) < 2:
        return float("nan"), len(both)
    r = paired_retrieval(torch.from_numpy(a[0][both]), torch.from_numpy(b[0][both]))
    return float(r["MRR"]), len(both)


def pair_ratios(train: dict[str, Embedded], unseen: dict[str, Embedded], seed: int = 0) -> dict[str, dict]:
    """Per pair ``"a-b"``: unseen MRR, training MRR (mean over :data:`REPEATS` subsets of the
    unseen set's size) and their ratio above chance. ``train`` and ``unseen`` map a modality to its
    embeddings of the training and of the unseen patients (rows in the same order for every modality)."""
    mods = list(unseen)
    n_train, n_unseen = len(train[mods[0]][0]), len(unseen[mods[0]][0])
    rng = np.random.default_rng(seed)
    subsets = [np.sort(rng.choice(n_train, size=min(n_unseen, n_train), replace=False)) for _ in range(REPEATS)]
    out = {}
    for a, b in combinations(mods, 2):
        val, n = _mrr(unseen[a], unseen[b], np.arange(n_unseen))
        if n < MIN_UNSEEN:
            continue
        fit = [_mrr(train[a], train[b], rows) for rows in subsets]
        if not any(k >= 2 for _, k in fit):  # no training patient has both: nothing to hold the pair against
            continue
        fit_mrr = float(np.nanmean([m for m, _ in fit]))
        # chance at the unseen gallery size; a training subset with fewer pairs has higher chance, so ratio is conservative
        chance = chance_mrr(n)
        ratio = (val - chance) / max(fit_mrr - chance, 1e-9)
        out[f"{a}-{b}"] = {"unseen_MRR": val, "train_MRR": fit_mrr, "n_unseen": n,
                           "ratio": float(np.clip(ratio, FLOOR, 1.0))}
    return out


def modality_shares(ratios: dict[str, dict], modalities: list[str]) -> dict[str, float]:
    """Per modality the share in (0, 1] solving ``log r_ab = log g_a + log g_b`` by least squares,
    scaled so the largest is 1; modalities in no measured pair get 1 (nothing known against them)."""
    pairs = [p for p in ratios if all(m in modalities for m in p.split("-"))]
    if not pairs:
        return {m: 1.0 for m in modalities}
    a = np.zeros((len(pairs), len(modalities)))
    for i, p in enumerate(pairs):
        for m in p.split("-"):
            a[i, modalities.index(m)] = 1.0
    logs = np.log([ratios[p]["ratio"] for p in pairs])
    solution = np.linalg.lstsq(a, logs, rcond=None)[0]
    measured = a.any(axis=0)
    solution = solution - solution[measured].max()
    return {m: float(np.exp(solution[i])) if measured[i] else 1.0 for i, m in enumerate(modalities)}


def block_shares(train: dict[str, Embedded], unseen: dict[str, Embedded], seed: int = 0) -> dict:
    """``{"pairs": pair_ratios(...), "shares": {modality: share}, "n_unseen": N}`` (shares all 1
    when fewer than :data:`MIN_UNSEEN` unseen patients have a pair)."""
    mods = list(unseen)
    ratios = pair_ratios(train, unseen, seed)
    return {"pairs": ratios, "shares": modality_shares(ratios, mods), "n_unseen": len(unseen[mods[0]][0])}
