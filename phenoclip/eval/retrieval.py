"""Exact cross-modal retrieval: chunked top-k and ranks, Recall@K and MRR.

Galleries can hold millions of items: similarities are computed one gallery chunk at a time and
merged into a running top-k, so memory is ``Q x chunk`` rather than ``Q x G``
(:func:`topk_chunked`, held to its full-matrix twin :func:`topk_full` in the tests).
Embeddings are expected L2-normalised (inner product = cosine similarity).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import torch


#: elements of one worker's (query block x gallery chunk) similarity block: 512 K float32 = 2 MiB,
#: about one core's L2 cache. Small blocks that stay in cache beat one large block written to
#: and read back from memory, and the threshold test below makes their top-k nearly free.
_BLOCK_ELEMENTS = 1 << 19
#: queries per block (when there are enough queries to give every worker its own)
_QUERY_BLOCK = 512
#: below this many queries per worker, workers split the gallery instead of the queries
_MIN_QUERIES_PER_WORKER = 64


def _sorted_topk(sims: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` of each row, best first, equal scores in column order."""
    s, i = torch.topk(sims, k, dim=1)
    return _order(s, i, k)


def _order(scores: torch.Tensor, idx: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best ``k`` of candidate (score, index) rows: score descending, then index ascending.

    topk's order among equal scores is unspecified: sort by index first, then stably by score.
    """
    order = torch.argsort(idx, dim=1)
    scores, idx = scores.gather(1, order), idx.gather(1, order)
    s, j = torch.sort(scores, dim=1, descending=True, stable=True)
    return s[:, :k].contiguous(), idx.gather(1, j[:, :k])


def _scan(queries: torch.Tensor, gallery: torch.Tensor, start: int, stop: int, k: int, chunk: int
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` of ``gallery[start:stop]`` for ``queries`` (Q, E), one ``(Q, chunk)`` block at a time.

    After the first chunk, a query whose best score in a chunk does not beat its current k-th
    best (strictly: an equal score from a later, higher index loses the tie) skips that chunk's
    top-k: on a large gallery almost every query skips almost every chunk, so the cost is the
    matrix products plus one row maximum per chunk.
    """
    block = torch.empty((queries.shape[0], min(chunk, stop - start)), dtype=queries.dtype)
    best_s = best_i = None
    for a in range(start, stop, chunk):
        part = gallery[a:min(a + chunk, stop)]
        sims = block[:, :part.shape[0]]
        torch.mm(queries, part.T, out=sims)
        if best_s is None:
            best_s, best_i = _sorted_topk(sims, k)
            best_i += a
            continue
        rows = (torch.amax(sims, dim=1) > best_s[:, -1]).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        s, i = torch.topk(sims.index_select(0, rows), min(k, part.shape[0]), dim=1)
        s, i = _order(torch.cat([best_s[rows], s], dim=1), torch.cat([best_i[rows], i + a], dim=1), k)
        best_s[rows], best_i[rows] = s, i
    return best_s, best_i


def topk_chunked(queries: torch.Tensor, gallery: torch.Tensor, k: int, chunk: int | None = None,
                 threads: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` gallery items per query by inner product, exactly, without the ``Q x G`` matrix.

    queries: (Q, E); gallery: (G, E). Returns (scores (Q, k), indices (Q, k) int64), best first;
    ties keep the lower gallery index first. Reference twin: :func:`topk_full`. (Scores are
    exact ties only when computed equal: BLAS kernels may round the last bit of a dot product
    differently for blocks of different shapes, as between this and the full matrix.)

    ``threads`` workers (default ``torch.get_num_threads()``) each scan their own query blocks
    (or, with few queries, their own gallery range, merged at the end) with single-threaded
    torch ops on a ``(query block, chunk)`` similarity block of about 2 MiB (``chunk``: gallery
    rows per block, default sized to that). Independent workers need no barrier per operation,
    which matters on a busy machine; peak extra memory is one block per worker.
    """
    n_q, n_g = queries.shape[0], gallery.shape[0]
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if k > n_g:
        raise ValueError(f"k={k} exceeds the gallery size {n_g}")
    gallery = gallery.to(queries.dtype)
    workers = max(1, threads or torch.get_num_threads())
    if n_q >= _MIN_QUERIES_PER_WORKER * workers or workers == 1:
        q_block = max(1, min(_QUERY_BLOCK, -(-n_q // workers)))
        ranges = [(0, n_g)]
    else:  # few queries: split the gallery, at least k rows per range
        q_block = max(1, n_q)
        parts = max(1, min(workers, n_g // k))
        bounds = [n_g * p // parts for p in range(parts + 1)]
        ranges = list(zip(bounds[:-1], bounds[1:]))
    chunk = max(k, chunk or _BLOCK_ELEMENTS // q_block)
    tasks = [(q0, a, b) for q0 in range(0, n_q, q_block) for a, b in ranges]

    def run(task):
        q0, a, b = task
        return _scan(queries[q0:q0 + q_block], gallery, a, b, k, chunk)

    if workers == 1 or len(tasks) == 1:
        results = [run(t) for t in tasks]
    else:
        previous = torch.get_num_threads()
        torch.set_num_threads(1)  # each worker single-threaded: no nested thread teams
        try:
            with ThreadPoolExecutor(max_workers=min(workers, len(tasks))) as pool:
                results = list(pool.map(run, tasks))
        finally:
            torch.set_num_threads(previous)
    out_s = torch.empty((n_q, k), dtype=queries.dtype)
    out_i = torch.empty((n_q, k), dtype=torch.long)
    per_block = len(ranges)
    for b, q0 in enumerate(range(0, n_q, q_block)):
        found = results[b * per_block:(b + 1) * per_block]
        if per_block == 1:
            s, i = found[0]
        else:  # ranges are in gallery order, so concatenation keeps candidates in index order
            s, i = _order(torch.cat([f[0] for f in found], dim=1), torch.cat([f[1] for f in found], dim=1), k)
        out_s[q0:q0 + q_block], out_i[q0:q0 + q_block] = s, i
    return out_s, out_i


def topk_full(queries: torch.Tensor, gallery: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference twin of :func:`topk_chunked`: the whole ``Q x G`` matrix, stably sorted."""
    sims = queries @ gallery.to(queries.dtype).T
    s, i = torch.sort(sims, dim=1, descending=True, stable=True)
    return s[:, :k], i[:, :k]


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


def paired_retrieval(a: torch.Tensor, b: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Row ``i`` of ``a`` should retrieve row ``i`` of ``b``; metrics averaged over both directions."""
    targets = torch.arange(a.shape[0])
    ab = metrics_from_rank_bounds(*rank_bounds(a, b, targets), ks)
    ba = metrics_from_rank_bounds(*rank_bounds(b, a, targets), ks)
    out = {k: (ab[k] + ba[k]) / 2 for k in ab}
    out["chance@1"] = 1.0 / a.shape[0]
    out["n"] = a.shape[0]
    return out
