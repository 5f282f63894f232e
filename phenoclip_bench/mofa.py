"""MOFA+ baseline: the unsupervised multi-omics factor model, fitted on the training patients' views.

:func:`fit_mofa` fits MOFA+ (``mofapy2``) on the training patients only and keeps what is needed to
place *any* patient in its factor space, without refitting:

* per view, the feature standardisation (mean and SD of the training patients having the view);
  a view with more than ``max_features`` features is replaced by its top principal components,
  fitted on the same training rows (so a 30,000-voxel MRI view enters MOFA+ as a few hundred PCs);
* per view, the learned weights ``W_m`` (F_m x K) and noise precisions ``tau_m`` (F_m,).

:meth:`MofaFit.factors` then gives the posterior mean of the factors of new patients from
whichever views they have, and :meth:`MofaFit.view_factors` the same from one view alone (to
match patients across modalities in the factor space, as the retrieval benchmark does).

MOFA+ handles missing views natively: a patient lacking a modality is an all-NaN row of that view.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from typing import Collection, Mapping

import numpy as np

#: views wider than this enter MOFA+ as their top principal components (fitted on training rows)
MAX_FEATURES = 500


@dataclass
class ViewScaling:
    """How one view's raw features become the matrix MOFA+ saw: standardise, then optionally PCA.

    ``n_raw``: the view's raw feature count; ``keep``: the raw columns used (features constant or
    unobserved on the training rows are dropped: they carry nothing and a zero SD would blow up
    MOFA+'s noise precision); ``mean`` / ``sd``: per kept feature, from the training patients
    having the view; ``axes``: (F_kept, C) principal axes or None; ``scale``: one number dividing
    the PC scores.
    """

    n_raw: int
    keep: np.ndarray
    mean: np.ndarray
    sd: np.ndarray
    axes: np.ndarray | None = None
    scale: float = 1.0

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The view's model features (N, F_m) for raw rows ``x`` (N, F_raw); NaN stays NaN.

        In a PCA view a missing feature of a present patient counts as the training mean (0 after
        standardising) so the projection is defined; rows with no finite value stay all-NaN.
        """
        z = (np.asarray(x, np.float64)[:, self.keep] - self.mean) / self.sd
        if self.axes is None:
            return z
        present = np.isfinite(z).any(axis=1)
        out = np.nan_to_num(z, nan=0.0) @ self.axes / self.scale
        out[~present] = np.nan
        return out


