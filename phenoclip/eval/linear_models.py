"""Linear models with their penalty chosen by inner cross-validation (scikit-learn).

One place for the fits that every learned result of phenoclip is held against and that the
linear probe itself uses, so the probe on embeddings and the baseline on raw features go through
the same selection procedure on the same patients:

* :func:`fit_logistic`: L2 logistic regression, ``C`` by stratified inner CV (log loss);
* :func:`fit_elasticnet`: elastic-net logistic regression (saga), ``C`` and ``l1_ratio`` by inner CV;
* :func:`fit_ridge`: ridge regression, ``alpha`` by inner CV.

Inputs are already standardised (see :mod:`phenoclip.eval.raw_features`). With more features
than patients, the L2 fits run in the row space of the training matrix: the L2 solution lies in
that span, so the fit is the same optimum at ``n x n`` cost (a 32^3 MRI volume per patient costs
no more than 130 features).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold

#: inverse L2 strengths tried for the logistic regression (scikit-learn's C); wide on purpose: on the
#: sample cohort's 32^3 MRI voxels (each modality block scaled to unit total variance) CV picks C = 320
C_GRID = tuple(float(c) for c in np.logspace(-4, 4, 17))
#: elastic-net grid: (C, l1_ratio)
ENET_C = (0.01, 0.1, 1.0)
ENET_L1_RATIO = (0.2, 0.8)
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-2, 4, 13))
#: inner folds at most; fewer when the smallest class is smaller
FOLDS = 3


#: how a probe scales frozen embeddings before its penalised fit: "common" centres each dimension
#: and divides the block by one scale, so the L2 penalty keeps the embedding's own geometry and
#: favours the directions pretraining spread out; "dimension" z-scores every dimension, which
#: lifts the near-constant ones to the same footing (see docs/experiments.md, 2026-12-04)
PROBE_SCALING = "dimension"


def probe_scaling(x: np.ndarray, natural=None) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, scale)``, each ``(F,)``, that a probe standardises embedding rows ``x`` with
    (:data:`PROBE_SCALING`); a constant column (an absent modality) is centred to 0. Columns where
    ``natural`` (``(F,)`` bools, e.g. :meth:`~phenoclip.models.multimodal.MultimodalModel.probe_natural`)
    is true are only centred: they keep their own scale."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0) if len(x) else np.zeros(x.shape[1])
    sd = x.std(axis=0) if len(x) else np.ones(x.shape[1])
    if PROBE_SCALING == "dimension":
        scale = np.where(sd > 1e-8, sd, 1.0)
    else:
        common = float(np.sqrt(np.mean(sd ** 2))) if sd.size else 1.0
        scale = np.full(x.shape[1], common if common > 1e-8 else 1.0)
    if natural is not None:
        natural = np.asarray(natural, dtype=bool)
        if natural.shape != scale.shape:
            raise ValueError(f"natural has {natural.shape} entries, x {x.shape[1]} columns")
        scale = np.where(natural, 1.0, scale)
    return mean, scale


@dataclass
class LinearFit:
    """A fitted linear model: ``predict(x)`` gives class probabilities ``(N, n_classes)`` or values ``(N,)``.

    ``basis`` (features x r) maps inputs into the training rows' span when the fit ran there.
    Classes absent from the training subset get probability 0.
    """

    model: object
    chosen: dict
    n_classes: int | None
    basis: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    def _inputs(self, x: np.ndarray) -> np.ndarray:
        return x if self.basis is None else x @ self.basis

    def predict(self, x: np.ndarray) -> np.ndarray:
        z = self._inputs(np.asarray(x, dtype=np.float64))
        if self.n_classes is None:
            return self.model.predict(z)
        out = np.zeros((len(z), self.n_classes))
        out[:, self.model.classes_.astype(int)] = self.model.predict_proba(z)
        return out

    def coefficients(self) -> tuple[np.ndarray, np.ndarray]:
        """``(weight (K, F), bias (K,))`` in the input space (K = 1 for binary and regression)."""
        w = np.atleast_2d(self.model.coef_)
        if self.basis is not None:
            w = w @ self.basis.T
        return w, np.atleast_1d(self.model.intercept_)


def _row_space(x: np.ndarray) -> np.ndarray | None:
    """Orthonormal basis (F, r) of the training rows' span when features outnumber patients."""
    if x.shape[1] <= x.shape[0]:
        return None
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    keep = s > 1e-10 * max(s.max(initial=0.0), 1e-300)
    return vt[keep].T


