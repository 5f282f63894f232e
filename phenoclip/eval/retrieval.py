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


def _scan(queries: torch.Tensor, gallery: torch.Tensor, start: int, stop: int, k: int, chunk: int,
          coarse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` of ``gallery[start:stop]`` for ``queries`` (Q, E), one ``(Q, chunk)`` block at a time.

    After the first chunk, a query whose best score in a chunk does not beat its current k-th
    best (strictly: an equal score from a later, higher index loses the tie) skips that chunk's
    top-k: on a large gallery almost every query skips almost every chunk, so the cost is the
    matrix products plus one row maximum per chunk.

    ``coarse``: :func:`_scan_coarse` instead, a bfloat16 screen (2.2x the float32 rate where
    the CPU multiplies bfloat16 natively) and float32 scores where it passes: the same result.
    """
    if coarse:
        return _scan_coarse(queries, gallery, start, stop, k, chunk)
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


#: gallery items per sub-block: the coarse pass keeps one maximum per query and sub-block
_SUB_BLOCK = 128
#: sub-blocks (at least, and at least 12 per k) after which the coarse pass judges whether its
#: screen can work (see _scan_coarse); ranges under 4 times this are scanned exactly
_COARSE_PROBE = 128
#: ... and gives way to the exact scan when it would keep more than this share of sub-blocks
_COARSE_MAX_SHARE = 0.5
#: queries per slice of the screen's arithmetic (it holds a few float (rows x sub-blocks) arrays)
_SELECT_ROWS = 64


def _coarse_slack(queries: torch.Tensor, low_q: torch.Tensor) -> tuple[torch.Tensor, float]:
    """How far a bfloat16 coarse score can lie from the float32 score: ``(per_g (Q,), up)``.

    |float32 score - coarse| <= ``per_g[q] |g| + up |coarse|`` for every query ``q`` and item ``g``.
    The coarse score rounds ``q`` and ``g`` to bfloat16 (``q = qb + qr``, ``g = gb + gr``, each
    element of ``gr`` within u = 2^-8 of ``g``'s), sums the products in float32 and rounds the
    sum to bfloat16. Exactly ``q.g - qb.gb = qr.g + qb.gr``, so by Cauchy-Schwarz the rounded
    inputs cost at most ``(|qr| + u |qb|) |g|`` (``|qr|`` measured per query: about 0.42 u |q|,
    not the worst case u |q|); each float32 sum (the coarse one and the reference) errs by at
    most gamma_E = E 2^-24 / (1 - E 2^-24) times ``|q| |g|``; the last rounding costs at most
    u' = u / (1 - u) of the coarse score itself. Margins of 1e-3 cover the float32 arithmetic of
    the bound.
    """
    u = 2.0 ** -8
    e = queries.shape[1]
    gamma = e * 2.0 ** -24 / (1 - e * 2.0 ** -24)
    qb = torch.linalg.vector_norm(low_q.float(), dim=1)
    qr = torch.linalg.vector_norm(queries - low_q.float(), dim=1)
    q = torch.linalg.vector_norm(queries, dim=1)
    per_g = (qr + u * qb + gamma * (1 + u) * (qb + q)) * (1 + 1e-3)
    return per_g, u / (1 - u) * (1 + 1e-3)


def _coarse_select(keys: torch.Tensor, g_max: torch.Tensor, per_g: torch.Tensor, up: float, k: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Which sub-blocks may hold a top-``k`` item: ``(keep (Q, S) bool, floor (Q, 1))``.

    ``keys``: each sub-block's largest coarse score per query, as the int16 of its bfloat16 bits
    (a non-negative key is that maximum; a negative one says every score there is negative);
    ``g_max``: each sub-block's largest gallery norm. A sub-block's maximum belongs to one of
    its items, whose float32 score is at least that maximum less the slack; the ``k``-th
    largest of these lower bounds over distinct sub-blocks (``floor``) is at most the k-th best
    float32 score. A sub-block whose maximum plus the slack stays below ``floor`` holds no
    top-k item, and every item with a float32 score of at least ``floor`` is in a kept one.
    """
    pos = keys >= 0
    top = keys.view(torch.bfloat16).float()
    slack = per_g[:, None] * g_max[None, :]
    low = torch.where(pos, top - up * top.abs() - slack, float("-inf"))
    high = torch.where(pos, top + up * top.abs() + slack, slack)  # all negative: coarse < 0
    floor = torch.topk(low, k, dim=1).values[:, -1:]
    return high >= floor, floor


def _scan_coarse(queries: torch.Tensor, gallery: torch.Tensor, start: int, stop: int, k: int,
                 chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_scan`'s result in two passes: a bfloat16 screen, then float32 where it passes.

    Pass 1 multiplies in bfloat16 and keeps, per query, the largest coarse score of each
    :data:`_SUB_BLOCK` items (read as int16 bits: a vectorised maximum, where bfloat16's is not).
    :func:`_coarse_select` turns these into a floor under each query's k-th best score and the
    sub-blocks that can reach it. Pass 2 scores the chunks holding kept sub-blocks in float32,
    for the queries that kept them, and keeps the items at or above the floor; the best ``k`` of
    those are the exact top-k (ties: lower index first). Where bfloat16 cannot tell items apart
    (scores packed closer than its rounding), the screen keeps most sub-blocks: after
    :data:`_COARSE_PROBE` sub-blocks that shows, and the range is scanned exactly instead.
    """
    n_q, e = queries.shape
    chunk = max(_SUB_BLOCK, chunk // _SUB_BLOCK * _SUB_BLOCK)
    per_chunk = chunk // _SUB_BLOCK
    n_sub = -(-(stop - start) // _SUB_BLOCK)
    probe = -(-max(_COARSE_PROBE, 12 * k) // per_chunk)  # in chunks
    if n_sub < 4 * probe * per_chunk:
        return _scan(queries, gallery, start, stop, k, chunk)
    low_q = queries.to(torch.bfloat16)
    per_g, up = _coarse_slack(queries, low_q)
    keys = torch.empty((n_q, n_sub), dtype=torch.int16)
    g_max = torch.empty(n_sub)
    # the gallery is rounded one chunk at a time: no bfloat16 copy of it is ever held
    low_part = torch.empty((chunk, e), dtype=torch.bfloat16)
    block = torch.empty((n_q, chunk), dtype=torch.bfloat16)
    for c, a in enumerate(range(start, stop, chunk)):
        if c == probe:
            seen = c * per_chunk
            keep, _ = _coarse_select(keys[:, :seen], g_max[:seen], per_g, up, k)
            if float(keep.float().mean()) > _COARSE_MAX_SHARE:
                return _scan(queries, gallery, start, stop, k, chunk)
        part = gallery[a:min(a + chunk, stop)]
        m = part.shape[0]
        low_part[:m].copy_(part)
        bits = block[:, :m]
        torch.mm(low_q, low_part[:m].T, out=bits)
        bits = bits.view(torch.int16)
        norms = torch.linalg.vector_norm(part, dim=1)
        s0, full = c * per_chunk, m // _SUB_BLOCK
        if full:
            whole = full * _SUB_BLOCK
            torch.amax(bits[:, :whole].view(n_q, full, _SUB_BLOCK), dim=2, out=keys[:, s0:s0 + full])
            torch.amax(norms[:whole].view(full, _SUB_BLOCK), dim=1, out=g_max[s0:s0 + full])
        if m > full * _SUB_BLOCK:  # the range's last, partial sub-block
            keys[:, s0 + full] = torch.amax(bits[:, full * _SUB_BLOCK:], dim=1)
            g_max[s0 + full] = norms[full * _SUB_BLOCK:].max()
    # the screen, a few queries at a time: its float temporaries are (queries x sub-blocks)
    n_chunks = -(-(stop - start) // chunk)
    keep = torch.empty((n_q, n_chunks), dtype=torch.bool)
    floor = torch.empty((n_q, 1))
    for r in range(0, n_q, _SELECT_ROWS):
        sl = slice(r, r + _SELECT_ROWS)
        kept, floor[sl] = _coarse_select(keys[sl], g_max, per_g[sl], up, k)
        kept = torch.nn.functional.pad(kept, (0, n_chunks * per_chunk - n_sub))
        keep[sl] = kept.view(kept.shape[0], n_chunks, per_chunk).any(2)
    found_s, found_i, found_q = [], [], []
    for c in range(n_chunks):
        rows = keep[:, c].nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        a = start + c * chunk
        exact = queries.index_select(0, rows) @ gallery[a:min(a + chunk, stop)].T
        r, col = (exact >= floor[rows]).nonzero(as_tuple=True)
        found_s.append(exact[r, col])
        found_i.append(col + a)
        found_q.append(rows[r])
    scores, idx, owner = torch.cat(found_s), torch.cat(found_i), torch.cat(found_q)
    counts = torch.bincount(owner, minlength=n_q)
    if int(counts.min()) < k:  # cannot happen with finite inputs; NaN or inf can break the bound
        return _scan(queries, gallery, start, stop, k, chunk)
    # each query's items arrive in index order: sorting by score, then stably by query, leaves
    # every query's items best first with equal scores in index order
    order = torch.argsort(scores, descending=True, stable=True)
    order = order[torch.argsort(owner[order], stable=True)]
    pick = order[((torch.cumsum(counts, 0) - counts)[:, None] + torch.arange(k)).reshape(-1)]
    return scores[pick].view(n_q, k), idx[pick].view(n_q, k)


def bf16_is_fast() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (AVX-512 BF16 or AMX, through oneDNN).

    Elsewhere a bfloat16 matrix product is emulated, several times slower than float32.
    """
    supported = getattr(torch.cpu, "_is_avx512_bf16_supported", None)  # private; absent in old torch
    return bool(torch.backends.mkldnn.is_available() and supported is not None and supported())


def topk_chunked(queries: torch.Tensor, gallery: torch.Tensor, k: int, chunk: int | None = None,
                 threads: int | None = None, coarse: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
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

    ``coarse`` (default: on for float32 CPU tensors where the CPU multiplies bfloat16 natively)
    screens each block in bfloat16 and rescores in float32 only the items whose coarse score
    could reach a query's top-k (:func:`_coarse_slack` bounds the rounding): the same top-k,
    about twice as fast.
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
    if coarse is None:
        coarse = (queries.dtype == torch.float32 and queries.device.type == "cpu" and n_g > chunk
                  and bf16_is_fast())
    tasks = [(q0, a, b) for q0 in range(0, n_q, q_block) for a, b in ranges]

    def run(task):
        q0, a, b = task
        return _scan(queries[q0:q0 + q_block], gallery, a, b, k, chunk, coarse)

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
