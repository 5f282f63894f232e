"""Cross-modal retrieval metrics: ranks with ties, Recall@K and MRR.

Embeddings are expected L2-normalised (inner product = cosine similarity). Exact top-k search
lives in :mod:`phenoclip.eval.topk`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def rank_bounds(queries: torch.Tensor, gallery: torch.Tensor, targets: torch.Tensor,
                chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query: gallery items scoring above its true item, and items tied with it (itself included).

    Scores within rounding error of the true item's count as ties (the true score is an
    elementwise dot product while the gallery's come from a matrix product, and the two round
    differently). The true item's rank lies uniformly among the tied places: an embedding that
    gives many patients the same score must not be credited as if it had found the one.
    """
    eps = 1e-5 if queries.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-12
    true_scores = (queries * gallery[targets]).sum(dim=1, keepdim=True)
    band = eps * true_scores.abs().clamp(min=1.0)
    higher = torch.zeros(queries.shape[0], dtype=torch.long)
    tied = torch.zeros(queries.shape[0], dtype=torch.long)
    for start in range(0, gallery.shape[0], chunk):
        sims = queries @ gallery[start:start + chunk].T
        higher += (sims > true_scores + band).sum(dim=1)
        tied += (sims >= true_scores - band).sum(dim=1)
    return higher, (tied - higher).clamp(min=1)


def metrics_from_rank_bounds(higher: torch.Tensor, tied: torch.Tensor,
                             ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@K and MRR expected when ties are broken at random (:func:`rank_bounds`' output).

    The rank is uniform on ``higher + 1 .. higher + tied``: P(rank <= K) = clip((K - higher) / tied, 0, 1)
    and E[1 / rank] = (H(higher + tied) - H(higher)) / tied. Without ties these are the plain metrics.
    """
    h, t = higher.to(torch.float64), tied.to(torch.float64).clamp(min=1.0)
    out = {f"R@{k}": float(((k - h) / t).clamp(0.0, 1.0).mean()) for k in ks}
    harmonic = (torch.special.digamma(h + t + 1) - torch.special.digamma(h + 1)) / t
    out["MRR"] = float(torch.where(t == 1, 1.0 / (h + 1), harmonic).mean())
    return out


#: the K of Recall@K in retrieve's metrics
RETRIEVE_KS = (1, 5, 10)


def metrics_from_bounds(higher: torch.Tensor, tied: torch.Tensor, gallery_size: int) -> dict:
    """Recall@1/5/10, MRR, ``n_queries``, ``gallery_size`` and ``chance@1`` from per-query bounds."""
    out = metrics_from_rank_bounds(higher, tied, RETRIEVE_KS)
    out.update({"n_queries": int(len(higher)), "gallery_size": int(gallery_size), "chance@1": 1.0 / gallery_size})
    return out


def format_metrics(m: dict) -> str:
    """One line: Recall@1/5/10 and MRR, with the counts and chance."""
    return (" ".join(f"{k} {m[k]:.3f}" for k in (*(f"R@{k}" for k in RETRIEVE_KS), "MRR"))
            + f" (queries {m['n_queries']}, gallery {m['gallery_size']}, chance@1 {m['chance@1']:.3f})")


def chance_mrr(n: int) -> float:
    """Expected MRR of a random ranking of a gallery of ``n`` items with one true item: H_n / n."""
    return float(np.sum(1.0 / np.arange(1, n + 1)) / n)


def paired_retrieval(a: torch.Tensor, b: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Row ``i`` of ``a`` should retrieve row ``i`` of ``b``; metrics averaged over both directions."""
    targets = torch.arange(a.shape[0])
    ab = metrics_from_rank_bounds(*rank_bounds(a, b, targets), ks)
    ba = metrics_from_rank_bounds(*rank_bounds(b, a, targets), ks)
    out = {k: (ab[k] + ba[k]) / 2 for k in ab}
    out["chance@1"] = 1.0 / a.shape[0]
    out["n"] = a.shape[0]
    return out