@dataclass
class MofaFit:
    """A fitted MOFA+ model: per-view scaling, weights and noise precisions, and training factors.

    ``weights[m]``: (F_m, K) posterior mean of W_m; ``tau[m]``: (F_m,) posterior mean noise
    precision; ``train_rows``: the training patients MOFA+ was fitted on (those having at least one
    view), whose MOFA+ factors are ``train_factors`` (len(train_rows), K). ``iterations``: the
    number of MOFA+ updates run before convergence (or ``max_iter``).
    """

    views: list[str]
    scaling: dict[str, ViewScaling]
    weights: dict[str, np.ndarray]
    tau: dict[str, np.ndarray]
    train_rows: np.ndarray
    train_factors: np.ndarray
    iterations: int

    @property
    def n_factors(self) -> int:
        return self.train_factors.shape[1]

    def factors(self, views: Mapping[str, np.ndarray],
                present_views: Mapping[str, np.ndarray] | Collection[str] | None = None) -> np.ndarray:
        """Factors (N, K) of any patients from whichever views they have.

        The exact Gaussian posterior mean of Z for the learned (fixed) W and tau and the standard
        normal prior: ``Z = (I + sum_m W_m' diag(tau_m) W_m)^-1 sum_m W_m' diag(tau_m) x_m`` over the
        views (and, within a view, the features) observed for the patient. A patient with no view
        gets zeros (the prior mean).

        ``views``: any subset of the fitted views, raw features as given to :func:`fit_mofa`, the
        same N patients in each. ``present_views``: which patients have which view, either
        ``{view: (N,) bool}`` (views left out of it: the default) or a collection of view names to
        use (others ignored); by default a patient has a view when its row holds any finite value.
        """
        names = list(views)
        unknown = [m for m in names if m not in self.scaling]
        if unknown:
            raise ValueError(f"views not in the fit: {unknown} (fitted: {self.views})")
        if present_views is not None and not isinstance(present_views, Mapping):
            names = [m for m in names if m in set(present_views)]
        if not names:
            raise ValueError("no view to compute factors from")
        n = {np.asarray(views[m]).shape[0] for m in names}
        if len(n) != 1:
            raise ValueError(f"views disagree on the number of patients: {sorted(n)}")
        n_pat, k = n.pop(), self.n_factors
        # Accumulate, per patient, the posterior precision I + sum W' diag(tau * observed) W and the
        # right-hand side: a per-patient precision makes missing views *and* missing features exact.
        precision = np.tile(np.eye(k), (n_pat, 1, 1))
        rhs = np.zeros((n_pat, k))
        for m in names:
            x = np.asarray(views[m], np.float64)
            if x.ndim != 2 or x.shape[1] != self.scaling[m].n_raw:
                raise ValueError(f"view {m!r}: expected (N, {self.scaling[m].n_raw}) features, got {x.shape}")
            y = self.scaling[m].apply(x)
            observed = np.isfinite(y)
            if isinstance(present_views, Mapping) and m in present_views:
                observed &= np.asarray(present_views[m], bool)[:, None]
            w, tau = self.weights[m], self.tau[m]
            weighted = np.where(observed, tau, 0.0)  # (N, F_m): tau where observed, 0 elsewhere
            rhs += (weighted * np.where(observed, y, 0.0)) @ w
            outer = (w[:, :, None] * w[:, None, :]).reshape(len(w), k * k)  # rows: w_f w_f'
            precision += (weighted @ outer).reshape(n_pat, k, k)
        return np.linalg.solve(precision, rhs[:, :, None])[:, :, 0]

    def view_factors(self, view: str, x: np.ndarray) -> np.ndarray:
        """Factors (N, K) from one view only (rows without the view get zeros): for cross-modal matching."""
        return self.factors({view: x})


def _row_present(x: np.ndarray) -> np.ndarray:
    return np.isfinite(x).any(axis=1)


def _fit_scaling(x: np.ndarray, rows: np.ndarray, max_features: int) -> ViewScaling:
    """Standardisation (and PCA if the view is wider than ``max_features``) from training ``rows``."""
    xt = x[rows]
    with _quiet_nan_warnings():
        mean = np.nanmean(xt, axis=0)
        sd = np.nanstd(xt, axis=0)
    keep = np.flatnonzero(np.isfinite(mean) & (sd > 1e-12 * np.maximum(1.0, np.abs(mean))))
    if len(keep) == 0:
        raise ValueError("no feature varies on the training patients")
    scaling = ViewScaling(n_raw=x.shape[1], keep=keep, mean=mean[keep], sd=sd[keep])
    if len(keep) <= max_features:
        return scaling
    z = np.nan_to_num(scaling.apply(xt), nan=0.0)  # centred on these rows: mean 0 by construction
    # n training rows span at most n - 1 centred directions: more components would be pure zeros
    n_comp = max(1, min(max_features, len(rows) - 1))
    _, s, vt = np.linalg.svd(z, full_matrices=False)
    scaling.axes = vt[:n_comp].T
    # One scalar so the PC view has unit mean variance per feature like the standardised views
    # (what MOFA+'s scale_views would do), while keeping the PCs' relative variances.
    scaling.scale = float(np.sqrt(np.sum(s[:n_comp] ** 2) / (len(rows) * n_comp))) or 1.0
    return scaling


@contextlib.contextmanager
def _quiet_nan_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: handled by ``keep``
        yield


def _train_mask(train: np.ndarray, n: int) -> np.ndarray:
    train = np.asarray(train)
    if train.dtype == bool:
        if train.shape != (n,):
            raise ValueError(f"train mask has shape {train.shape}, expected ({n},)")
        return train
    mask = np.zeros(n, bool)
    mask[train.astype(np.int64)] = True
    return mask


