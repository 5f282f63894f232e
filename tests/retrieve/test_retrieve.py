"""phenoclip retrieve: hits and metrics against recomputation, outputs, zero-shot HPO, map, bad input,
and the retrieve benchmark's methods agreeing on tiny galleries."""

import json
import os
import subprocess
from unittest import mock

import numpy as np
import pytest
import torch

from conftest import REPO, error_lines, needs, run_cli
from phenoclip.errors import InconsistentInputError
from phenoclip.eval import retrieval, topk
from phenoclip.eval.topk import topk_chunked
from phenoclip.retrieve.metrics import retrieval_metrics
from phenoclip.retrieve.run import run_retrieve
from phenoclip.store_read import open_store

LABELS = REPO / "data" / "sample" / "labels.tsv"
K = 10


@pytest.fixture(scope="module")
def ckpt(sample_stores, tmp_path_factory):
    """A tiny gene + expr + hpo checkpoint (MLP encoders, 3 epochs: seconds on 2 cores)."""
    from phenoclip.pretrain.settings import PretrainSettings
    from phenoclip.pretrain.run import run_pretrain

    out = tmp_path_factory.mktemp("retrieve_ckpt") / "pre"
    cfg = PretrainSettings(modalities=["gene", "expr", "hpo"],
                         data=[str(sample_stores[m]) for m in ("gene", "expr", "pheno")], objectives=["clip"],
                         architectures={"gene": "mlp", "expr": "mlp"}, epochs=3, batch_size=32, seed=0)
    run_pretrain(cfg, out, log=lambda s: None)
    return out


@pytest.fixture(scope="module")
def full_run(ckpt, sample_stores, tmp_path_factory):
    """One CLI run gene -> expr with every optional output; tests below read its files."""
    d = tmp_path_factory.mktemp("retrieve_run")
    proc = run_cli("retrieve", "--checkpoint", ckpt, "--query", sample_stores["gene"],
                   "--gallery", sample_stores["expr"],
                   "--out", d / "hits.tsv", "--k", K, "--embeddings-out", d / "emb.h5", "--pheno-out", d / "emb.pheno",
                   "--map", d / "map.png", "--labels", f"{LABELS}:disease", "--data", sample_stores["pheno"])
    assert proc.returncode == 0, proc.stderr
    return {"dir": d, "stderr": proc.stderr}


def cli_in_process(capsys, *args) -> tuple[int, list[str]]:
    """``phenoclip ARGS`` through the real entry point in this process (no 5 s of imports per call):
    (exit code, non-empty stderr lines)."""
    from phenoclip.cli.main import main

    capsys.readouterr()
    env = {k: v for k, v in os.environ.items() if k != "PHENOCLIP_DEBUG"}  # one-line errors, not tracebacks
    with mock.patch.dict(os.environ, env, clear=True), pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    return exc.value.code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def read_hits(path):
    lines = path.read_text().splitlines()
    return lines[0].split("\t"), [line.split("\t") for line in lines[1:]]


def ranks_by_hand(q, g, target):
    """Per query the places its true item may hold: 1 + items scoring above it, up to that plus the
    items tied with it (float64, same rounding allowance as the tool; ties broken at random)."""
    s = q.astype(np.float64) @ g.astype(np.float64).T
    true = s[np.arange(len(q)), target][:, None]
    band = 1e-5 * np.maximum(np.abs(true), 1)
    higher = (s > true + band).sum(axis=1)
    tied = (s >= true - band).sum(axis=1) - higher
    return [np.arange(h + 1, h + max(t, 1) + 1) for h, t in zip(higher, tied)]


def metrics_by_hand(places, gallery_size):
    """Each query's metric averaged over its equally likely places, then over queries."""
    def mean(f):
        return float(np.mean([np.mean(f(p)) for p in places]))
    return {"R@1": mean(lambda p: p <= 1), "R@5": mean(lambda p: p <= 5), "R@10": mean(lambda p: p <= 10),
            "MRR": mean(lambda p: 1 / p), "n_queries": len(places), "gallery_size": gallery_size,
            "chance@1": 1 / gallery_size}


