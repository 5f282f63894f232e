"""The float32 scan behind exact top-k search: one ``(queries, chunk)`` similarity block at a time,
merged into a running top-k (ties: lower gallery index first)."""

from __future__ import annotations

import torch


def sorted_topk(sims: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` of each row, best first, equal scores in column order."""
    s, i = torch.topk(sims, k, dim=1)
    return order_candidates(s, i, k)


def order_candidates(scores: torch.Tensor, idx: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best ``k`` of candidate (score, index) rows: score descending, then index ascending.

    topk's order among equal scores is unspecified: sort by index first, then stably by score.
    """
    order = torch.argsort(idx, dim=1)
    scores, idx = scores.gather(1, order), idx.gather(1, order)
    s, j = torch.sort(scores, dim=1, descending=True, stable=True)
    return s[:, :k].contiguous(), idx.gather(1, j[:, :k])


def scan(queries: torch.Tensor, gallery: torch.Tensor, start: int, stop: int, k: int, chunk: int
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
            best_s, best_i = sorted_topk(sims, k)
            best_i += a
            continue
        rows = (torch.amax(sims, dim=1) > best_s[:, -1]).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        s, i = torch.topk(sims.index_select(0, rows), min(k, part.shape[0]), dim=1)
        s, i = order_candidates(torch.cat([best_s[rows], s], dim=1), torch.cat([best_i[rows], i + a], dim=1), k)
        best_s[rows], best_i[rows] = s, i
    return best_s, best_i
