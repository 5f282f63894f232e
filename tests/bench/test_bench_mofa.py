"""The MOFA+ baseline (:mod:`phenoclip_bench.mofa`) on planted low-rank data with missing views."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import roc_auc_score

from phenoclip_bench.mofa import fit_mofa
from phenoclip.eval.retrieval import metrics_from_rank_bounds, paired_retrieval, rank_bounds

N, N_TRAIN, K_TRUE, DIMS = 200, 150, 3, {"a": 40, "b": 60, "c": 300}
MAX_FEATURES = 80  # views "a" and "b" enter MOFA+ as they are, "c" (300 features) as 80 principal components


def _planted(seed: int = 0):
    """3 shared factors, 3 views in arbitrary units (offsets, scales), 10 % of patients missing each view."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(N, K_TRUE))
    views = {}
    for m, d in DIMS.items():
        x = z @ (0.7 * rng.normal(size=(K_TRUE, d))) + rng.normal(size=(N, d))
        x = 5.0 + rng.uniform(0.5, 3.0, size=d) * x  # features in their own units: standardising matters
        x[rng.random(N) < 0.1] = np.nan
        views[m] = x
    train = np.zeros(N, bool)
    train[rng.permutation(N)[:N_TRAIN]] = True
    label = (z[:, 0] + 0.3 * rng.normal(size=N) > 0).astype(int)  # planted on factor 1
    return z, views, train, label


def _has(views, *names):
    return np.all([np.isfinite(views[m]).any(axis=1) for m in names], axis=0)


def _unit(x: np.ndarray) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.from_numpy(x), dim=1)


def _recall_at_1(a: np.ndarray, b: np.ndarray) -> float:
    """Recall@1 of rows of ``a`` retrieving their own row of ``b`` (cosine; ties counted at random)."""
    qa, gb = _unit(a), _unit(b)
    return metrics_from_rank_bounds(*rank_bounds(qa, gb, torch.arange(len(qa))), ks=(1,))["R@1"]


@pytest.fixture(scope="module")
def planted():
    return _planted()


@pytest.fixture(scope="module")
def fitted(planted):
    _, views, train, _ = planted
    return fit_mofa(views, train, n_factors=10, seed=0, max_features=MAX_FEATURES)


def test_fit_holds_scaling_pca_weights_and_precisions(planted, fitted):
    _, views, train, _ = planted
    assert fitted.views == ["a", "b", "c"] and fitted.n_factors == 10
    assert {m: w.shape for m, w in fitted.weights.items()} == {"a": (40, 10), "b": (60, 10), "c": (MAX_FEATURES, 10)}
    assert fitted.scaling["a"].axes is None and fitted.scaling["b"].axes is None
    assert fitted.scaling["c"].axes.shape == (300, MAX_FEATURES)
    assert all(t.shape == (w.shape[0],) and np.all(t > 0) for t, w in zip(fitted.tau.values(), fitted.weights.values()))
    # fitted on the training patients having at least one view, and converged before max_iter
    np.testing.assert_array_equal(fitted.train_rows, np.flatnonzero(train & _has(views, "a") | train & _has(views, "b")
                                                                    | train & _has(views, "c")))
    assert fitted.train_factors.shape == (len(fitted.train_rows), 10)
    assert fitted.iterations < 1000  # measured: 116
    # standardisation = mean / SD of the training patients having the view
    rows = train & _has(views, "a")
    np.testing.assert_allclose(fitted.scaling["a"].mean, views["a"][rows].mean(axis=0))
    np.testing.assert_allclose(fitted.scaling["a"].sd, views["a"][rows].std(axis=0))
    # ARD switches off the factors the data do not need: 3 planted, 3 carry weight
    norms = np.sqrt(sum((w ** 2).sum(axis=0) for w in fitted.weights.values()))
    assert np.sum(norms > 0.1 * norms.max()) == K_TRUE


def test_factors_are_the_posterior_mean_formula(planted, fitted):
    _, views, _, _ = planted
    f = fitted.factors(views)
    # the formula by hand for one patient with views a and c only (b's row made missing)
    i = int(np.flatnonzero(_has(views, "a", "c"))[0])
    one = {m: x[i:i + 1].copy() for m, x in views.items()}
    one["b"][:] = np.nan
    precision, rhs = np.eye(10), np.zeros(10)
    for m in ("a", "c"):
        w, tau, y = fitted.weights[m], fitted.tau[m], fitted.scaling[m].apply(one[m])[0]
        precision += w.T @ (tau[:, None] * w)
        rhs += w.T @ (tau * y)
    np.testing.assert_allclose(fitted.factors(one)[0], np.linalg.solve(precision, rhs), rtol=1e-10, atol=1e-12)
    # on its training patients it reproduces MOFA+'s own factors up to W's posterior variance (in
    # MOFA+'s update, not in the fixed-W formula): measured max |difference| 0.025 for factors up
    # to 3.6 (0.7 %), correlation 0.999997 on each active factor
    z = fitted.train_factors
    assert np.abs(f[fitted.train_rows] - z).max() < 0.03 * np.abs(z).max()


def test_heldout_factors_recover_the_planted_ones(planted, fitted):
    z, views, train, _ = planted
    f = fitted.factors(views)[~train]
    r2 = [LinearRegression().fit(f, z[~train, j]).score(f, z[~train, j]) for j in range(K_TRUE)]
    assert min(r2) > 0.8, r2  # measured: R2 0.991, 0.994, 0.992 on the 50 held-out patients