# ---------------------------------------------------------------- metrics and top-k, by hand


def test_recall_and_mrr_hand_computed():
    # queries a, b, c, d; gallery holds b, a, x (c is not in the gallery; d is not a query's patient)
    q = np.array([[1, 0], [0, 1], [1, 0], [0.6, 0.8]], dtype=np.float32)
    g = np.array([[0.8, 0.6], [0, 1], [1, 0]], dtype=np.float32)
    m = retrieval_metrics(["a", "b", "c", "z"], q, ["b", "a", "x"], g)
    # a -> item 1 (score 0; others 0.8, 1): rank 3;  b -> item 0 (0.6; others 1, 0): rank 2
    assert m["n_queries"] == 2 and m["gallery_size"] == 3 and m["chance@1"] == 1 / 3
    assert m["R@1"] == 0.0 and m["R@5"] == 1.0 and m["R@10"] == 1.0
    assert m["MRR"] == pytest.approx((1 / 3 + 1 / 2) / 2, abs=1e-12)
    assert retrieval_metrics(["c"], q[:1], ["b", "a"], g[:2]) is None


def test_topk_chunked_equals_its_full_matrix_twin_with_ties(monkeypatch):
    # quarter-integer vectors: every dot product is exact in float32 whatever the kernel's summation
    # order, so equal scores are true ties (random floats can differ in the last bit between blocks)
    gen = torch.Generator().manual_seed(0)
    base = torch.randint(-4, 5, (60, 8), generator=gen).float() / 4
    g = torch.cat([base, base, base])                      # every item three times: i, i + 60, i + 120
    q = torch.randint(-4, 5, (7, 8), generator=gen).float() / 4
    ref_s, ref_i = topk.topk_full(q, g, 9)
    for srow, irow in zip(ref_s.tolist(), ref_i.tolist()):  # equal scores in index order
        assert all(a > b or (a == b and i < j) for a, b, i, j in zip(srow, srow[1:], irow, irow[1:]))
    # few queries: workers split the gallery (ranges cut through the tied triples), then merge
    for threads in (1, 2, 3):
        for chunk in (None, 16, 9):
            s, i = topk_chunked(q, g, 9, chunk=chunk, threads=threads)
            assert torch.equal(i, ref_i) and torch.equal(s, ref_s), (threads, chunk)
    # many queries: workers take query blocks
    monkeypatch.setattr(topk, "_QUERY_BLOCK", 3)
    monkeypatch.setattr(topk, "_MIN_QUERIES_PER_WORKER", 2)
    qq = torch.cat([q, base[:13]])
    ref_s, ref_i = topk.topk_full(qq, g, 9)
    s, i = topk_chunked(qq, g, 9, chunk=16, threads=2)
    assert torch.equal(i, ref_i) and torch.equal(s, ref_s)
    # random vectors, no ties: the same items as the full matrix
    rq, rg = torch.randn(5, 16, generator=gen), torch.randn(3000, 16, generator=gen)
    for threads in (1, 2):
        s, i = topk_chunked(rq, rg, 10, chunk=256, threads=threads)
        assert torch.equal(i, topk.topk_full(rq, rg, 10)[1])


# ---------------------------------------------------------------- the library on real stores


def test_same_store_as_query_and_gallery_gives_recall_1(ckpt, sample_stores, tmp_path):
    out = tmp_path / "self.tsv"
    result = run_retrieve(ckpt, sample_stores["gene"], sample_stores["gene"], out, k=5,
                          embeddings_out=tmp_path / "emb.h5")
    m = result["metrics"]
    with open_store(sample_stores["gene"]) as st:
        n = len(st.samples)
    with open_store(tmp_path / "emb.h5") as st:  # one modality on both sides: named query and gallery
        assert {"query", "gallery"} <= set(st.h5["embeddings"]) and st["embeddings/query"].shape[0] == n
        np.testing.assert_array_equal(st["embeddings/query"][...], st["embeddings/gallery"][...])
    assert m["all"]["R@1"] == 1.0 and m["all"]["MRR"] == 1.0 and m["all"]["n_queries"] == n
    assert m["held_out"]["R@1"] == 1.0 and m["held_out"]["n_queries"] >= 2
    _, rows = read_hits(out)
    top = [r for r in rows if r[1] == "1"]
    assert len(top) == n and all(r[0] == r[2] for r in top)
    assert all(abs(float(r[3]) - 1) < 1e-5 for r in top)
    assert json.loads((tmp_path / "self.metrics.json").read_text())["all"]["R@1"] == 1.0


