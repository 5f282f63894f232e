"""Fast checks of the retrieve-quality and ablation suites' metric code, on small planted arrays."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from phenoclip_bench import ablation, retrieve_quality
from phenoclip_bench.ontology_distance import (binned, graph_distances, plot_distance, spearman, term_pairs)
from phenoclip_bench.retrieval_eval import (cca_pair_metrics, chance_levels, concat_embeddings, cross_modal_metrics,
                                            mean_over, own_term_ranking, paired_metrics, reduce_features)
from phenoclip.eval.retrieval import paired_retrieval
from phenoclip.io.ontology import Ontology


def _ids(n, prefix="p"):
    return [f"{prefix}{i:03d}" for i in range(n)]


def test_chance_levels_match_a_uniform_random_rank():
    n = 37
    ranks = np.arange(1, n + 1)  # every rank equally likely
    c = chance_levels(n)
    assert c["R@1"] == pytest.approx(1 / n)
    assert c["R@10"] == pytest.approx(10 / n)
    assert c["MRR"] == pytest.approx(np.mean(1.0 / ranks))
    assert chance_levels(4)["R@5"] == 1.0  # K beyond the gallery: every item is found


def test_paired_metrics_aligns_patients_by_id_and_drops_the_unpaired():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((10, 8)).astype(np.float32)
    ids = _ids(10)
    # b holds the same patients in reverse order, minus the first: alignment must go by ID, not by row
    b = (ids[1:][::-1], emb[1:][::-1].copy())
    m = paired_metrics((ids, emb), b)
    assert m["n"] == 9
    assert m["R@1"] == 1.0 and m["MRR"] == 1.0
    assert m["chance R@1"] == pytest.approx(1 / 9) and m["x chance@1"] == pytest.approx(9.0)
    # unrelated embeddings: the same numbers as the library's paired_retrieval on the aligned rows
    other = rng.standard_normal((10, 8)).astype(np.float32)
    m2 = paired_metrics((ids, emb), (ids, other))
    ref = paired_retrieval(torch.nn.functional.normalize(torch.from_numpy(emb), dim=1),
                           torch.nn.functional.normalize(torch.from_numpy(other), dim=1))
    for k in ("R@1", "R@5", "R@10", "MRR"):
        assert m2[k] == pytest.approx(ref[k])
    assert paired_metrics((ids[:1], emb[:1]), (ids[:1], other[:1])) is None


def test_cross_modal_metrics_covers_every_pair_and_means_over_chosen_pairs():
    rng = np.random.default_rng(1)
    ids = _ids(12)
    shared = rng.standard_normal((12, 6)).astype(np.float32)
    embedded = {"a": (ids, shared), "b": (ids, shared + 0.01), "c": (ids, rng.standard_normal((12, 6)).astype(np.float32))}
    out = cross_modal_metrics(embedded)
    assert list(out) == ["a-b", "a-c", "b-c"]
    assert out["a-b"]["R@1"] == 1.0
    assert mean_over(out, "R@1", ["a-b"]) == 1.0
    assert mean_over(out, "R@1") == pytest.approx(np.mean([out[p]["R@1"] for p in out]))


def _planted_pair(n, latent=4, da=300, db=120, noise=0.3, seed=0, linked=True):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, latent))
    zb = z if linked else rng.standard_normal((n, latent))
    xa = z @ rng.standard_normal((latent, da)) + noise * rng.standard_normal((n, da))
    xb = zb @ rng.standard_normal((latent, db)) + noise * rng.standard_normal((n, db))
    ids = _ids(n)
    return (ids, xa), (ids, xb), ids[:150], ids[150:]


def test_cca_ceiling_finds_a_planted_shared_factor_and_not_an_absent_one():
    a, b, train, test = _planted_pair(200)
    ra, rb = reduce_features(a, train, 16), reduce_features(b, train, 16)
    m = cca_pair_metrics(ra, rb, train, test, n_cca=4)
    assert m["n"] == 50
    assert m["R@1"] > 10 * m["chance R@1"]  # 4 shared dimensions pin the partner down
    a, b, train, test = _planted_pair(200, linked=False, seed=1)
    m0 = cca_pair_metrics(reduce_features(a, train, 16), reduce_features(b, train, 16), train, test, n_cca=4)
    assert m0["MRR"] < 2.5 * m0["chance MRR"]


def test_reduce_features_is_fitted_on_training_patients_only():
    a, _, train, test = _planted_pair(200)
    ids, x = a
    x2 = x.copy()
    x2[150:] *= 1000.0  # wild held-out values must not move the fitted projection
    r1, r2 = reduce_features((ids, x), train, 8)[1], reduce_features((ids, x2), train, 8)[1]
    np.testing.assert_allclose(r1[:150], r2[:150], rtol=1e-6, atol=1e-8)


def test_pca_cca_reads_a_recordings_spectra_the_stronger_reference_on_the_sample(sample_stores):
    """Every classic baseline reads a recording as its amplitude spectra (``classic_features``); on the
    sample cohort's expression-signal pairs PCA + CCA retrieves better from them than from the
    time-domain samples, which start at an arbitrary beat (measured 0.16-0.27 against 0.08-0.12 held-out
    MRR on three re-splits of the 155 patients having both)."""
    from phenoclip.data.multimodal import CohortStores
    from phenoclip.eval.raw_features import amplitude_spectra, classic_features, raw_features

    stores = CohortStores([str(sample_stores[m]) for m in ("expr", "signal")])
    ms = stores.by_modality
    both = [s for s in stores.samples if s in ms["expr"].row and s in ms["signal"].row]
    assert len(both) == 155
    ids, spectra = classic_features(stores, "signal", both)
    np.testing.assert_array_equal(spectra, amplitude_spectra(stores, both)[1])
    np.testing.assert_array_equal(classic_features(stores, "expr", both)[1], raw_features(stores, "expr", both)[1])
    gains = []
    for seed in range(3):
        perm = np.random.default_rng(seed).permutation(len(both))
        test, train = [both[i] for i in perm[:40]], [both[i] for i in perm[40:]]
        expr = reduce_features(raw_features(stores, "expr", train + test), train)
        mrr = [cca_pair_metrics(expr, reduce_features(feats(stores, "signal", train + test), train), train, test)["MRR"]
               for feats in (classic_features, raw_features)]
        gains.append(mrr[0] - mrr[1])
    assert min(gains) > 0.02 and np.mean(gains) > 0.05, gains


def _fake_term_model(term_vectors):
    lookup = torch.arange(term_vectors.shape[0])
    enc = SimpleNamespace(lookup=lookup, vocab_terms=lookup)
    return SimpleNamespace(encoders={"hpo": enc}, encode_terms=lambda: torch.from_numpy(term_vectors))


def test_own_term_ranking_rewards_embeddings_near_the_patients_terms():
    rng = np.random.default_rng(2)
    vocab = rng.standard_normal((30, 16)).astype(np.float32)
    vocab /= np.linalg.norm(vocab, axis=1, keepdims=True)
    ids = _ids(20)
    own = [rng.choice(30, 3, replace=False) for _ in ids]
    stores = SimpleNamespace(by_modality={"hpo": SimpleNamespace(
        row={s: i for i, s in enumerate(ids)}, meta={"phenotypes": SimpleNamespace(terms=own)})})
    good = np.stack([vocab[t].mean(0) for t in own]).astype(np.float32)
    bad = rng.standard_normal((20, 16)).astype(np.float32)
    out = own_term_ranking(_fake_term_model(vocab), {"good": (ids, good), "bad": (ids, bad)}, stores)
    assert out["good"]["AUROC"] > 0.95 and out["good"]["R@10"] > 0.9
    assert abs(out["bad"]["AUROC"] - 0.5) < 0.15
    assert out["good"]["chance R@10"] == pytest.approx(10 / 30)


def test_concat_embeddings_zero_fills_absent_modalities():
    out = concat_embeddings({"a": (["x", "y"], np.ones((2, 2), np.float32)),
                             "b": (["y"], np.full((1, 3), 2, np.float32))}, ["x", "y", "z"])
    assert out.shape == (3, 5)
    np.testing.assert_array_equal(out[0], [1, 1, 0, 0, 0])
    np.testing.assert_array_equal(out[1], [1, 1, 2, 2, 2])
    assert not out[2].any()


def _chain_ontology():
    """root(0) <- a(1) <- b(2) <- c(3); root <- d(4)."""
    parents = [[], [0], [1], [2], [0]]
    indptr = np.cumsum([0] + [len(p) for p in parents])
    return Ontology.from_arrays([f"HP:{i}" for i in range(5)], [f"t{i}" for i in range(5)], indptr,
                                np.array([p for ps in parents for p in ps]))


def test_graph_distances_and_spearman_on_a_known_tree(tmp_path):
    onto = _chain_ontology()
    vocab = np.array([1, 2, 3, 4])  # a, b, c, d
    i, j = term_pairs(len(vocab))
    g = graph_distances(onto, vocab, i, j)
    expected = {(0, 1): 1, (0, 2): 2, (0, 3): 2, (1, 2): 1, (1, 3): 3, (2, 3): 4}
    assert {(int(a), int(b)): int(d) for a, b, d in zip(i, j, g)} == expected
    assert spearman(g, g * 0.1 + 1) == pytest.approx(1.0)
    assert binned(g, g.astype(float))[2] == (2.0, 2.0, 2.0, 2)
    rhos = plot_distance({"aligned": (g, g * 0.1), "reversed": (g, -g * 0.1 + 1.0)}, tmp_path / "f6.png")
    assert rhos["aligned"] == pytest.approx(1.0) and rhos["reversed"] == pytest.approx(-1.0)
    assert (tmp_path / "f6.png").stat().st_size > 1000
    i2, _ = term_pairs(100, max_pairs=50)
    assert len(i2) == 50


def test_ablation_variants_drop_one_modality_each_and_the_ontology_loss():
    v = ablation.variants(["gene", "expr", "mri", "signal", "hpo"], ["clip", "ontology"])
    names = [n for n, _, _ in v]
    assert names == ["full", "- gene", "- expr", "- mri", "- signal", "- hpo", "no ontology loss"]
    by = {n: (m, o) for n, m, o in v}
    assert by["- mri"] == (["gene", "expr", "signal", "hpo"], ["clip", "ontology"])
    assert by["- hpo"] == (["gene", "expr", "mri", "signal"], ["clip"])  # no phenotype data, no ontology loss
    assert by["no ontology loss"] == (["gene", "expr", "mri", "signal", "hpo"], ["clip"])


def test_retrieval_table_says_where_ours_is_below_cca():
    def m(r1, mrr):
        return {"n": 30, "R@1": r1, "R@5": r1, "R@10": r1, "MRR": mrr, "chance R@1": 1 / 30, "x chance@1": r1 * 30}

    ours = {"a-b": m(0.2, 0.3), "a-c": m(0.05, 0.1)}
    table = retrieve_quality._retrieval_table(ours, {"a-b": m(0.03, 0.12), "a-c": m(0.05, 0.2)},
                                              {"a-b": m(0.1, 0.2), "a-c": m(0.3, 0.4)}, 160, 60)
    assert len(table.rows) == 3 and len(table.rows[0]) == len(table.columns)
    assert table.rows[-1][2] == pytest.approx(0.125)  # mean R@1
    assert "Below the CCA ceiling on R@1: a-c" in table.note
    assert "Not better than random initialisation on MRR: a-c" in table.note


def _truth_file(path, n, rng):
    """A truth.json with n patients: 6 causal dosages, 4 trait genetic values, sex."""
    import json

    patients = [{"sample": s, "causal_dosage": rng.integers(0, 3, 6).tolist(),
                 "trait_genetic_values": rng.standard_normal(4).round(4).tolist(),
                 "sex": "male" if rng.random() < 0.5 else "female"} for s in _ids(n)]
    patients.append({"sample": "no_genotype"})  # patients without variants carry no causal dosages
    path.write_text(json.dumps({"patients": patients}))
    return patients


def test_planted_genetics_reads_every_genetic_path_of_the_simulator(tmp_path):
    from phenoclip_bench.retrieval_eval import planted_genetics

    patients = _truth_file(tmp_path / "truth.json", 5, np.random.default_rng(0))
    ids, x = planted_genetics(tmp_path / "truth.json", ["p003", "p001", "no_genotype", "unknown"])
    assert ids == ["p001", "p003"] and x.shape == (2, 11)
    p = patients[3]
    assert x[1].tolist() == [*p["causal_dosage"], *p["trait_genetic_values"], float(p["sex"] == "male")]
    # a truth file without genotype truth gives nothing to bound with, and the suite skips the table
    ids, x = planted_genetics(tmp_path / "truth.json", ["no_genotype"])
    assert ids == [] and x.shape == (0, 0)
    assert retrieve_quality.planted_metrics(tmp_path / "truth.json", ["no_genotype"], {}, ["gene", "expr"],
                                            ["no_genotype"], []) == {}


def test_planted_ceiling_finds_what_the_genotype_drives_and_only_that(tmp_path):
    """Partner features driven by the planted values retrieve far above chance; unrelated ones do not."""
    rng = np.random.default_rng(1)
    n = 160
    patients = _truth_file(tmp_path / "truth.json", n, rng)
    ids = _ids(n)
    g = np.array([[*p["causal_dosage"], *p["trait_genetic_values"]] for p in patients[:n]], float)
    driven = g @ rng.standard_normal((10, 40)) + 0.3 * rng.standard_normal((n, 40))
    unrelated = rng.standard_normal((n, 40))
    train, test = ids[:120], ids[120:]
    feats = {"gene": (ids, np.zeros((n, 3))), "expr": reduce_features((ids, driven), train, 16),
             "mri": reduce_features((ids, unrelated), train, 16)}
    m = retrieve_quality.planted_metrics(tmp_path / "truth.json", ids, feats, ["gene", "expr", "mri"], train, test)
    assert set(m) == {"gene-expr", "gene-mri"} and m["gene-expr"]["n"] == 40
    assert m["gene-expr"]["x chance@1"] > 10
    assert m["gene-mri"]["x chance@1"] < 4
    # patients without a genotype are left out of the pair, as in the main table
    m = retrieve_quality.planted_metrics(tmp_path / "truth.json", ids[:150], feats, ["gene", "expr"], train, test)
    assert m["gene-expr"]["n"] == 30
    table = retrieve_quality._genetics_table({"gene-expr": m["gene-expr"]}, {}, m)
    assert table.rows[0][0] == "gene-expr" and "reach 5x chance Recall@1 on 1 of 1" in table.note
