"""The bfloat16-screened top-k (``topk_chunked(coarse=True)``) against the full float32 matrix.

Small sub-blocks and a short probe (monkeypatched) let galleries of a few thousand items run
both passes; the data kinds cover what can break a screen: spread scores (it keeps little),
scores packed tighter than bfloat16 rounding (it must give way to the exact scan), galleries of
unequal norms, all-negative sub-blocks, a partial last sub-block, and exact ties.
"""

import pytest
import torch

from phenoclip.eval import topk_coarse
from phenoclip.eval.topk import topk_chunked, topk_full


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(topk_coarse, "_SUB_BLOCK", 8)


def _unit(x):
    return torch.nn.functional.normalize(x, dim=1)


def _cases(gen):
    n, e = 5003, 32  # 5003: the last sub-block and the last chunk are partial
    yield "spread", _unit(torch.randn(40, e, generator=gen)), _unit(torch.randn(n, e, generator=gen))
    centres = torch.randn(6, e, generator=gen)
    yield ("clusters", _unit(centres[torch.randint(0, 6, (40,), generator=gen)] + 0.05 * torch.randn(40, e, generator=gen)),
           _unit(centres[torch.randint(0, 6, (n,), generator=gen)] + 0.05 * torch.randn(n, e, generator=gen)))
    yield "packed", _unit(torch.rand(40, e, generator=gen) + 3), _unit(torch.rand(n, e, generator=gen) + 3)
    yield "norms", torch.randn(40, e, generator=gen) * 3, torch.randn(n, e, generator=gen) * torch.rand(n, 1, generator=gen) * 10
    # every other run of 8 items (one sub-block here) scores below 0 for every query
    d = _unit(torch.randn(1, e, generator=gen))
    g = _unit(torch.randn(n, e, generator=gen))
    away = (torch.arange(n) // 8) % 2 == 0
    g[away] = _unit(g[away] - 6 * d)
    yield "negative", _unit(torch.randn(40, e, generator=gen) + 3 * d), g


@pytest.mark.parametrize("threads, rescore_items", [(1, 1024), (2, 1024), (1, 16)])
def test_coarse_top_k_equals_the_full_matrix(small_blocks, monkeypatch, threads, rescore_items):
    # rescore_items 16: pass 2 scores units of 16 items, smaller than a chunk (as with few queries)
    monkeypatch.setattr(topk_coarse, "_RESCORE_ITEMS", rescore_items)
    gen = torch.Generator().manual_seed(3)
    for name, q, g in _cases(gen):
        ref_s, ref_i = topk_full(q, g, 10)
        s, i = topk_chunked(q, g, 10, chunk=64, threads=threads, coarse=True)
        assert torch.equal(i, ref_i), name
        torch.testing.assert_close(s, ref_s, rtol=0, atol=1e-5 * float(ref_s.abs().max()), msg=name)


def test_coarse_top_k_keeps_exact_ties_in_index_order(small_blocks):
    # quarter-integer vectors: every dot product is exact, so equal scores are true ties; each item
    # appears four times, in different sub-blocks and chunks
    gen = torch.Generator().manual_seed(0)
    base = torch.randint(-4, 5, (1200, 8), generator=gen).float() / 4
    g = torch.cat([base] * 4)
    q = torch.randint(-4, 5, (9, 8), generator=gen).float() / 4
    ref_s, ref_i = topk_full(q, g, 12)
    s, i = topk_chunked(q, g, 12, chunk=32, threads=1, coarse=True)
    assert torch.equal(i, ref_i) and torch.equal(s, ref_s)


def test_the_slack_bounds_every_coarse_score():
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(64, 128, generator=gen) * torch.rand(64, 1, generator=gen) * 4
    g = torch.randn(3000, 128, generator=gen) * torch.rand(3000, 1, generator=gen) * 4
    low_q = q.to(torch.bfloat16)
    per_g, up = topk_coarse.coarse_slack(q, low_q)
    coarse = (low_q @ g.to(torch.bfloat16).T).float()
    err = (q @ g.T - coarse).abs()
    bound = per_g[:, None] * torch.linalg.vector_norm(g, dim=1)[None, :] + up * coarse.abs()
    assert bool((err <= bound).all())
    # and it is not loose by orders of magnitude: the worst error uses a fair part of it
    assert float((err / bound).max()) > 0.2


def test_the_screen_keeps_little_of_spread_scores_and_most_of_packed_ones():
    gen = torch.Generator().manual_seed(2)

    def kept(q, g):
        low_q = q.to(torch.bfloat16)
        per_g, up = topk_coarse.coarse_slack(q, low_q)
        coarse = low_q @ g.to(torch.bfloat16).T
        keys = coarse.view(torch.int16).view(q.shape[0], -1, 128).amax(dim=2)
        g_max = torch.linalg.vector_norm(g, dim=1).view(-1, 128).amax(dim=1)
        keep, floor = topk_coarse.coarse_select(keys, g_max, per_g, up, 10)
        # the floor lies under the true 10th best score of every query
        assert bool((floor.squeeze(1) <= topk_full(q, g, 10)[0][:, -1]).all())
        return float(keep.float().mean())

    assert kept(_unit(torch.randn(32, 64, generator=gen)), _unit(torch.randn(128 * 400, 64, generator=gen))) < 0.05
    assert kept(_unit(torch.rand(32, 64, generator=gen) + 3), _unit(torch.rand(128 * 400, 64, generator=gen) + 3)) > 0.5


def test_at_the_default_sizes_both_passes_run_and_agree_with_the_full_matrix(monkeypatch):
    gen = torch.Generator().manual_seed(4)
    q, g = _unit(torch.randn(64, 128, generator=gen)), _unit(torch.randn(70_000, 128, generator=gen))
    exact_scans = []
    scan = topk_coarse.scan
    monkeypatch.setattr(topk_coarse, "scan", lambda *a, **kw: exact_scans.append(a[2:4]) or scan(*a, **kw))
    s, i = topk_chunked(q, g, 10, threads=1, coarse=True)
    assert exact_scans == []  # both passes ran: no fallback to the float32 scan
    ref_s, ref_i = topk_full(q, g, 10)
    assert torch.equal(i, ref_i)
    torch.testing.assert_close(s, ref_s, rtol=0, atol=1e-6)


def test_a_nan_query_falls_back_to_the_float32_scan(small_blocks):
    gen = torch.Generator().manual_seed(5)
    q, g = _unit(torch.randn(6, 32, generator=gen)), _unit(torch.randn(5003, 32, generator=gen))
    q[2] = float("nan")
    s, i = topk_chunked(q, g, 10, chunk=64, threads=1, coarse=True)
    ref_s, ref_i = topk_chunked(q, g, 10, chunk=64, threads=1, coarse=False)
    assert torch.equal(i[[0, 1, 3, 4, 5]], ref_i[[0, 1, 3, 4, 5]])
    assert bool(s[2].isnan().all()) and bool(ref_s[2].isnan().all())
