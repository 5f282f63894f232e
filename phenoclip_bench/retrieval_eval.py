"""Metric code shared by ``--suite retrieve`` (quality part) and ``--suite ablation``.

* :func:`embed_modalities`: per-modality embeddings of a list of patients (only those having the modality);
* :func:`cross_modal_metrics`: Recall@1/5/10 and MRR for every modality pair, the two directions
  (a -> b and b -> a) averaged, on the patients having both modalities, with chance levels;
* :func:`reduce_features` and :func:`cca_pair_metrics`: the linear reference, CCA on the
  PCA-reduced input features (:func:`phenoclip.eval.raw_features.raw_features`) of the training patients, scored with the same retrieval metrics;
* :func:`planted_genetics`: a simulated cohort's noise-free genetic values from ``truth.json``,
  for the CCA ceiling of the genetics pairs that no model of the observed dosages can pass;
* :func:`own_term_ranking`: zero-shot ranking of the hpo vocabulary for each patient, scored
  against the patient's own recorded terms;
* :func:`concat_embeddings`: one row per patient (the modalities' embeddings side by side) for a
  linear probe.
"""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from sklearn.cross_decomposition import CCA
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from phenoclip.eval.retrieval import chance_mrr, paired_retrieval
from phenoclip.pretrained import embed_samples, expr_stats

KS = (1, 5, 10)
#: (ids, embeddings (N, E) float32) of the patients having a modality
Embedded = tuple[list[str], np.ndarray]


def embed_modalities(model, pre, stores, modalities: Sequence[str], samples: Sequence[str]) -> dict[str, Embedded]:
    """``{modality: (ids, embeddings)}`` of ``samples`` (those having the modality), with ``model``.

    ``pre`` (the checkpoint) gives the expression scaling the model was trained with, so a
    random-initialised twin sees the data exactly as the trained model does.
    """
    stats = expr_stats(pre, stores) if "expr" in modalities else None
    out: dict[str, Embedded] = {}
    for m in modalities:
        emb, present = embed_samples(model, stores, m, list(samples), stats if m == "expr" else None,
                                     label=f"embedding {m}")
        keep = np.flatnonzero(present)
        out[m] = ([samples[i] for i in keep], emb[keep])
    return out


def chance_levels(n: int, ks: Sequence[int] = KS) -> dict[str, float]:
    """Expected Recall@K and MRR of a random ranking of ``n`` gallery items (one true item)."""
    out = {f"R@{k}": min(k, n) / n for k in ks}
    out["MRR"] = chance_mrr(n)
    return out


def paired_metrics(a: Embedded, b: Embedded, ks: Sequence[int] = KS) -> dict | None:
    """Retrieval between two sides on the patients present in both (both directions averaged).

    Adds ``n``, ``chance@K`` / ``chance MRR`` and ``x chance@1`` (R@1 over its chance level).
    None when fewer than 2 patients have both.
    """
    pos = {s: i for i, s in enumerate(b[0])}
    both = [(i, pos[s]) for i, s in enumerate(a[0]) if s in pos]
    if len(both) < 2:
        return None
    ia, ib = zip(*both)
    ea = torch.nn.functional.normalize(torch.from_numpy(np.asarray(a[1][list(ia)], np.float32)), dim=1)
    eb = torch.nn.functional.normalize(torch.from_numpy(np.asarray(b[1][list(ib)], np.float32)), dim=1)
    out = paired_retrieval(ea, eb, ks)
    chance = chance_levels(len(both), ks)
    out.update({f"chance {k}": v for k, v in chance.items()})
    out["x chance@1"] = out["R@1"] / chance["R@1"]
    return out


def modality_pairs(modalities: Sequence[str]) -> list[tuple[str, str]]:
    return list(combinations(list(modalities), 2))


def cross_modal_metrics(embedded: dict[str, Embedded], ks: Sequence[int] = KS) -> dict[str, dict]:
    """``{"a-b": metrics}`` for every pair of the embedded modalities (see :func:`paired_metrics`)."""
    out = {}
    for a, b in modality_pairs(list(embedded)):
        m = paired_metrics(embedded[a], embedded[b], ks)
        if m is not None:
            out[f"{a}-{b}"] = m
    return out


def mean_over(metrics: dict[str, dict], key: str, pairs: Sequence[str] | None = None) -> float:
    """Mean of ``key`` over the pairs (default all) of a :func:`cross_modal_metrics` result."""
    names = [p for p in (pairs if pairs is not None else metrics) if p in metrics]
    return float(np.mean([metrics[p][key] for p in names])) if names else float("nan")


# ----------------------------------------------------------------------------- supervised linear ceiling

def _both(a: Embedded, b: Embedded, keep: set[str]) -> tuple[np.ndarray, np.ndarray]:
    pos = {s: i for i, s in enumerate(b[0])}
    pairs = [(i, pos[s]) for i, s in enumerate(a[0]) if s in pos and s in keep]
    ia, ib = (list(t) for t in zip(*pairs)) if pairs else ([], [])
    return a[1][ia], b[1][ib]


