"""The bfloat16 screen of exact top-k search (where the CPU multiplies bfloat16 natively).

Pass 1 multiplies in bfloat16 and keeps each query's largest coarse score per block of items; a
bound on bfloat16's rounding turns these into a floor under each query's k-th best float32
score and the blocks that can reach it; pass 2 scores only those in float32. The result is the
float32 scan's (:func:`~phenoclip.eval.topk_scan.scan`), ties included, not an approximation.
"""

from __future__ import annotations

import torch

from phenoclip.eval.topk_scan import scan


#: gallery items per sub-block: the coarse pass keeps one maximum per query and sub-block
_SUB_BLOCK = 128
#: sub-blocks (at least, and at least 12 per k) after which the coarse pass judges whether its
#: screen can work (see scan_coarse); ranges under 4 times this are scanned exactly
_COARSE_PROBE = 128
#: ... and gives way to the exact scan when it would keep more than this share of sub-blocks
_COARSE_MAX_SHARE = 0.5
#: queries per slice of the screen's arithmetic (it holds a few float (rows x sub-blocks) arrays)
_SELECT_ROWS = 64
#: pass 2 scores kept items in units of at most this many (a multiple of _SUB_BLOCK)
_RESCORE_ITEMS = 1024


def coarse_slack(queries: torch.Tensor, low_q: torch.Tensor) -> tuple[torch.Tensor, float]:
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
    rounded = low_q.float()
    qb = torch.linalg.vector_norm(rounded, dim=1)
    qr = torch.linalg.vector_norm(queries - rounded, dim=1)
    q = torch.linalg.vector_norm(queries, dim=1)
    per_g = (qr + u * qb + gamma * (1 + u) * (qb + q)) * (1 + 1e-3)
    return per_g, u / (1 - u) * (1 + 1e-3)


def coarse_select(keys: torch.Tensor, g_max: torch.Tensor, per_g: torch.Tensor, up: float, k: int
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


def scan_coarse(queries: torch.Tensor, gallery: torch.Tensor, start: int, stop: int, k: int,
                chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 scan's result in two passes: a bfloat16 screen, then float32 where it passes.

    Pass 1 multiplies in bfloat16 and keeps, per query, the largest coarse score of each
    :data:`_SUB_BLOCK` items (read as int16 bits: a vectorised maximum, where bfloat16's is not).
    :func:`coarse_select` turns these into a floor under each query's k-th best score and the
    sub-blocks that can reach it. Pass 2 scores in float32 the units (at most
    :data:`_RESCORE_ITEMS` items) holding kept sub-blocks, for the queries that kept them, and
    keeps the items at or above the floor; the best ``k`` of those are the exact top-k (ties:
    lower index first). Where bfloat16 cannot tell items apart
    (scores packed closer than its rounding), the screen keeps most sub-blocks: after
    :data:`_COARSE_PROBE` sub-blocks that shows, and the range is scanned exactly instead.
    """
    n_q, e = queries.shape
    chunk = max(_SUB_BLOCK, chunk // _SUB_BLOCK * _SUB_BLOCK)
    per_chunk = chunk // _SUB_BLOCK
    n_sub = -(-(stop - start) // _SUB_BLOCK)
    probe = -(-max(_COARSE_PROBE, 12 * k) // per_chunk)  # in chunks
    if n_sub < 4 * probe * per_chunk:
        return scan(queries, gallery, start, stop, k, chunk)
    low_q = queries.to(torch.bfloat16)
    per_g, up = coarse_slack(queries, low_q)
    keys = torch.empty((n_q, n_sub), dtype=torch.int16)
    g_max = torch.empty(n_sub)
    # the gallery is rounded one chunk at a time: no bfloat16 copy of it is ever held
    low_part = torch.empty((chunk, e), dtype=torch.bfloat16)
    block = torch.empty((n_q, chunk), dtype=torch.bfloat16)
    for c, a in enumerate(range(start, stop, chunk)):
        if c == probe:
            seen = c * per_chunk
            keep, _ = coarse_select(keys[:, :seen], g_max[:seen], per_g, up, k)
            if float(keep.float().mean()) > _COARSE_MAX_SHARE:
                return scan(queries, gallery, start, stop, k, chunk)
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
    # the screen, a few queries at a time: its float temporaries are (queries x sub-blocks); pass 2
    # scores units of at most _RESCORE_ITEMS items (a chunk is large when there are few queries)
    unit = min(chunk, _RESCORE_ITEMS)
    per_unit = unit // _SUB_BLOCK
    n_units = -(-(stop - start) // unit)
    keep = torch.empty((n_q, n_units), dtype=torch.bool)
    floor = torch.empty((n_q, 1))
    for r in range(0, n_q, _SELECT_ROWS):
        sl = slice(r, r + _SELECT_ROWS)
        kept, floor[sl] = coarse_select(keys[sl], g_max, per_g[sl], up, k)
        kept = torch.nn.functional.pad(kept, (0, n_units * per_unit - n_sub))
        keep[sl] = kept.view(kept.shape[0], n_units, per_unit).any(2)
    found_s, found_i, found_q = [], [], []
    for u in keep.any(dim=0).nonzero().squeeze(1).tolist():
        rows = keep[:, u].nonzero().squeeze(1)
        a = start + u * unit
        exact = queries.index_select(0, rows) @ gallery[a:min(a + unit, stop)].T
        r, col = (exact >= floor[rows]).nonzero(as_tuple=True)
        found_s.append(exact[r, col])
        found_i.append(col + a)
        found_q.append(rows[r])
    if not found_s:  # cannot happen with finite inputs (NaN or inf can break the bound)
        return scan(queries, gallery, start, stop, k, chunk)
    scores, idx, owner = torch.cat(found_s), torch.cat(found_i), torch.cat(found_q)
    counts = torch.bincount(owner, minlength=n_q)
    if int(counts.min()) < k:  # likewise
        return scan(queries, gallery, start, stop, k, chunk)
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
