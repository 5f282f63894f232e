"""The likelihood ceiling of the genetics pairs, on planted cohorts whose answer is known."""

import json

import numpy as np
import pytest

from phenoclip_bench import genetics_ceiling as gc
from phenoclip_bench.genetics_likelihood import score_matrix_metrics


def _truth(tmp_path, n=160, snps=300, seed=0):
    """Dosages and a truth file. Traits 1-3: 5 SNPs each among the dosages (h2 0.9), shown by
    expression; trait 4: its SNPs absent from the dosages (h2 0.6), shown by MRI; HPO shows trait 1
    above 1 SD. The disease is independent of the genotype."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, (n, snps)).astype(float)
    genetic = np.column_stack([x[:, 5 * k:5 * k + 5] @ rng.choice([-1.0, 1.0], 5) for k in range(3)]
                              + [rng.standard_normal(n)])
    genetic = (genetic - genetic.mean(0)) / genetic.std(0)
    h2 = np.array([0.9, 0.9, 0.9, 0.6])
    traits = np.sqrt(h2) * genetic + np.sqrt(1 - h2) * rng.standard_normal((n, 4))
    diseases = ["control", "neuro", "cardio"]
    ids = [f"p{i:03d}" for i in range(n)]
    patients = [{"sample": s, "traits": traits[i].tolist(), "trait_genetic_values": genetic[i].tolist(),
                 "disease": diseases[rng.integers(3)], "disease_probs": [1 / 3] * 3} for i, s in enumerate(ids)]
    drives = [{"trait": k, "modality": "expression"} for k in (1, 2, 3)] + [{"trait": 4, "modality": "mri"}]
    truth = {"traits": {"names": ["a", "b", "c", "d"], "drives": drives,
                        "hpo_terms": [{"trait": 1, "direction": ">", "threshold": 1.0}]},
             "disease_model": {"realised_counts": {d: 0 for d in diseases}}, "patients": patients}
    (tmp_path / "truth.json").write_text(json.dumps(truth))
    return ids, x, truth


def test_partner_channels_follow_the_truth_files_drives(tmp_path):
    _, _, truth = _truth(tmp_path)
    ch = gc.partner_channels(truth)
    assert ch == {"expr": {"traits": [0, 1, 2], "terms": []}, "mri": {"traits": [3], "terms": []},
                  "hpo": {"traits": [], "terms": [(0, ">", 1.0)]}}


def test_score_matrix_metrics_perfect_and_uninformative():
    perfect = score_matrix_metrics(np.eye(20))
    assert perfect["R@1"] == 1.0 and perfect["x chance@1"] == pytest.approx(20.0)
    # every record scored alike: ties broken at random give exactly chance, never a lucky first place
    flat = score_matrix_metrics(np.zeros((20, 20)))
    assert flat["x chance@1"] == pytest.approx(1.0)


def test_ceiling_is_high_where_the_genotype_sets_the_partner_and_near_chance_where_it_does_not(tmp_path):
    ids, x, truth = _truth(tmp_path)
    partners = {"expr": ids, "mri": ids[:150], "hpo": ids}
    rng = np.random.default_rng(1)
    traits = np.array([p["traits"] for p in truth["patients"]])
    # the expression data carries traits a-c with some noise; the MRI data nothing at all
    feats = {"expr": (ids, traits[:, :3] @ rng.standard_normal((3, 8)) + 0.2 * rng.standard_normal((160, 8))),
             "mri": (ids[:150], rng.standard_normal((150, 8)))}
    out = gc.retrieval_ceiling(tmp_path / "truth.json", (ids, x), partners, ids[:120], ids[120:], n_splits=2,
                               partner_feats=feats)
    assert set(out) == {"gene-expr", "gene-mri", "gene-hpo"}
    assert out["gene-expr"]["n"] == 40 and out["gene-mri"]["n"] == 30  # only patients having the partner
    # three traits read from their SNPs, shown without noise: far above chance from the dosages too
    assert out["gene-expr"]["observed"]["x chance@1"] > 8
    assert out["gene-expr"]["planted"]["x chance@1"] > 8
    # trait d's SNPs are not among the dosages: nothing to read from them, but its genetic value says some
    assert out["gene-mri"]["observed"]["x chance@1"] < 2.5
    assert out["gene-mri"]["planted_resplit"]["mean"] > out["gene-mri"]["observed_resplit"]["mean"]
    assert out["gene-mri"]["observed_resplit"]["splits"] == 2
    # read back from the partner's own data: high where the data carries the traits, chance where it does not
    assert out["gene-expr"]["decoded"]["x chance@1"] > 6
    assert out["gene-mri"]["decoded"]["x chance@1"] < 3
    assert "decoded" not in out["gene-hpo"]  # no features given for hpo
    # a single binary term (about 1 patient in 6) says far less than the trait values
    assert out["gene-hpo"]["observed"]["x chance@1"] < out["gene-expr"]["observed"]["x chance@1"]

    ours = {p: {"x chance@1": 1.0} for p in out}
    table = gc.ceiling_table(out, ours, 5.0)
    assert [r[0] for r in table.rows] == ["gene-expr", "gene-mri", "gene-hpo"]
    assert "gene-mri (" in table.note and "gene-expr (" not in table.note


def test_no_traits_no_ceiling(tmp_path):
    ids = [f"p{i}" for i in range(40)]
    (tmp_path / "truth.json").write_text(json.dumps({"patients": [{"sample": s} for s in ids]}))
    assert gc.retrieval_ceiling(tmp_path / "truth.json", (ids, np.zeros((40, 5))), {"expr": ids},
                                ids[:30], ids[30:]) == {}


def test_disease_model_copes_with_a_missing_class_and_a_singleton():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 4))
    y = np.array([0] * 15 + [2] * 14 + [1])  # class 1 seen once; with it absent, classes 0 and 2 only
    prob = gc._disease_probs(x, y, list(range(30)), 3, 0)
    assert prob.shape == (30, 3) and np.allclose(prob.sum(1), 1.0)
    prob = gc._disease_probs(x, y, list(range(29)), 3, 0)
    assert np.all(prob[:, 1] == 0.0) and np.allclose(prob.sum(1), 1.0)
