"""Exact cross-modal retrieval: chunked top-k and ranks, Recall@K and MRR.

Galleries can hold millions of items: similarities are computed one gallery chunk at a time and
merged into a running top-k, so memory is ``Q x chunk`` rather than ``Q x G``.
Embeddings are expected L2-normalised (inner product = cosine similarity).
"""

from __future__ import annotations

from typing import Sequence

import torch


def topk_chunked(queries: torch.Tensor, gallery: torch.Tensor, k: int, chunk: int = 65536
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` gallery items per query by inner product.

    queries: (Q, E); gallery: (G, E). Returns (scores (Q, k), indices (Q, k)), best first; ties
    keep the lower gallery index first.
    """
    if k > gallery.shape[0]:
        raise ValueError(f"k={k} exceeds the gallery size {gallery.shape[0]}")
    best_s = torch.full((queries.shape[0], 0), float("-inf"), dtype=queries.dtype)
    best_i = torch.zeros((queries.shape[0], 0), dtype=torch.long)
    for start in range(0, gallery.shape[0], chunk):
        sims = queries @ gallery[start:start + chunk].T
        s, i = torch.topk(sims, min(k, sims.shape[1]), dim=1)
        cand_s = torch.cat([best_s, s], dim=1)
        cand_i = torch.cat([best_i, i + start], dim=1)
        # stable merge: sort by score desc, then by index asc for equal scores
        order = torch.argsort(cand_i, dim=1)
        cand_s, cand_i = cand_s.gather(1, order), cand_i.gather(1, order)
        s2, j = torch.sort(cand_s, dim=1, descending=True, stable=True)
        best_s, best_i = s2[:, :k], cand_i.gather(1, j)[:, :k]
    return best_s, best_i


def true_match_ranks(queries: torch.Tensor, gallery: torch.Tensor, targets: torch.Tensor,
                     chunk: int = 65536) -> torch.Tensor:
    """1-based rank of each query's true gallery item (``targets``: (Q,) gallery indices).

    rank = 1 + number of gallery items scoring higher than the true item by more than rounding
    error (ties count in the query's favour): the true score is an elementwise dot product while
    the gallery's come from a matrix product, and the two round differently.
    """
    eps = 1e-5 if queries.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-12
    true_scores = (queries * gallery[targets]).sum(dim=1, keepdim=True)
    true_scores = true_scores + eps * true_scores.abs().clamp(min=1.0)
    higher = torch.zeros(queries.shape[0], dtype=torch.long)
    for start in range(0, gallery.shape[0], chunk):
        higher += (queries @ gallery[start:start + chunk].T > true_scores).sum(dim=1)
    return higher + 1


def metrics_from_ranks(ranks: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@K (share of queries whose true item is in the top K) and mean reciprocal rank."""
    ranks = ranks.to(torch.float64)
    out = {f"R@{k}": float((ranks <= k).to(torch.float64).mean()) for k in ks}
    out["MRR"] = float((1.0 / ranks).mean())
    return out


def paired_retrieval(a: torch.Tensor, b: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Row ``i`` of ``a`` should retrieve row ``i`` of ``b``; metrics averaged over both directions."""
    targets = torch.arange(a.shape[0])
    ab = metrics_from_ranks(true_match_ranks(a, b, targets), ks)
    ba = metrics_from_ranks(true_match_ranks(b, a, targets), ks)
    out = {k: (ab[k] + ba[k]) / 2 for k in ab}
    out["chance@1"] = 1.0 / a.shape[0]
    out["n"] = a.shape[0]
    return out
