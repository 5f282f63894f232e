"""Fitting the genotype read-out at the end of pretraining (see :mod:`phenoclip.models.readout`).

The teacher of each training patient is its *consensus*: the mean of its other modalities'
L2-normalised embeddings from the trained model. A linear map of the standardised dosages is
fitted to it, from training patients only, so the validation patients stay unseen. Two
candidates, compared by the same :data:`SCREEN_FOLDS`-fold cross-validation (held-out squared
error of the consensus; every step of each candidate inside the folds):

- the *screened ridge*: the variants ranked by the strength of their marginal association with the
  teacher (the squared norm of their covariance with the centred consensus), the top ``k`` (from
  a doubling grid that ends at every variant) into a ridge regression (scikit-learn's ``RidgeCV``,
  penalty by generalised cross-validation). A dense ridge over thousands of SNPs spreads its
  weight over the many that carry nothing; with enough patients the folds keep fewer (of 2,001
  SNPs: 50-100 on a 600-patient coalescent cohort, 800 on 2,000 simulated patients);
- a *multi-task elastic net* (scikit-learn's coordinate descent; one group penalty per variant over
  its weights to every direction, so a variant is kept or dropped whole) from the dosages to the
  teacher's top :data:`SPARSE_DIRECTIONS` principal directions, mapped back to the teacher's space,
  its penalty from a path of :data:`SPARSE_ALPHAS`. Where a trait's genetics is a few variants of
  real effect it keeps them and drops the rest, which the ridge's marginal ranking cannot; where it
  is many small effects the folds prefer the ridge.

The elastic net replaces the ridge only when its per-fold advantage is more than
:data:`SPARSE_MARGIN` standard errors; the chosen one is refitted on every fit patient. Below
:data:`SCREEN_MIN_PATIENTS` nothing is cross-validated: the ridge over every variant. Measured
(docs/experiments.md, "2026-12-07 (later): the genotype read-out may be a multi-task elastic
net"): the elastic net is chosen on every seed of a 600-patient coalescent cohort and of 2,000
simulated patients (gene probe +0.013-0.016 at every label fraction there, 3 of 3 seeds, and level
with the elastic net on the labels with all 1,600 of them), the ridge on the sample cohort's 145
fit patients, where the elastic net's edge was within the folds' noise and cost the fused stack.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import RidgeCV, enet_path
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
#: the sparse candidate: a multi-task elastic net (one group-L1 penalty per variant over its weights to
#: every direction) from the dosages to the teacher's top SPARSE_DIRECTIONS principal directions, over
#: SPARSE_ALPHAS penalties from the smallest that keeps no variant down by a factor SPARSE_EPS. On
#: 2,000 simulated patients the folds chose about a tenth of the largest (267-330 of 2,001 kept); the
#: path to a thousandth took 193 s per fold and did not converge, to a hundredth 8 s (1,162 x 2,001,
#: one thread, random coordinate order)
SPARSE_DIRECTIONS = 8
SPARSE_L1_RATIO = 0.5
SPARSE_ALPHAS = 20
SPARSE_EPS = 1e-2
#: coordinate descent's stopping rule (duality gap relative to the targets' sum of squares) and limit
SPARSE_TOL = 1e-3
SPARSE_MAX_ITER = 2000
#: the elastic net replaces the screened ridge only when its held-out error is lower by more than this
#: many standard errors of the per-fold difference (each candidate at its own best setting): on the
#: sample cohort's 145 fit patients it was 0.5-0.8 % lower, 0.7-1.3 standard errors, and as the
#: read-out it cost the fused stack at 10 % of labels (-0.022, 3 of 3 seeds); on 600 coalescent
#: patients 3-4.5 % lower, 4.6-22 standard errors (docs/experiments.md, 2026-12-07 (later))
SPARSE_MARGIN = 2.0
#: at most this many dosages enter one elastic-net fit (coordinate descent costs far more per dosage
#: than the ridge's SVD); beyond it the fit reads a seeded subset of its patients, while the folds'
#: held-out errors stay on every held-out patient, so the two candidates are still compared alike
SPARSE_MAX_CELLS = 5_000_000


RIDGE, SPARSE = "screened ridge", "multi-task elastic net"


@dataclass
class ReadoutFit:
    """A fitted read-out: ``mean``/``scale`` ``(V,)``, ``weight`` ``(E, V)``, ``bias`` ``(E,)``."""

    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    #: the chosen penalty (the ridge's, or the elastic net's)
    alpha: float
    patients: int
    #: variants with a non-zero weight (kept by the screening, or by the elastic net's L1 penalty)
    variants: int
    #: :data:`RIDGE`, or :data:`SPARSE` where it predicted the teacher clearly better out of fold
    #: (:func:`clearly_better`)
    method: str = RIDGE
    #: indices (into the ``N`` patients) of the patients fitted, and ``(len(rows), E)`` the cross-fitted
    #: read-out of each: the chosen candidate at its chosen setting, fitted in the cross-validation fold
    #: that held the patient out. None where nothing was cross-validated (too few patients)
    rows: np.ndarray | None = None
    crossfit: np.ndarray | None = None


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
    held_out: dict[str, np.ndarray] = {}
    ridge_error, sparse_error, alphas = cross_validated_errors(x, t, seed, predictions=held_out)
    weight = np.zeros((t.shape[1], n_variants))
    if sparse_error is not None and clearly_better(ridge_error, sparse_error):
        best = int(np.argmin(sparse_error.sum(0)))
        alpha = float(alphas[best])
        # down the path to the chosen penalty: coordinate descent warm-started from each larger one
        some = sparse_rows(len(x), n_variants, seed)
        weight[:], bias = sparse_fit(x[some], t[some], alphas[:best + 1], seed)[-1]
        kept = int((np.abs(weight).sum(0) > 0).sum())
        return ReadoutFit(mean, scale, weight, bias, alpha, len(rows), kept, SPARSE, rows, held_out["sparse"][:, best])
    k = chosen_count(ridge_error, n_variants)
    keep = np.sort(association_order(x, t)[:k])
    ridge = ridge_cv(len(x), len(keep)).fit(x[:, keep], t)
    weight[:, keep] = np.atleast_2d(ridge.coef_)
    crossfit = held_out["ridge"][:, screen_grid(n_variants).index(k)] if "ridge" in held_out else None
    return ReadoutFit(mean, scale, weight, np.atleast_1d(ridge.intercept_), float(ridge.alpha_), len(rows), k,
                      RIDGE, rows if crossfit is not None else None, crossfit)


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


def sparse_alphas(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """:data:`SPARSE_ALPHAS` penalties, geometric from the smallest that keeps no variant (for the
    teacher's top directions on the standardised dosages ``x``) down by :data:`SPARSE_EPS`."""
    _, directions = teacher_directions(t)
    scores = (t - t.mean(0)) @ directions.T
    # the scores are centred, so x need not be: no centred copy of every dosage (0.8 GB at MAX_CELLS)
    top = float(np.sqrt(((x.T @ scores) ** 2).sum(1)).max()) / (len(x) * SPARSE_L1_RATIO)
    return max(top, 1e-12) * np.logspace(0, np.log10(SPARSE_EPS), SPARSE_ALPHAS)


def sparse_rows(n_rows: int, n_variants: int, seed: int = 0) -> np.ndarray:
    """Rows an elastic-net fit reads: all of them, or a seeded subset of :data:`SPARSE_MAX_CELLS` dosages."""
    keep = max(MIN_PATIENTS, SPARSE_MAX_CELLS // max(n_variants, 1))
    if n_rows <= keep:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).permutation(n_rows)[:keep])


