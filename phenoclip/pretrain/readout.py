"""Fitting the genotype read-out at the end of pretraining (see :mod:`phenoclip.models.readout`).

The teacher of each training patient is its *consensus*: the mean of its other modalities'
L2-normalised embeddings from the trained model. A ridge regression (scikit-learn's ``RidgeCV``,
penalty by efficient leave-one-out, i.e. generalised cross-validation) maps the standardised
dosages to it. Only training patients are used, so the validation patients stay unseen.

Before the ridge, the variants are *screened*: ranked by the strength of their marginal
association with the teacher (the squared norm of their covariance with the centred consensus),
and only the top ``k`` enter the fit, ``k`` chosen by cross-validation of the whole procedure
(screening inside the folds) from a doubling grid that ends at every variant. A dense ridge over
thousands of SNPs spreads its weight over the many that carry nothing; with enough patients the
folds see it and keep fewer (of 2,001 SNPs: 50-100 on a 600-patient coalescent cohort, held-out
disease probe +0.10-0.12 at every label fraction; 800 on 2,000 simulated patients, +0.04;
docs/experiments.md), while on the sample cohort's 145 training patients they keep every variant
on six pretraining seeds of nine (the fit is then the plain ridge) and 800 on the other three.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import KFold

#: ridge penalties tried; on 2,000 standardised SNPs GCV chose 2,000-4,600 (sample, coalescent
#: and 2,000-patient cohorts), inside the grid
ALPHAS = tuple(float(a) for a in np.logspace(-1, 7, 25))
#: at most this many dosages (patients x variants) enter the fit, in float64 about 0.8 GB; beyond
#: it a seeded subset of the training patients is used (said in the log). At the cap, 50,000
#: patients x 2,000 variants, the whole fit (screening included) took 648 s on one thread and
#: peaked at 5.1 GB (docs/experiments.md, 2026-12-06)
MAX_CELLS = 100_000_000
#: fewer patients with genotypes and another modality: no read-out (the probe reads the encoder)
MIN_PATIENTS = 8
#: screening: the smallest number of variants tried (then doubling up to all of them), the folds
#: that choose it, and the fewest fit patients for which it runs (fewer: every variant is kept)
SCREEN_MIN_VARIANTS = 25
SCREEN_FOLDS = 5
SCREEN_MIN_PATIENTS = 50


@dataclass
class ReadoutFit:
    """A fitted read-out: ``mean``/``scale`` ``(V,)``, ``weight`` ``(E, V)``, ``bias`` ``(E,)``."""

    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    alpha: float
    patients: int
    #: variants kept by the screening (the others have weight 0)
    variants: int


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
    t = target[rows]
    k = screened_count(x, t, seed)
    keep = np.sort(association_order(x, t)[:k])
    ridge = ridge_cv(len(x), len(keep)).fit(x[:, keep], t)
    weight = np.zeros((t.shape[1], n_variants))
    weight[:, keep] = np.atleast_2d(ridge.coef_)
    return ReadoutFit(mean, scale, weight, np.atleast_1d(ridge.intercept_), float(ridge.alpha_), len(rows), k)


def ridge_cv(n_rows: int, n_columns: int) -> RidgeCV:
    """``RidgeCV`` over :data:`ALPHAS` for an ``n_rows x n_columns`` design, on its cheaper GCV path.

    With more patients than variants, scikit-learn's default path eigendecomposes ``X^T X`` and then
    forms the hat matrix's diagonal anew for every penalty (``n p^2`` each); one thin SVD of ``X``
    serves all 25 penalties (then ``n p`` per penalty and target): 3.3-3.8x faster at 1,453 x 800
    and 10,000 x 2,000, the same penalty and coefficients to 1e-14. With fewer patients the
    default (Gram) path is the cheaper one and is kept.
    """
    return RidgeCV(alphas=ALPHAS, gcv_mode="svd" if n_rows > n_columns else None)


def association_order(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Variant indices, strongest marginal association with the teacher first: the squared norm of
    each standardised variant's covariance with the centred teacher ``t`` ``(N, E)``."""
    score = ((x - x.mean(0)).T @ (t - t.mean(0))) ** 2
    return np.argsort(-score.sum(1), kind="stable")


def screen_grid(n_variants: int) -> list[int]:
    """Variant counts tried: :data:`SCREEN_MIN_VARIANTS` doubling, then all of them."""
    grid, k = [], SCREEN_MIN_VARIANTS
    while k < n_variants:
        grid.append(k)
        k *= 2
    return grid + [n_variants]


def screened_count(x: np.ndarray, t: np.ndarray, seed: int = 0) -> int:
    """How many of the strongest variants the ridge reads, by :data:`SCREEN_FOLDS`-fold cross-validation
    of screening and ridge together (squared error on the held-out fold); every variant below
    :data:`SCREEN_MIN_PATIENTS` patients."""
    n, v = x.shape
    grid = screen_grid(v)
    if n < SCREEN_MIN_PATIENTS or len(grid) == 1:
        return v
    error = np.zeros(len(grid))
    for train, held in KFold(SCREEN_FOLDS, shuffle=True, random_state=seed).split(x):
        # the fold's rows are gathered once, not again for every k (at the 10^8-dosage cap a copy is 0.6 GB)
        x_fit, t_fit, x_held, t_held = x[train], t[train], x[held], t[held]
        order = association_order(x_fit, t_fit)
        for i, k in enumerate(grid):
            keep = order[:k]
            fit = ridge_cv(len(x_fit), len(keep)).fit(x_fit[:, keep], t_fit)
            error[i] += float(((fit.predict(x_held[:, keep]) - t_held) ** 2).sum())
    return grid[int(np.argmin(error))]
