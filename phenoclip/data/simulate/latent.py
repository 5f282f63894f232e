"""The hidden state of each patient: sex, disease, severity and which modalities were collected."""

from __future__ import annotations

import numpy as np

MODALITIES = ("variants", "expression", "mri", "signals")


def draw_sex(n: int, rng: np.random.Generator) -> np.ndarray:
    """``True`` for male; about half of the cohort."""
    return rng.random(n) < 0.5


def liabilities(dosage: np.ndarray, alt_freqs: np.ndarray, effects: np.ndarray,
                disease_of_snp: np.ndarray) -> np.ndarray:
    """Genetic liability per patient and disease, shape ``(N, 2)`` (neuro, cardio).

    ``dosage`` is ``(N, K)`` ALT counts of the causal SNPs; centring on ``2p`` keeps the average
    liability at zero so the intercepts alone set the disease shares.
    """
    centred = (dosage - 2.0 * alt_freqs[None, :]) * effects[None, :]
    return np.stack([centred[:, disease_of_snp == d].sum(1) for d in (1, 2)], axis=1)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def solve_intercepts(liab: np.ndarray, shares: tuple[float, float, float], iters: int = 200) -> np.ndarray:
    """Intercepts ``[0, c_neuro, c_cardio]`` that make the mean disease probabilities hit ``shares``.

    A fixed-point iteration on this cohort's own liabilities: strong genetic effects skew the
    softmax, so fixed intercepts would drift the shares away from 40/30/30.
    """
    target = np.asarray(shares, float) / np.sum(shares)
    c = np.log(target / target[0])
    for _ in range(iters):
        p = _softmax(np.column_stack([np.zeros(len(liab)), liab]) + c).mean(0)
        c = c + np.log(target / p)
        c -= c[0]
    return c


def draw_disease(liab: np.ndarray, shares: tuple[float, float, float],
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Disease code per patient (0 control, 1 neuro, 2 cardio), its probabilities and the intercepts.

    The logits are ``[0, c_n + liab_neuro, c_c + liab_cardio]``: one unit of liability is one unit
    of log-odds against being a control.
    """
    c = solve_intercepts(liab, shares)
    probs = _softmax(np.column_stack([np.zeros(len(liab)), liab]) + c)
    u = rng.random(len(liab))[:, None]
    disease = (u > np.cumsum(probs, 1)).sum(1)
    return np.minimum(disease, 2), probs, c


def draw_severity(disease: np.ndarray, liab: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Continuous severity: about 1 (0.2-3) in the affected, rising with their own liability; 0 for
    85 % of controls and a subclinical 0.05-0.3 for the rest."""
    n = len(disease)
    own = np.where(disease == 1, liab[:, 0], np.where(disease == 2, liab[:, 1], 0.0))
    affected = np.clip(1.0 + 0.35 * own + rng.normal(0, 0.4, n), 0.2, 3.0)
    subclinical = np.where(rng.random(n) < 0.15, rng.uniform(0.05, 0.3, n), 0.0)
    return np.where(disease > 0, affected, subclinical)


def draw_presence(n: int, missing_rate: float, rng: np.random.Generator) -> np.ndarray:
    """Which of :data:`MODALITIES` each patient has, ``(N, 4)`` bool; everyone keeps at least two."""
    present = rng.random((n, len(MODALITIES))) >= missing_rate
    for i in np.flatnonzero(present.sum(1) < 2):
        absent = np.flatnonzero(~present[i])
        # give back randomly chosen modalities until two are present
        back = rng.choice(absent, size=2 - int(present[i].sum()), replace=False)
        present[i, back] = True
    return present