def test_hits_to_stdout(ckpt, sample_stores, tmp_path, capsys):
    run_retrieve(ckpt, sample_stores["gene"], sample_stores["expr"], "-", k=3)
    lines = capsys.readouterr().out.splitlines()
    with open_store(sample_stores["gene"]) as st:
        assert lines[0] == "query\trank\thit\tscore" and len(lines) == 1 + 3 * len(st.samples)
    assert list(tmp_path.iterdir()) == []


def test_late_failure_leaves_no_output(ckpt, sample_stores, tmp_path):
    labels = tmp_path / "labels.tsv"
    labels.write_text("sample\tdisease\nNOBODY1\tneuro\nNOBODY2\tcardio\n")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InconsistentInputError, match="held-out"):  # the map fails after hits and embeddings
        run_retrieve(ckpt, sample_stores["gene"], sample_stores["expr"], out / "hits.tsv", k=3,
                     embeddings_out=out / "emb.h5", pheno_out=out / "emb.pheno", map_out=out / "map.png",
                     labels=str(labels))
    assert list(out.iterdir()) == []


# ---------------------------------------------------------------- the CLI run with every output


def test_hits_file_format_and_topk_match_embeddings(full_run, sample_stores):
    d = full_run["dir"]
    header, rows = read_hits(d / "hits.tsv")
    assert header == ["query", "rank", "hit", "score"]
    with open_store(sample_stores["gene"]) as st:
        queries = st.samples
    with open_store(d / "emb.h5") as st:
        samples = st.samples
        qe = st["embeddings/gene"][...]
        ge, gp = st["embeddings/expr"][...], st["present/expr"][...]
    gallery_ids = [s for s, p in zip(samples, gp) if p]
    assert len(rows) == K * len(queries)
    q_ids = [rows[i][0] for i in range(0, len(rows), K)]
    assert q_ids == queries
    pos = {s: i for i, s in enumerate(samples)}
    sims = qe[[pos[s] for s in queries]].astype(np.float64) @ ge[gp].astype(np.float64).T
    for qi, start in enumerate(range(0, len(rows), K)):
        block = rows[start:start + K]
        assert [int(r[1]) for r in block] == list(range(1, K + 1))
        scores = [float(r[3]) for r in block]
        assert all(a >= b for a, b in zip(scores, scores[1:]))
        expect = np.sort(sims[qi])[::-1][:K]
        np.testing.assert_allclose(scores, expect, atol=2e-6, rtol=1e-5)
        hit_sims = sims[qi, [gallery_ids.index(r[2]) for r in block]]
        np.testing.assert_allclose(hit_sims, expect, atol=2e-6)
    assert "all patients: R@1" in full_run["stderr"] and "held-out patients: R@1" in full_run["stderr"]
    assert (d / "hits.log").exists()