def test_cross_view_retrieval_of_heldout_patients(planted, fitted):
    _, views, train, _ = planted
    both = ~train & _has(views, "a", "b")
    fa = fitted.view_factors("a", views["a"])[both]
    fb = fitted.view_factors("b", views["b"])[both]
    chance = 1.0 / both.sum()
    r1 = _recall_at_1(fa, fb)
    assert r1 > 5 * chance, (r1, chance)  # measured: 0.561 on 41 patients (chance 0.024: 23x)
    assert paired_retrieval(_unit(fa), _unit(fb))["R@1"] > 5 * chance  # both directions averaged

    # the same with view b's rows shuffled across patients (fit included): no shared factor is left
    shuffled = dict(views, b=views["b"][np.random.default_rng(100).permutation(N)])
    fit = fit_mofa(shuffled, train, n_factors=10, seed=0, max_features=MAX_FEATURES)
    both = ~train & _has(shuffled, "a", "b")
    fa, fb = fit.view_factors("a", shuffled["a"])[both], fit.view_factors("b", shuffled["b"])[both]
    r1 = paired_retrieval(_unit(fa), _unit(fb))["R@1"]  # both directions averaged: steadier near chance
    # measured: 0.012 on 41 patients (chance 0.024); over 8 planted cohorts at most 2x chance
    assert r1 < 3.0 / both.sum(), r1


def test_probe_on_heldout_factors_predicts_the_planted_label(planted, fitted):
    _, views, train, label = planted
    f = fitted.factors(views)
    probe = LogisticRegression(max_iter=1000).fit(f[train], label[train])
    auroc = roc_auc_score(label[~train], probe.decision_function(f[~train]))
    assert auroc > 0.9, auroc  # measured: 0.955 (label noise caps it below 1)


def test_patients_without_views_get_zeros(planted, fitted):
    _, views, _, _ = planted
    v = {m: x[:5].copy() for m, x in views.items()}
    for x in v.values():
        x[2] = np.nan
    f = fitted.factors(v)
    np.testing.assert_array_equal(f[2], np.zeros(10))
    assert np.all(np.abs(f[[0, 1, 3, 4]]).sum(axis=1) > 0)
    # presence given explicitly: a row marked absent counts as missing whatever it holds
    full = {m: x[:5] for m, x in views.items()}
    marked = {m: np.arange(5) != 2 for m in full}
    np.testing.assert_allclose(fitted.factors(full, present_views=marked), f)
    # a collection of names selects views; one view alone is view_factors
    np.testing.assert_allclose(fitted.factors(full, present_views=["b"]), fitted.view_factors("b", full["b"]))
    np.testing.assert_allclose(fitted.view_factors("b", full["b"]), fitted.factors({"b": full["b"]}))
    with pytest.raises(ValueError, match="not in the fit"):
        fitted.factors({"d": full["a"]})
    with pytest.raises(ValueError, match="expected"):
        fitted.view_factors("a", full["b"])


def test_heldout_rows_do_not_change_the_fit_and_nothing_leaks_out(planted, fitted, tmp_path, monkeypatch, capfd):
    _, views, train, _ = planted
    changed = {m: x.copy() for m, x in views.items()}
    for x in changed.values():
        x[~train] = 1e6  # absurd held-out values: would wreck a mean / SD / PCA computed on them
    monkeypatch.chdir(tmp_path)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    fit = fit_mofa(changed, train, n_factors=10, seed=0, max_features=MAX_FEATURES)
    # silent, no file written, numpy's global random state (which mofapy2 reseeds) restored
    out = capfd.readouterr()
    assert out.out == "" and list(tmp_path.iterdir()) == []
    np.testing.assert_array_equal(np.random.get_state()[1], before)
    for m in views:
        a, b = fitted.scaling[m], fit.scaling[m]
        np.testing.assert_array_equal(a.mean, b.mean)
        np.testing.assert_array_equal(a.sd, b.sd)
        if a.axes is not None:
            np.testing.assert_allclose(a.axes, b.axes, atol=1e-12)
        np.testing.assert_allclose(fit.weights[m], fitted.weights[m], atol=1e-10)
        np.testing.assert_allclose(fit.tau[m], fitted.tau[m], rtol=1e-10)
    np.testing.assert_allclose(fit.train_factors, fitted.train_factors, atol=1e-10)


@pytest.mark.slow
def test_fit_time_200_patients_2200_features():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(200, 3))
    views = {"small": z @ rng.normal(size=(3, 200)) + rng.normal(size=(200, 200)),
             "large": z @ rng.normal(size=(3, 2000)) + rng.normal(size=(200, 2000))}
    start = time.perf_counter()
    fit = fit_mofa(views, np.ones(200, bool), n_factors=10, seed=0)
    seconds = time.perf_counter() - start
    # the 2000-feature view enters as 199 PCs (200 training patients span 199 centred directions).
    # measured: 3.1 to 8.8 s (256 MOFA+ updates) on a shared 2-core CPU (load ~5); the same without
    # PCA (max_features=5000, all 2000 features in MOFA+) took 39 to 58 s
    assert fit.weights["large"].shape == (199, 10) and fit.weights["small"].shape == (200, 10)
    assert seconds < 120, seconds
