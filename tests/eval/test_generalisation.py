"""Caps on the stacked probe's block weights: measured without labels, cross-fitted, and worth it
where one encoder memorised its pretraining patients."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from phenoclip.eval.generalisation import block_shares, modality_shares
from phenoclip.eval.stacking import fit_stacked
from phenoclip.finetune.stack_caps import StackCaps, crossfit_scores


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _memorising_cohort(seed: int, n_train: int = 150, n_unseen: int = 60, dim: int = 16):
    """Embeddings of three modalities as a contrastive model leaves them: ``expr`` and ``mri`` read a
    shared patient state (disease plus patient-specific variation) through their own noise;
    ``gene`` matches its training patients' expression almost exactly (memorised) and gives new
    patients an embedding unrelated to their state."""
    rng = np.random.default_rng(seed)
    n = n_train + n_unseen
    y = rng.integers(0, 3, size=n)
    state = rng.normal(size=(n, dim))
    state[:, :3] += 1.5 * np.eye(3)[y]
    expr = _unit(state + 0.5 * rng.normal(size=(n, dim)))
    mri = _unit(state + 1.5 * rng.normal(size=(n, dim)))
    gene = np.concatenate([expr[:n_train] + 0.05 * rng.normal(size=(n_train, dim)),
                           rng.normal(size=(n_unseen, dim))])
    emb = {"gene": _unit(gene), "expr": expr, "mri": mri}
    present = np.ones(n, bool)
    train = {m: (e[:n_train], present[:n_train]) for m, e in emb.items()}
    unseen = {m: (e[n_train:], present[n_train:]) for m, e in emb.items()}
    return emb, train, unseen, y


def test_the_memorising_modality_gets_the_smallest_share():
    for seed in range(3):
        _, train, unseen, _ = _memorising_cohort(seed)
        measured = block_shares(train, unseen, seed)
        shares = measured["shares"]
        # the pairs with gene agree perfectly on training patients and not at all on new ones
        assert measured["pairs"]["gene-expr"]["train_MRR"] > 0.95 > 0.3 > measured["pairs"]["gene-expr"]["unseen_MRR"]
        assert max(shares.values()) == 1.0
        assert shares["gene"] < 0.2 < 0.5 < min(shares["expr"], shares["mri"]), shares


def test_a_pair_no_training_patient_has_is_left_out():
    _, train, unseen, _ = _memorising_cohort(0)
    train["mri"] = (train["mri"][0], np.zeros(len(train["mri"][1]), bool))  # no training patient has an MRI
    measured = block_shares(train, unseen, 0)
    assert set(measured["pairs"]) == {"gene-expr"}
    assert all(np.isfinite(v) for v in measured["shares"].values())


def test_shares_solve_the_pair_model_exactly_when_it_holds():
    g = {"a": 1.0, "b": 0.5, "c": 0.2}
    ratios = {f"{x}-{y}": {"ratio": g[x] * g[y]} for x, y in (("a", "b"), ("a", "c"), ("b", "c"))}
    assert np.allclose(list(modality_shares(ratios, ["a", "b", "c"]).values()), [1.0, 0.5, 0.2])
    # one pair cannot tell its two modalities apart: both keep 1; an unmeasured modality keeps 1
    assert np.allclose(list(modality_shares({"a-b": {"ratio": 0.3}}, ["a", "b", "c"]).values()), 1.0)


def test_capped_stack_respects_its_caps_and_beats_the_uncapped_one_on_new_patients():
    gains = []
    for seed in range(5):
        emb, train, unseen, y = _memorising_cohort(seed)
        n_train = len(train["expr"][0])
        shares = block_shares(train, unseen, seed)["shares"]
        caps = [shares[m] for m in ("gene", "expr", "mri")]
        x = np.concatenate([emb["gene"], emb["expr"], emb["mri"]], axis=1).astype(np.float64)
        labelled = np.arange(0, n_train, 5)  # 30 labelled pretraining patients (a 20 % label fraction)
        capped = fit_stacked(x[labelled], [16] * 3, y[labelled], 3, seed, caps=caps)
        assert np.all(np.asarray(capped.chosen["block_weights"]) <= np.asarray(caps) + 1e-9)
        free = fit_stacked(x[labelled], [16] * 3, y[labelled], 3, seed)
        assert free.chosen["weight_caps"] == [1.0, 1.0, 1.0]
        auc = [roc_auc_score(y[n_train:], f.predict(x[n_train:]), multi_class="ovr") for f in (capped, free)]
        gains.append(auc[0] - auc[1])
    assert np.mean(gains) > 0.02 and min(gains) > -0.01, gains


def test_crossfit_scores_never_read_a_patients_own_caps():
    stack = StackCaps(deploy=[1.0, 1.0], crossfit=[({"a1", "a2"}, [0.1, 1.0]), ({"b1"}, [0.2, 1.0])])
    calls = []

    def fit_and_score(caps):
        calls.append(caps[0])
        return np.full(4, caps[0])

    scores = crossfit_scores(stack, ["a1", "b1", "c1", "a2"], fit_and_score)
    # a1, a2 were in the half the first caps were measured without; c1 was never a validation patient
    assert scores.tolist() == [0.1, 0.2, 1.0, 0.1] and calls == [0.1, 0.2, 1.0]