def fit_mofa(views: Mapping[str, np.ndarray], train: np.ndarray, n_factors: int = 10, seed: int = 0,
             max_iter: int = 1000, max_features: int = MAX_FEATURES) -> MofaFit:
    """Fit MOFA+ on the training patients' views; returns a :class:`MofaFit` for any patients.

    ``views``: modality -> (N, F_m) float matrix, the same N patients in each, all-NaN rows for
    patients lacking the modality (passed to MOFA+ as missing). ``train``: (N,) bool mask or row
    indices of the training patients; nothing of the other rows is used.

    Each feature is standardised with the mean and SD of the training patients having the view.
    A view with more than ``max_features`` features is replaced by its top principal components
    (at most ``max_features``, and at most one fewer than its training patients), fitted on the
    training rows and scaled by one number to unit mean variance; the fit keeps the axes so new
    patients are projected the same way. Training patients with no view at all are left out.

    MOFA+ runs with Gaussian likelihoods, ``n_factors`` factors, ``seed`` and "fast" convergence
    (at most ``max_iter`` updates), its output silenced; nothing is written to disk and numpy's
    global random state (which MOFA+ reseeds) is restored afterwards.
    """
    # optional: mofapy2 comes with the bench extra
    from mofapy2.run.entry_point import entry_point

    names = list(views)
    if not names:
        raise ValueError("no views given")
    mats = {m: np.asarray(views[m], np.float64) for m in names}
    n = {x.shape[0] for x in mats.values()}
    if len(n) != 1 or any(x.ndim != 2 for x in mats.values()):
        raise ValueError(f"views must be 2-D with the same patients: shapes {[x.shape for x in mats.values()]}")
    n = n.pop()
    train = _train_mask(train, n)
    present = {m: _row_present(x) for m, x in mats.items()}
    rows = np.flatnonzero(train & np.any(np.stack(list(present.values())), axis=0))
    scaling, data = {}, []
    for m in names:
        fit_rows = rows[present[m][rows]]
        if len(fit_rows) < 2:
            raise ValueError(f"view {m!r}: fewer than 2 training patients have it")
        scaling[m] = _fit_scaling(mats[m], fit_rows, max_features)
        data.append([scaling[m].apply(mats[m][rows])])

    state = np.random.get_state()  # mofapy2 calls np.random.seed(): do not leak that to the caller
    try:
        # mofapy2 prints banners and warnings on stdout whatever verbose/quiet say. It writes an
        # hdf5 only when asked (outfile / save / save_interrupted), none of which is used here:
        # everything is read back from the model's nodes in memory.
        # Its ELBO takes log(0) for weights switched off by the spike-and-slab prior (0 * log 0,
        # harmless to the updates): numpy's warnings about it are noise too.
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), \
                np.errstate(divide="ignore", invalid="ignore"):
            ent = entry_point()
            # features are standardised above (and the PC views scaled): MOFA+'s own per-view scaling
            # would be one more factor to reproduce when projecting new patients, so it is off
            ent.set_data_options(scale_views=False)
            ent.set_data_matrix(data, likelihoods=["gaussian"] * len(names), views_names=names,
                                groups_names=["train"], samples_names=[[f"p{i}" for i in rows]],
                                features_names=[[f"{m}:{j}" for j in range(d[0].shape[1])]
                                                for m, d in zip(names, data)])
            ent.set_model_options(factors=n_factors)
            ent.set_train_options(iter=max_iter, seed=seed, convergence_mode="fast", verbose=False, quiet=True)
            ent.build()
            ent.run()
    finally:
        np.random.set_state(state)

    nodes = ent.model.nodes
    w = nodes["W"].getExpectation()  # list over views of (F_m, K); spike-and-slab: E[s * w]
    # Tau is stored expanded to (N, F_m); with one group every row is the same per-feature value
    tau = [np.asarray(t).mean(axis=0) for t in nodes["Tau"].getExpectation()]
    # per-iteration times, truncated at convergence (NaN-padded to max_iter otherwise)
    iterations = int(np.count_nonzero(np.isfinite(np.asarray(ent.model.getTrainingStats()["time"], float))))
    return MofaFit(views=names, scaling=scaling, weights={m: np.asarray(w[i]) for i, m in enumerate(names)},
                   tau={m: tau[i] for i, m in enumerate(names)}, train_rows=rows,
                   train_factors=np.asarray(nodes["Z"].getExpectation()), iterations=iterations)