def reduce_features(feats: Embedded, train: Sequence[str], n_pca: int = 32, seed: int = 0) -> Embedded:
    """Standardise then PCA-reduce one modality's raw features, both fitted on its ``train`` patients only.

    Once per modality (not per pair): the MRI voxels make this the costly step.
    """
    ids, x = feats
    keep = set(train)
    rows = [i for i, s in enumerate(ids) if s in keep]
    n = min(n_pca, len(rows) - 1, x.shape[1])
    # full SVD: exact, and for (patients << features) cheaper than the randomised solver's passes
    pca = make_pipeline(StandardScaler(), PCA(n, svd_solver="full", random_state=seed)).fit(x[rows])
    return ids, pca.transform(x)


def fit_cca(a: Embedded, b: Embedded, train: Sequence[str], n_cca: int = 8):
    """CCA fitted on the ``train`` patients having both (features already reduced); returns ``transform``."""
    xa, xb = _both(a, b, set(train))
    cca = CCA(n_components=min(n_cca, xa.shape[1], xb.shape[1]), max_iter=2000).fit(xa, xb)

    def transform(qa: np.ndarray, qb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sa, sb = cca.transform(qa, qb)
        return sa.astype(np.float32), sb.astype(np.float32)

    return transform


def cca_pair_metrics(a: Embedded, b: Embedded, train: Sequence[str], test: Sequence[str],
                     n_cca: int = 8) -> dict | None:
    """:func:`paired_metrics` of the ``test`` patients in the CCA space fitted on ``train`` (cosine).

    ``a`` and ``b``: features of train and test patients, reduced by :func:`reduce_features`.
    """
    transform = fit_cca(a, b, train, n_cca)
    ta, tb = _both(a, b, set(test))
    if len(ta) < 2:
        return None
    sa, sb = transform(ta, tb)
    ids = [f"p{i}" for i in range(len(sa))]
    return paired_metrics((ids, sa), (ids, sb))


def planted_genetics(truth_path, samples: Sequence[str]) -> Embedded:
    """What a simulated genotype carries about everything else, without noise, from ``truth.json``.

    Per patient of ``samples``: the ALT dosages of the causal SNPs (disease liability and cis-eQTLs),
    each latent trait's genetic value (its SNPs' weighted dosages) and sex (the chrX dosage). Every
    genotype-to-phenotype path of the simulator goes through these numbers, so CCA from them bounds
    what any model of the observed dosages (missing calls, 2,000 SNPs to search) can retrieve.
    """
    wanted = set(samples)
    ids, rows = [], []
    for p in json.loads(Path(truth_path).read_text())["patients"]:
        if p["sample"] in wanted and "causal_dosage" in p:
            ids.append(p["sample"])
            rows.append([*p["causal_dosage"], *p.get("trait_genetic_values", []), float(p.get("sex") == "male")])
    if not ids:  # a truth file without genotype truth (another simulator, an older version)
        return [], np.zeros((0, 0))
    return ids, np.asarray(rows, dtype=np.float64)


# ----------------------------------------------------------------------------- zero-shot phenotype terms

@torch.no_grad()
def own_term_ranking(model, embedded: dict[str, Embedded], stores) -> dict[str, dict]:
    """Per modality: each patient's embedding ranks every hpo vocabulary term (cosine); scored against
    the patient's own recorded terms: mean per-patient AUROC (chance 0.5) and Recall@10 (share of the
    own terms in the top 10; chance 10 / vocabulary size)."""
    enc = model.encoders["hpo"]
    terms = model.encode_terms().float().numpy()
    data = stores.by_modality["hpo"].meta["phenotypes"]
    row_of = stores.by_modality["hpo"].row
    lookup = enc.lookup.numpy()
    n_vocab = terms.shape[0]
    out = {}
    for m, (ids, emb) in embedded.items():
        aucs, recalls = [], []
        for s, e in zip(ids, emb):
            if s not in row_of:
                continue
            own = np.zeros(n_vocab, bool)
            rows = lookup[np.asarray(data.terms[row_of[s]], dtype=np.int64)]
            own[rows[rows >= 0]] = True
            if not own.any() or own.all():
                continue
            score = terms @ e
            aucs.append(roc_auc_score(own, score))
            top = np.argsort(-score, kind="stable")[:10]
            recalls.append(own[top].sum() / own.sum())
        if aucs:
            out[m] = {"n": len(aucs), "AUROC": float(np.mean(aucs)), "R@10": float(np.mean(recalls)),
                      "chance R@10": min(10, n_vocab) / n_vocab}
    return out


def concat_embeddings(embedded: dict[str, Embedded], samples: Sequence[str]) -> np.ndarray:
    """(len(samples), sum of E) float32: the modalities' embeddings side by side, zeros where absent."""
    blocks = []
    for ids, emb in embedded.values():
        pos = {s: i for i, s in enumerate(ids)}
        block = np.zeros((len(samples), emb.shape[1]), np.float32)
        for i, s in enumerate(samples):
            if s in pos:
                block[i] = emb[pos[s]]
        blocks.append(block)
    return np.concatenate(blocks, axis=1)