def teacher_directions(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mean (E,), directions (D, E))``: the teacher's centre and its top :data:`SPARSE_DIRECTIONS`
    principal directions (fewer where the teacher has fewer)."""
    centre = t.mean(0)
    _, _, vt = np.linalg.svd(t - centre, full_matrices=False)
    return centre, vt[:SPARSE_DIRECTIONS]


def sparse_fit(x: np.ndarray, t: np.ndarray, alphas, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(weight (E, V), bias (E,))]`` per penalty in ``alphas`` (decreasing): the multi-task
    elastic net from ``x`` to the scores of ``t`` on its top principal directions, mapped back to
    the teacher's space (a linear map of the dosages, as the ridge's)."""
    centre, directions = teacher_directions(t)
    x_mean = x.mean(0)
    # scikit-learn's coordinate descent (MultiTaskElasticNet's solver) fits no intercept: centred
    # inputs, and the centred teacher's scores (mean 0) as targets
    # (random coordinate order, seeded: twice as fast as cyclic here, the same variants kept)
    with warnings.catch_warnings():
        # a path that stops at SPARSE_MAX_ITER short of the tolerance is still a fit the folds judge;
        # scikit-learn would warn once per penalty and fold
        warnings.simplefilter("ignore", ConvergenceWarning)
        _, coefs, _ = enet_path(np.asfortranarray(x - x_mean), (t - centre) @ directions.T, l1_ratio=SPARSE_L1_RATIO,
                                alphas=np.asarray(alphas, float), tol=SPARSE_TOL, max_iter=SPARSE_MAX_ITER,
                                selection="random", random_state=seed)
    weights = [directions.T @ coefs[:, :, a] for a in range(coefs.shape[2])]  # each (E, V)
    return [(w, centre - w @ x_mean) for w in weights]


