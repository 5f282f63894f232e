"""The retrieve suite's split of a genetics pair's limit: genotype side (lasso) and partner side (ridge)."""

import json

import numpy as np
import pytest

from phenoclip_bench import genetics_limits as gl


def _ids(n):
    return [f"p{i:03d}" for i in range(n)]


def _cohort(tmp_path, n=200, snps=400, seed=0):
    """Dosages and a truth file: trait 1 has 5 SNPs (h2 0.6), trait 2 none of the given SNPs."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, (n, snps)).astype(float)
    genetic1 = x[:, :5] @ np.array([1.0, -1.0, 0.8, 1.2, -0.7])
    genetic1 = (genetic1 - genetic1.mean()) / genetic1.std()
    genetic2 = rng.standard_normal(n)  # its SNPs are not among the dosages given
    trait1 = np.sqrt(0.6) * genetic1 + np.sqrt(0.4) * rng.standard_normal(n)
    trait2 = np.sqrt(0.6) * genetic2 + np.sqrt(0.4) * rng.standard_normal(n)
    ids = _ids(n)
    patients = [{"sample": s, "traits": [trait1[i], trait2[i]], "trait_genetic_values": [genetic1[i], genetic2[i]]}
                for i, s in enumerate(ids)]
    patients.append({"sample": "no_traits"})
    (tmp_path / "truth.json").write_text(json.dumps({"traits": {"names": ["one", "two"]}, "patients": patients}))
    return ids, x, rng


def test_lasso_finds_a_traits_snps_and_reports_its_ceiling(tmp_path):
    ids, x, _ = _cohort(tmp_path)
    out = gl.trait_prediction(tmp_path / "truth.json", (ids, x), ids[:150], ids[150:])
    assert [t["trait"] for t in out] == ["one", "two"]
    one, two = out
    assert one["n_train"] == 150 and one["n_test"] == 50
    # trait one: 5 SNPs among 400 from 150 patients; the held-out r nears its ceiling sqrt(0.6) ~ 0.77
    assert one["r_ceiling"] == pytest.approx(np.sqrt(0.6), abs=0.15)
    assert one["r_lasso"] > 0.6 and one["r_lasso"] <= one["r_ceiling"] + 0.05
    assert 5 <= one["snps_kept"] < 100
    # trait two's SNPs are absent: nothing to find, whatever its own ceiling
    assert one["r_ceiling"] > 0.6 and two["r_ceiling"] > 0.6
    assert np.isnan(two["r_lasso"]) or abs(two["r_lasso"]) < 0.35


def test_truth_without_traits_gives_no_trait_rows(tmp_path):
    ids = _ids(40)
    (tmp_path / "truth.json").write_text(json.dumps({"patients": [{"sample": s} for s in ids]}))
    assert gl.trait_prediction(tmp_path / "truth.json", (ids, np.zeros((40, 5))), ids[:30], ids[30:]) == []


def test_ridge_onto_partner_embeddings_retrieves_what_the_genotype_sets_and_only_that(tmp_path):
    ids, x, rng = _cohort(tmp_path)
    xc = x - x.mean(0)
    driven = xc[:, :20] @ rng.standard_normal((20, 16)) + 0.5 * rng.standard_normal((200, 16))
    unrelated = rng.standard_normal((200, 16))
    partners = {"expr": (ids, driven.astype(np.float32)), "mri": (ids[:180], unrelated[:180].astype(np.float32))}
    out = gl.distilled_gene_metrics((ids, x), partners, ids[:150], ids[150:])
    assert set(out) == {"gene-expr", "gene-mri"}
    assert out["gene-expr"]["n"] == 50 and out["gene-mri"]["n"] == 30  # only patients having the partner
    assert out["gene-expr"]["x chance@1"] > 10
    assert out["gene-mri"]["x chance@1"] < 4
    tables = gl.limits_tables(gl.trait_prediction(tmp_path / "truth.json", (ids, x), ids[:150], ids[150:]), out,
                              {"gene-expr": {**out["gene-expr"], "MRR": out["gene-expr"]["MRR"] - 0.2},
                               "gene-mri": out["gene-mri"]})
    assert [len(t.rows) for t in tables] == [2, 2]
    # our gene encoder 0.2 MRR below the ridge on gene-expr: that pair is not explained by the partner side
    assert "On 1 of 2 pairs" in tables[1].note


def test_effective_rank_counts_the_directions_embeddings_use():
    rng = np.random.default_rng(0)
    one_direction = np.outer(rng.standard_normal(300), rng.standard_normal(16)) + 1e-3 * rng.standard_normal((300, 16))
    assert gl.effective_rank(one_direction) < 1.2
    isotropic = rng.standard_normal((2000, 8))
    assert 7.5 < gl.effective_rank(isotropic) <= 8.0


def test_trait_decoding_names_a_trait_the_embedding_drops(tmp_path):
    ids, _, rng = _cohort(tmp_path)
    truth = json.loads((tmp_path / "truth.json").read_text())
    y = np.array([p["traits"] for p in truth["patients"] if "traits" in p])
    # our embedding keeps trait one only; the raw features carry both
    ours = {"mri": (ids, np.c_[y[:, :1], np.zeros((200, 3))] @ rng.standard_normal((4, 8))
                    + 0.3 * rng.standard_normal((200, 8)))}
    raw = {"mri": (ids, y @ rng.standard_normal((2, 12)) + 0.3 * rng.standard_normal((200, 12)))}
    out = gl.trait_decoding(tmp_path / "truth.json", ours, raw, ids[:150], ids[150:])
    d = out["mri"]
    assert d["n_test"] == 50 and d["ours"]["one"] > 0.9 and abs(d["ours"]["two"]) < 0.3
    assert d["raw"]["one"] > 0.9 and d["raw"]["two"] > 0.9
    assert d["effective_rank"] < 4  # one strong direction plus noise in 8 dimensions
    table = gl.decoding_table(out, 8)
    assert table.rows[0][:2] == ["mri", 50] and table.rows[0][3].endswith(f"/ {d['raw']['one']:.2f}")
    assert "our embeddings drop (r < 0.3): mri two" in table.note and "mri one" not in table.note
