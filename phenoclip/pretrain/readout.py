"""Fitting the genotype read-out at the end of pretraining (see :mod:`phenoclip.models.readout`).

The teacher of each training patient is its *consensus*: the mean of its other modalities'
L2-normalised embeddings from the trained model. A ridge regression (scikit-learn's ``RidgeCV``,
penalty by efficient leave-one-out, i.e. generalised cross-validation) maps the standardised
dosages to it. Only training patients are used, so the validation patients stay unseen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from sklearn.linear_model import RidgeCV

#: ridge penalties tried; on 2,000 standardised SNPs GCV chose 2,000-4,600 (sample, coalescent
#: and 2,000-patient cohorts), inside the grid
ALPHAS = tuple(float(a) for a in np.logspace(-1, 7, 25))
#: at most this many dosages (patients x variants) enter the fit, in float64 about 0.8 GB; beyond
#: it a seeded subset of the training patients is used (said in the log)
MAX_CELLS = 100_000_000
#: fewer patients with genotypes and another modality: no read-out (the probe reads the encoder)
MIN_PATIENTS = 8


@dataclass
class ReadoutFit:
    """A fitted read-out: ``mean``/``scale`` ``(V,)``, ``weight`` ``(E, V)``, ``bias`` ``(E,)``."""

    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    alpha: float
    patients: int


def consensus(embeddings: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """``(mean (N, E), count (N,))`` of the given modalities' embeddings over the ones each patient has.

    ``embeddings``: modality -> (``(N, E)`` L2-normalised embeddings, ``(N,)`` present).
    """
    first = next(iter(embeddings.values()))[0]
    total, count = np.zeros(first.shape, np.float64), np.zeros(len(first))
    for z, present in embeddings.values():
        total[present] += z[present]
        count += present
    return total / np.maximum(count, 1)[:, None], count


def fit_rows(present: np.ndarray, count: np.ndarray, n_variants: int, seed: int = 0) -> np.ndarray:
    """Indices of the patients that enter the fit: genotypes and at least one teacher modality,
    a seeded subset of them when more than :data:`MAX_CELLS` dosages would be read."""
    rows = np.flatnonzero(np.asarray(present, bool) & (np.asarray(count) > 0))
    if len(rows) * n_variants > MAX_CELLS:
        keep = max(MIN_PATIENTS, MAX_CELLS // max(n_variants, 1))
        rows = np.sort(np.random.default_rng(seed).permutation(rows)[:keep])
    return rows


def fit_gene_readout(read_dosage: Callable[[np.ndarray], np.ndarray], n_variants: int, present: np.ndarray,
                     teacher: dict[str, tuple[np.ndarray, np.ndarray]], seed: int = 0) -> ReadoutFit | None:
    """Ridge map of the dosages to the consensus of ``teacher`` over ``N`` patients.

    ``read_dosage(rows)`` gives the ``(len(rows), n_variants)`` dosages (missing calls ``< 0``) of
    the patients :func:`fit_rows` picks, so only those are read; ``present`` ``(N,)``: which patients
    have genotypes. Returns None with fewer than :data:`MIN_PATIENTS` patients having genotypes
    and at least one teacher modality.
    """
    target, count = consensus(teacher)
    rows = fit_rows(present, count, n_variants, seed)
    if len(rows) < MIN_PATIENTS:
        return None
    x = np.asarray(read_dosage(rows), dtype=np.float64)
    called = x >= 0
    mean = np.where(called, x, 0.0).sum(0) / np.maximum(called.sum(0), 1)
    x = np.where(called, x, mean) - mean
    sd = x.std(0)
    scale = np.where(sd > 1e-8, sd, 1.0)
    x /= scale
    ridge = RidgeCV(alphas=ALPHAS).fit(x, target[rows])
    return ReadoutFit(mean, scale, np.atleast_2d(ridge.coef_), np.atleast_1d(ridge.intercept_),
                      float(ridge.alpha_), len(rows))