def _folds(y: np.ndarray, classification: bool, seed: int):
    """Stratified (classification) or plain K-fold splitter; None when too few patients for CV."""
    if classification:
        k = min(FOLDS, int(np.bincount(y).min())) if len(y) else 0
        return StratifiedKFold(k, shuffle=True, random_state=seed) if k >= 2 else None
    k = min(FOLDS, len(y) // 2)
    return KFold(k, shuffle=True, random_state=seed) if k >= 2 else None


def _search(estimator, grid: dict, x: np.ndarray, y: np.ndarray, classification: bool, seed: int,
            scoring: str) -> tuple[object, dict]:
    """Grid search by inner CV, refitted on all of ``x``; the grid's middle value when CV cannot run."""
    folds = _folds(y, classification, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if folds is None:
            chosen = {k: v[len(v) // 2] for k, v in grid.items()}
            return clone(estimator).set_params(**chosen).fit(x, y), chosen
        search = GridSearchCV(estimator, grid, scoring=scoring, cv=folds, refit=True, n_jobs=1,
                              error_score=np.nan).fit(x, y)
    return search.best_estimator_, dict(search.best_params_)


def _classes(y: np.ndarray) -> np.ndarray:
    """Class indices relabelled 0..k-1 for the fit (a subset may miss a class); the map back."""
    present = np.unique(y)
    return np.searchsorted(present, y), present


class _Relabelled:
    """A classifier fitted on relabelled classes, reporting the original class indices."""

    def __init__(self, model, present: np.ndarray):
        self.model, self.classes_ = model, present
        self.coef_, self.intercept_ = model.coef_, model.intercept_

    def predict_proba(self, x):
        return self.model.predict_proba(x)


def fit_logistic(x: np.ndarray, y: np.ndarray, n_classes: int, seed: int = 0,
                 grid: tuple[float, ...] = C_GRID, c: float | None = None) -> LinearFit:
    """L2 logistic regression on standardised ``x``; ``C`` by inner CV unless ``c`` is given."""
    x = np.asarray(x, dtype=np.float64)
    basis = _row_space(x)
    z = x if basis is None else x @ basis
    yy, present = _classes(np.asarray(y))
    base = LogisticRegression(max_iter=5000, random_state=seed)
    if len(present) < 2:
        raise ValueError("a classifier needs at least two classes in its training patients")
    if c is None:
        model, chosen = _search(base, {"C": list(grid)}, z, yy, True, seed, "neg_log_loss")
    else:
        model, chosen = base.set_params(C=c).fit(z, yy), {"C": c}
    return LinearFit(_Relabelled(model, present), {"C": float(chosen["C"])}, n_classes, basis)


def as_logits(fit: LinearFit, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(weight (K, F), bias (K,))`` giving ``n_classes`` logits whose softmax equals ``fit``'s
    probabilities: binary fits keep the first class's logit at 0; classes absent from the training
    patients get a bias of -1e4 (probability 0, as :meth:`LinearFit.predict`)."""
    w, b = fit.coefficients()
    cols = fit.model.classes_.astype(int)
    weight, bias = np.zeros((n_classes, w.shape[1])), np.zeros(n_classes)
    if len(cols) == 2 and w.shape[0] == 1:
        bias[:] = -1e4 if n_classes > 2 else 0.0
        weight[cols[1]], bias[cols[1]], bias[cols[0]] = w[0], b[0], 0.0
    else:
        bias[:] = -1e4 if len(cols) < n_classes else 0.0
        weight[cols], bias[cols] = w, b
    return weight, bias


def fit_elasticnet(x: np.ndarray, y: np.ndarray, n_classes: int, seed: int = 0, max_iter: int = 200) -> LinearFit:
    """Elastic-net logistic regression (saga) on standardised ``x``; ``C`` and ``l1_ratio`` by inner CV.

    No row-space trick here (the L1 part is not rotation invariant): with tens of thousands of
    features this is the slow baseline. saga stops after ``max_iter`` epochs (tol 1e-3).
    """
    yy, present = _classes(np.asarray(y))
    base = LogisticRegression(solver="saga", l1_ratio=0.5, max_iter=max_iter, tol=1e-3, random_state=seed)
    if base.get_params().get("penalty") == "l2":
        # scikit-learn < 1.8 reads l1_ratio only with penalty="elasticnet" (later versions deprecate penalty)
        base.set_params(penalty="elasticnet")
    model, chosen = _search(base, {"C": list(ENET_C), "l1_ratio": list(ENET_L1_RATIO)},
                            np.asarray(x, dtype=np.float64), yy, True, seed, "neg_log_loss")
    return LinearFit(_Relabelled(model, present), {k: float(v) for k, v in chosen.items()}, n_classes)


def fit_ridge(x: np.ndarray, y: np.ndarray, seed: int = 0, alphas: tuple[float, ...] = RIDGE_ALPHAS) -> LinearFit:
    """Ridge regression on standardised ``x``; ``alpha`` by inner CV (mean squared error)."""
    x = np.asarray(x, dtype=np.float64)
    basis = _row_space(x)
    z = x if basis is None else x @ basis
    model, chosen = _search(Ridge(), {"alpha": list(alphas)}, z, np.asarray(y, dtype=np.float64), False, seed,
                            "neg_mean_squared_error")
    return LinearFit(model, {"alpha": float(chosen["alpha"])}, None, basis)
