"""Retrieval metrics against hand-computed values; chunked top-k against the full matrix."""

import torch

from phenoclip.eval.retrieval import metrics_from_rank_bounds, paired_retrieval, rank_bounds
from phenoclip.eval.topk import topk_chunked


def test_hand_computed_ranks_and_metrics():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])
    # query 0 -> item 0: scores 1, 0, .8 -> rank 1; query 1 -> item 1: 0, 1, .6 -> rank 1;
    # query 2 -> item 2: scores .6, .8, .96 -> rank 1 ... make query 2 target item 0 instead
    higher, tied = rank_bounds(q, g, torch.tensor([0, 1, 0]))
    assert (higher + 1).tolist() == [1, 1, 3] and tied.tolist() == [1, 1, 1]
    m = metrics_from_rank_bounds(higher, tied, ks=(1, 2, 3))
    assert m["R@1"] == 2 / 3 and m["R@2"] == 2 / 3 and m["R@3"] == 1.0
    assert abs(m["MRR"] - (1 + 1 + 1 / 3) / 3) < 1e-12


def test_perfectly_aligned_embeddings_give_recall_1():
    z = torch.nn.functional.normalize(torch.randn(50, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    m = paired_retrieval(z, z.clone())
    assert m["R@1"] == 1.0 and m["MRR"] == 1.0 and m["chance@1"] == 1 / 50


def test_chunked_topk_equals_full_matrix():
    gen = torch.Generator().manual_seed(1)
    q, g = torch.randn(7, 16, generator=gen), torch.randn(1000, 16, generator=gen)
    s, i = topk_chunked(q, g, k=10, chunk=64)
    full_s, full_i = torch.topk(q @ g.T, 10, dim=1)
    torch.testing.assert_close(s, full_s)
    assert torch.equal(i, full_i)
    higher, tied = rank_bounds(q, g, full_i[:, 3], chunk=100)
    assert (higher + 1).tolist() == [4] * 7 and tied.tolist() == [1] * 7


def test_ties_are_broken_at_random_not_in_the_querys_favour():
    """A collapsed encoder (every patient the same embedding) is at chance, not perfect."""
    n = 8
    same = torch.nn.functional.normalize(torch.ones(n, 4), dim=1)
    m = paired_retrieval(same, same.clone(), ks=(1, 5))
    assert abs(m["R@1"] - 1 / n) < 1e-12 and abs(m["R@5"] - 5 / n) < 1e-12
    assert abs(m["MRR"] - sum(1 / r for r in range(1, n + 1)) / n) < 1e-12
    # query 0 -> item 0: item 1 above, item 2 tied -> rank 2 or 3; query 1 -> item 1: items 0, 2 above -> rank 3
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    g = torch.tensor([[0.6, 0.8], [0.8, 0.6], [0.6, 0.8]])
    higher, tied = rank_bounds(q, g, torch.tensor([0, 1]))
    assert higher.tolist() == [1, 2] and tied.tolist() == [2, 1]
    m = metrics_from_rank_bounds(higher, tied, ks=(1, 2, 3))
    assert m["R@1"] == 0.0 and m["R@2"] == 0.25 and m["R@3"] == 1.0
    assert abs(m["MRR"] - ((1 / 2 + 1 / 3) / 2 + 1 / 3) / 2) < 1e-12