def test_metrics_json_equals_recomputation(full_run, ckpt):
    d = full_run["dir"]
    metrics = json.loads((d / "hits.metrics.json").read_text())
    with open_store(d / "emb.h5") as st:
        samples = np.asarray(st.samples)
        qe, qp = st["embeddings/gene"][...], st["present/gene"][...]
        ge, gp = st["embeddings/expr"][...], st["present/expr"][...]
    g_ids = list(samples[gp])
    both = qp & gp
    target = np.asarray([g_ids.index(s) for s in samples[both]])
    expect = metrics_by_hand(ranks_by_hand(qe[both], ge[gp], target), int(gp.sum()))
    for key, value in expect.items():
        assert metrics["all"][key] == pytest.approx(value, abs=1e-12), key
    val = set(json.loads((ckpt / "state.json").read_text())["split"]["validation"])
    held = both & np.isin(samples, list(val))
    n = int(held.sum())
    expect = metrics_by_hand(ranks_by_hand(qe[held], ge[held], np.arange(n)), n)
    for key, value in expect.items():
        assert metrics["held_out"][key] == pytest.approx(value, abs=1e-12), key
    # the same figure through the library's paired retrieval (one direction of it)
    bounds = retrieval.rank_bounds(torch.from_numpy(qe[held]), torch.from_numpy(ge[held]), torch.arange(n))
    assert retrieval.metrics_from_rank_bounds(*bounds)["MRR"] == pytest.approx(metrics["held_out"]["MRR"], abs=1e-12)
    assert metrics["query_modality"] == "gene" and metrics["gallery_modality"] == "expr" and metrics["k"] == K


def test_embeddings_store(full_run, ckpt, sample_stores):
    with open_store(sample_stores["gene"]) as st:
        genes = st.samples
    with open_store(sample_stores["expr"]) as st:
        exprs = st.samples
    with open_store(full_run["dir"] / "emb.h5", expect="embeddings") as st:
        assert st.samples == list(dict.fromkeys(genes + exprs))
        e = int(st.attrs["embed_dim"])
        assert st.attrs["checkpoint"] == str(ckpt.resolve())
        for name, ids in (("gene", genes), ("expr", exprs)):
            emb, present = st[f"embeddings/{name}"][...], st[f"present/{name}"][...]
            assert emb.shape == (len(st.samples), e) and emb.dtype == np.float32
            assert present.dtype == bool and present.tolist() == [s in set(ids) for s in st.samples]
            np.testing.assert_allclose(np.linalg.norm(emb[present], axis=1), 1, atol=1e-5)
            assert not emb[~present].any()


def test_pheno_file(full_run, sample_stores, tmp_path):
    lines = (full_run["dir"] / "emb.pheno").read_text().splitlines()
    assert lines[0].split("\t") == ["#FID", "IID"] + [f"EMB_PC{i}" for i in range(1, 11)]
    with open_store(sample_stores["gene"]) as st:
        assert [line.split("\t")[0] for line in lines[1:]] == st.samples
    rows = [line.split("\t") for line in lines[1:]]
    assert all(r[0] == r[1] and len(r) == 12 for r in rows)
    pcs = np.asarray([[float(v) for v in r[2:]] for r in rows])
    assert np.abs(pcs.mean(axis=0)).max() < 1e-5          # centred principal components
    assert np.all(np.diff(pcs.var(axis=0)) <= 1e-9)        # in order of variance


