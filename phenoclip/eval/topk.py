"""Exact top-k search by inner product: :func:`topk_chunked` and its full-matrix twin :func:`topk_full`.

Galleries can hold millions of items: similarities are computed one gallery chunk at a time and
merged into a running top-k, so memory is ``Q x chunk`` rather than ``Q x G``
(:func:`topk_chunked`, held to :func:`topk_full` in the tests).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from phenoclip.eval.topk_coarse import bf16_is_fast, scan_coarse
from phenoclip.eval.topk_scan import order_candidates, scan

#: elements of one worker's (query block x gallery chunk) similarity block: 512 K float32 = 2 MiB,
#: about one core's L2 cache. Small blocks that stay in cache beat one large block written to
#: and read back from memory, and the threshold test below makes their top-k nearly free.
_BLOCK_ELEMENTS = 1 << 19
#: queries per block (when there are enough queries to give every worker its own)
_QUERY_BLOCK = 512
#: below this many queries per worker, workers split the gallery instead of the queries
_MIN_QUERIES_PER_WORKER = 64


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
    could reach a query's top-k (:func:`~phenoclip.eval.topk_coarse.coarse_slack` bounds the rounding): the same top-k,
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
        return (scan_coarse if coarse else scan)(queries[q0:q0 + q_block], gallery, a, b, k, chunk)

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
            s, i = order_candidates(torch.cat([f[0] for f in found], dim=1), torch.cat([f[1] for f in found], dim=1), k)
        out_s[q0:q0 + q_block], out_i[q0:q0 + q_block] = s, i
    return out_s, out_i


def topk_full(queries: torch.Tensor, gallery: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference twin of :func:`topk_chunked`: the whole ``Q x G`` matrix, stably sorted."""
    sims = queries @ gallery.to(queries.dtype).T
    s, i = torch.sort(sims, dim=1, descending=True, stable=True)
    return s[:, :k], i[:, :k]