def cross_validated_errors(x: np.ndarray, t: np.ndarray, seed: int = 0, sparse: bool = True,
                           predictions: dict | None = None):
    """Held-out squared error of the teacher ``t`` over :data:`SCREEN_FOLDS` folds, for the screened
    ridge at each count of :func:`screen_grid` and for the multi-task elastic net at each penalty of
    :func:`sparse_alphas`, per fold: ``(ridge (folds, n_grid), sparse (folds, SPARSE_ALPHAS) or None,
    alphas or None)``.

    Both candidates are fitted inside the folds from the fold's patients only (screening, the
    teacher's directions), on the same folds, so their errors compare. Below
    :data:`SCREEN_MIN_PATIENTS` nothing is cross-validated: every variant, the ridge; with
    ``sparse`` False only the ridge is.

    ``predictions`` (a dict, filled in place): each patient's held-out prediction of the teacher at every
    setting, float32, ``"ridge"`` ``(N, n_grid, E)`` and ``"sparse"`` ``(N, SPARSE_ALPHAS, E)`` (the
    cross-fitted read-out, :attr:`ReadoutFit.crossfit`); left empty where nothing is cross-validated.
    """
    n, v = x.shape
    grid = screen_grid(v)
    if n < SCREEN_MIN_PATIENTS:
        return np.zeros((1, 0)), None, None
    sparse = sparse and SPARSE_ALPHAS > 0
    alphas = sparse_alphas(x, t) if sparse else np.zeros(0)
    ridge, sparse_error = np.zeros((SCREEN_FOLDS, len(grid))), np.zeros((SCREEN_FOLDS, len(alphas)))
    if predictions is not None:
        predictions["ridge"] = np.zeros((n, len(grid), t.shape[1]), np.float32)
        if sparse:
            predictions["sparse"] = np.zeros((n, len(alphas), t.shape[1]), np.float32)
    for f, (train, held) in enumerate(KFold(SCREEN_FOLDS, shuffle=True, random_state=seed).split(x)):
        # the fold's rows are gathered once, not again for every k (at the 10^8-dosage cap a copy is 0.6 GB)
        x_fit, t_fit, x_held, t_held = x[train], t[train], x[held], t[held]
        order = association_order(x_fit, t_fit)
        for i, k in enumerate(grid):
            keep = order[:k]
            fit = ridge_cv(len(x_fit), len(keep)).fit(x_fit[:, keep], t_fit)
            predicted = fit.predict(x_held[:, keep]).reshape(t_held.shape)
            ridge[f, i] = float(((predicted - t_held) ** 2).sum())
            if predictions is not None:
                predictions["ridge"][held, i] = predicted
        some = sparse_rows(len(x_fit), v, seed)
        for i, (weight, bias) in enumerate(sparse_fit(x_fit[some], t_fit[some], alphas, seed) if sparse else []):
            predicted = x_held @ weight.T + bias
            sparse_error[f, i] = float(((predicted - t_held) ** 2).sum())
            if predictions is not None:
                predictions["sparse"][held, i] = predicted
    return ridge, (sparse_error if sparse else None), (alphas if sparse else None)


def screened_count(x: np.ndarray, t: np.ndarray, seed: int = 0) -> int:
    """How many of the strongest variants the ridge reads, by :data:`SCREEN_FOLDS`-fold cross-validation
    of screening and ridge together (squared error on the held-out fold); every variant below
    :data:`SCREEN_MIN_PATIENTS` patients."""
    return chosen_count(cross_validated_errors(x, t, seed, sparse=False)[0], x.shape[1])


def chosen_count(ridge_error: np.ndarray, n_variants: int) -> int:
    """The count of :func:`screen_grid` with the least held-out error (``(folds, counts)``); every
    variant when nothing was cross-validated (no column per count)."""
    grid = screen_grid(n_variants)
    return grid[int(np.argmin(ridge_error.sum(0)))] if ridge_error.shape[1] == len(grid) else n_variants


def clearly_better(ridge_error: np.ndarray, sparse_error: np.ndarray) -> bool:
    """Whether the elastic net at its best penalty beats the screened ridge at its best count on the
    folds (``(folds, settings)`` held-out errors each) by more than :data:`SPARSE_MARGIN` standard
    errors of the per-fold difference."""
    if sparse_error.size == 0:
        return False
    gain = ridge_error[:, np.argmin(ridge_error.sum(0))] - sparse_error[:, np.argmin(sparse_error.sum(0))]
    return bool(gain.mean() > SPARSE_MARGIN * gain.std(ddof=1) / np.sqrt(len(gain)))