@needs("plink2")
def test_plink2_reads_the_pheno_file(full_run, tmp_path):
    proc = subprocess.run(["plink2", "--vcf", str(REPO / "data" / "sample" / "variants.vcf.gz"), "--double-id",
                           "--vcf-half-call", "missing", "--pheno", str(full_run["dir"] / "emb.pheno"),
                           "--make-just-psam", "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "10 quantitative phenotypes loaded" in proc.stdout
    header = (tmp_path / "x.psam").read_text().splitlines()[0].split("\t")
    assert "EMB_PC1" in header and "EMB_PC10" in header


def test_map_png_and_silhouettes(full_run):
    d = full_run["dir"]
    png = (d / "map.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    m = json.loads((d / "hits.metrics.json").read_text())["map"]
    assert m["n_modalities"] == 3 and m["n_labels"] == 3 and m["method"] in ("tsne", "umap")
    assert -1 <= m["silhouette_label"] <= 1 and -1 <= m["silhouette_modality"] <= 1
    assert m["clusters_by"] in ("label", "modality")
    assert not [p.name for p in d.iterdir() if ".tmp-" in p.name]


# ---------------------------------------------------------------- zero-shot phenotypes


def test_zero_shot_hpo_terms_and_diseases(ckpt, sample_stores, tmp_path, capsys):
    from phenoclip.io.ontology import load_ontology

    out = tmp_path / "z.tsv"
    code, err = cli_in_process(capsys, "retrieve", "--checkpoint", ckpt, "--query", sample_stores["expr"],
                               "--gallery", "hpo", "--out", out, "--k", 5, "--diseases", "bundled")
    assert code == 0, err
    header, rows = read_hits(out)
    assert header == ["query", "rank", "hit", "score", "name"]
    onto = load_ontology()
    assert all(r[2].startswith("HP:") and r[4] == onto.name(r[2]) for r in rows)
    with open_store(sample_stores["expr"]) as st:
        assert len(rows) == 5 * len(st.samples)
    dheader, drows = read_hits(tmp_path / "z.diseases.tsv")
    assert dheader == ["query", "rank", "disease_id", "disease_name", "score", "n_terms"]
    assert len(drows) == 5 * len(st.samples)
    assert all(r[2].split(":")[0] in ("OMIM", "ORPHA", "DECIPHER") and r[3] and int(r[5]) >= 1 for r in drows)
    for start in range(0, len(drows), 5):
        scores = [float(r[4]) for r in drows[start:start + 5]]
        assert all(-1 <= s <= 1 for s in scores) and scores == sorted(scores, reverse=True)


def test_disease_embedding_is_mean_of_term_embeddings(tmp_path):
    from phenoclip.eval.zero_shot import TermGallery, disease_gallery
    from phenoclip.io.hpoa import read_hpoa
    from phenoclip.io.ontology import Ontology

    # HP:1 root; HP:2, HP:3 children of HP:1; HP:4 child of HP:3 (not in the vocabulary)
    onto = Ontology(["HP:1", "HP:2", "HP:3", "HP:4"], ["root", "a", "b", "c"], np.array([0, 0, 1, 2, 3]),
                    np.array([0, 0, 2]))
    emb = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)        # vocabulary HP:1, HP:2, HP:3
    terms = TermGallery(["HP:1", "HP:2", "HP:3"], ["root", "a", "b"], emb, onto, np.array([0, 1, 2, 2]))
    hpoa = tmp_path / "phenotype.hpoa"
    hpoa.write_text("#description: test\n#version: 2025-01-01\n"
                    "database_id\tdisease_name\tqualifier\thpo_id\treference\tevidence\tonset\tfrequency\tsex\t"
                    "modifier\taspect\tbiocuration\n"
                    "OMIM:1\tOne\t\tHP:2\tx\tTAS\t\t\t\t\tP\tb\n"
                    "OMIM:1\tOne\t\tHP:4\tx\tTAS\t\t\t\t\tP\tb\n"          # read as its ancestor HP:3
                    "OMIM:1\tOne\tNOT\tHP:1\tx\tTAS\t\t\t\t\tP\tb\n"       # negated: dropped
                    "OMIM:1\tOne\t\tHP:1\tx\tTAS\t\t\t\t\tI\tb\n"          # inheritance aspect: dropped
                    "OMIM:2\tTwo\t\tHP:9\tx\tTAS\t\t\t\t\tP\tb\n")         # unknown term only: skipped
    ann = read_hpoa(hpoa)
    assert ann.ids == ["OMIM:1", "OMIM:2"] and ann.terms[0] == ["HP:2", "HP:4"] and ann.version == "2025-01-01"
    dg = disease_gallery(terms, ann)
    assert dg.ids == ["OMIM:1"] and dg.n_terms.tolist() == [2]
    np.testing.assert_allclose(dg.embeddings[0], [0, 2 ** -0.5, 2 ** -0.5], atol=1e-7)


# ---------------------------------------------------------------- bad input


def test_k_larger_than_gallery_exit_2_no_outputs(ckpt, sample_stores, tmp_path):
    proc = run_cli("retrieve", "--checkpoint", ckpt, "--query", sample_stores["gene"],
                   "--gallery", sample_stores["expr"],
                   "--out", tmp_path / "hits.tsv", "--k", 100000, "--embeddings-out", tmp_path / "emb.h5")
    assert proc.returncode == 2, proc.stderr
    lines = error_lines(proc)
    assert len(lines) == 1 and "--k 100000" in lines[0] and "gallery" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_without_the_modality_exit_5(ckpt, sample_stores, tmp_path, capsys):
    code, lines = cli_in_process(capsys, "retrieve", "--checkpoint", ckpt, "--query", sample_stores["mri"],
                                 "--gallery", sample_stores["gene"], "--out", tmp_path / "hits.tsv")
    assert code == 5, lines
    assert len(lines) == 1 and "no 'mri' encoder" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_missing_query_store_exit_3(ckpt, sample_stores, tmp_path, capsys):
    code, lines = cli_in_process(capsys, "retrieve", "--checkpoint", ckpt, "--query", tmp_path / "nope.h5",
                                 "--gallery", sample_stores["gene"], "--out", tmp_path / "hits.tsv")
    assert code == 3, lines
    assert len(lines) == 1 and "nope.h5" in lines[0] and "does not exist" in lines[0]


# ---------------------------------------------------------------- benchmark suite internals


def test_benchmark_methods_agree_on_a_tiny_gallery(tmp_path):
    from phenoclip_bench.retrieve_speed import Searcher, agreement, make_data, retrieve_benchmark

    q, g = make_data(5000, 37, 32, seed=1)
    np.testing.assert_allclose(np.linalg.norm(g, axis=1), 1, atol=1e-5)
    found = {m: Searcher(m, g).search(q, 10) for m in ("ours", "faiss", "full")}
    assert np.array_equal(found["ours"][1], found["faiss"][1])
    assert np.array_equal(found["ours"][1], found["full"][1])
    np.testing.assert_allclose(found["ours"][0], found["faiss"][0], atol=1e-5)
    assert agreement(found["ours"][1], found["faiss"][1]) == 1.0
    # the suite's own path: each method in its own process, indices compared there
    rows, metrics = retrieve_benchmark(3000, n_queries=24, dim=16, k=5, work=tmp_path, repeats=1, threads=1)
    assert [r[5] for r in rows] == ["100.0%"] * 3, rows
    assert metrics["threads"] == 1 and metrics["ours_queries_per_s"] > 0 and "ours_over_faiss" in metrics
    assert not list(tmp_path.iterdir())  # indices and stderr files cleaned up


def test_map_points_keep_labelled_patients_of_the_kept_set():
    from phenoclip.eval.embedding_map import points_from

    emb = np.arange(8, dtype=np.float64).reshape(4, 2)
    groups = [("gene", ["a", "b", "c", "d"], emb), ("expr", ["b", "d"], emb[:2] + 10)]
    points = points_from(groups, {"a": "x", "b": "y", "d": "y"}, keep={"a", "b", "c"})
    assert points.samples == ["a", "b", "b"] and points.labels == ["x", "y", "y"]
    assert points.groups == ["gene", "gene", "expr"]
    assert points.embeddings.dtype == np.float32
    assert points.embeddings.tolist() == [[0, 1], [2, 3], [10, 11]]
    assert points_from(groups, {"a": "x"}).samples == ["a"]  # no keep set: every labelled point


@pytest.mark.parametrize("edit, code, text", [
    (lambda c: c.update(embed_dim=10**9), 5, "do not belong together"),
    (lambda c: c["data_shapes"]["gene"].update(n_variants=10**10), 5, "do not belong together"),
    (lambda c: c.update(embed_dim=-5), 4, "does not describe a pretrained model"),
    (lambda c: c.update(embed_dim="big"), 4, "does not describe a pretrained model"),
    (lambda c: c.update(architectures={"gene": "nosuch"}), 4, "no encoder 'nosuch'"),
    (lambda c: c.update(preset="huge"), 4, "unknown preset 'huge'"),
    (lambda c: c.update(data_shapes="x"), 4, "does not describe a pretrained model"),
])
def test_tampered_checkpoint_config_is_refused_before_allocating(ckpt, sample_stores, tmp_path, capsys,
                                                                 edit, code, text):
    """config.json sizes drive allocations: embed_dim 1e9 asked for 1.5 TB (exit 70 from the
    allocator); unknown architectures and bad sizes were exit 70 too."""
    import json
    import shutil

    bad = tmp_path / "ckpt"
    shutil.copytree(ckpt, bad)
    config = json.loads((bad / "config.json").read_text())
    edit(config)
    (bad / "config.json").write_text(json.dumps(config))
    rc, lines = cli_in_process(capsys, "retrieve", "--checkpoint", str(bad), "--query", str(sample_stores["gene"]),
                               "--gallery", str(sample_stores["expr"]), "--out", str(tmp_path / "hits.tsv"))
    assert rc == code, lines
    assert len(lines) == 1 and text in lines[0] and "config.json" in lines[0]
    assert not (tmp_path / "hits.tsv").exists()


def test_sharded_retrieve_merges_to_the_unsharded_hits_and_metrics(ckpt, sample_stores, tmp_path, capsys):
    """--part K --num-parts 3 and 'retrieve merge' write the hits TSV and metrics JSON of one run
    (the same lines, the same Recall@K and MRR for all and for held-out patients)."""
    base = ["retrieve", "--checkpoint", ckpt, "--query", sample_stores["gene"], "--gallery", sample_stores["expr"],
            "--k", K]
    code, err = cli_in_process(capsys, *base, "--out", tmp_path / "one.tsv")
    assert code == 0, err
    for part in (2, 0, 1):
        code, err = cli_in_process(capsys, *base, "--out", tmp_path / "hits.tsv", "--part", part, "--num-parts", 3)
        assert code == 0, err
        assert (tmp_path / f"hits.part{part}.h5").exists() and not (tmp_path / "hits.tsv").exists()
    parts = [tmp_path / f"hits.part{k}.h5" for k in (1, 2, 0)]  # any order
    code, err = cli_in_process(capsys, "retrieve", "merge", *parts, "--out", tmp_path / "merged.tsv")
    assert code == 0, err
    assert (tmp_path / "merged.tsv").read_text() == (tmp_path / "one.tsv").read_text()
    one = json.loads((tmp_path / "one.metrics.json").read_text())
    merged = json.loads((tmp_path / "merged.metrics.json").read_text())
    assert set(one) == set(merged) and {"all", "held_out"} <= set(one)
    for block in ("all", "held_out"):
        for key, value in one[block].items():
            assert merged[block][key] == pytest.approx(value, rel=1e-12, abs=1e-12), (block, key)
    assert {k: one[k] for k in one if k not in ("all", "held_out")} == \
        {k: merged[k] for k in merged if k not in ("all", "held_out")}

    # a missing part, a repeated one, one of another run: exit 5, nothing written
    other = tmp_path / "other"
    other.mkdir()
    code, err = cli_in_process(capsys, *base[:-1], 5, "--out", other / "hits.tsv", "--part", 0, "--num-parts", 3)
    assert code == 0, err
    for given, expect in ((parts[:2], "missing"), ([*parts, parts[0]], "given twice"),
                          ([other / "hits.part0.h5", *parts[:2]], "from another retrieve run")):
        code, err = cli_in_process(capsys, "retrieve", "merge", *given, "--out", tmp_path / "bad.tsv")
        assert code == 5 and len(err) == 1 and expect in err[0], err
        assert not (tmp_path / "bad.tsv").exists()
    # outputs a part cannot write are refused up front
    code, err = cli_in_process(capsys, *base, "--out", tmp_path / "x.tsv", "--part", 0, "--num-parts", 3,
                               "--pheno-out", tmp_path / "x.pheno")
    assert code == 2 and "--pheno-out is not written by a --part" in err[0], err
