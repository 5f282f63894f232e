"""ClipLoss against a textbook reference, missing modalities, and two-process gloo gathering."""

from __future__ import annotations

import datetime
import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from phenoclip.objectives import ClipLoss
from phenoclip.objectives import distributed as pdist

MODS = ("gene", "expr", "mri")


def _batch(n: int = 8, dim: int = 5, seed: int = 0):
    """Double-precision normalised embeddings; patient 1 lacks mri, patient 4 lacks expr and mri."""
    g = torch.Generator().manual_seed(seed)
    emb = {m: F.normalize(torch.randn(n, dim, generator=g, dtype=torch.float64), dim=1) for m in MODS}
    present = {m: torch.ones(n, dtype=torch.bool) for m in MODS}
    present["mri"][[1, 4]] = False
    present["expr"][4] = False
    return emb, present


def _reference(emb, present, logit_scale, names=MODS):
    """CLIP's loss written out: -log(exp(s a_i.b_i) / sum_j exp(s a_i.b_j)), both directions, per pair."""
    s = logit_scale.exp().clamp(max=100)
    out = {}
    for x in range(len(names)):
        for y in range(x + 1, len(names)):
            a, b = emb[names[x]], emb[names[y]]
            rows = [i for i in range(len(a)) if present[names[x]][i] and present[names[y]][i]]
            if len(rows) < 2:
                continue
            total = 0
            for i in rows:
                total = total - torch.log(torch.exp(s * a[i] @ b[i]) / sum(torch.exp(s * a[i] @ b[j]) for j in rows))
                total = total - torch.log(torch.exp(s * b[i] @ a[i]) / sum(torch.exp(s * b[i] @ a[j]) for j in rows))
            out[f"clip/{names[x]}-{names[y]}"] = total / (2 * len(rows))
    out["clip"] = sum(out.values()) / len(out)
    return out


def _leaves(emb):
    return {m: e.clone().requires_grad_() for m, e in emb.items()}


@pytest.mark.parametrize("log_scale", [math.log(1 / 0.07), math.log(3.0)])
def test_matches_reference_forward_and_backward(log_scale):
    emb, present = _batch()
    mine, ref = _leaves(emb), _leaves(emb)
    ls_mine = torch.tensor(log_scale, dtype=torch.float64, requires_grad=True)
    ls_ref = ls_mine.detach().clone().requires_grad_()
    out = ClipLoss()(mine, present, ls_mine)
    expected = _reference(ref, present, ls_ref)
    assert set(out) == set(expected) | {"temperature"}
    for k, v in expected.items():
        torch.testing.assert_close(out[k], v)
    torch.testing.assert_close(out["temperature"], torch.tensor(math.exp(-log_scale), dtype=torch.float64))
    out["clip"].backward()
    expected["clip"].backward()
    for m in MODS:
        torch.testing.assert_close(mine[m].grad, ref[m].grad)
    torch.testing.assert_close(ls_mine.grad, ls_ref.grad)


def test_missing_patient_equals_loss_on_subset():
    emb, present = _batch()
    out = ClipLoss()(emb, present, torch.tensor(2.0, dtype=torch.float64))
    keep = [i for i in range(8) if i not in (1, 4)]  # patients with mri
    sub = ClipLoss()({m: emb[m][keep] for m in ("gene", "mri")},
                     {m: torch.ones(len(keep), dtype=torch.bool) for m in ("gene", "mri")},
                     torch.tensor(2.0, dtype=torch.float64))
    torch.testing.assert_close(out["clip/gene-mri"], sub["clip/gene-mri"])
    # the absent patient's mri row gets no gradient, its gene row still learns from gene-expr
    leaves = _leaves(emb)
    ClipLoss()(leaves, present, torch.tensor(2.0))["clip"].backward()
    assert torch.all(leaves["mri"].grad[[1, 4]] == 0)
    assert torch.all(leaves["gene"].grad[1] != 0) and torch.all(leaves["expr"].grad[4] == 0)


def test_term_names_are_canonical_and_scale_is_clamped():
    emb, present = _batch()
    reordered = {m: emb[m] for m in reversed(MODS)}
    ls = torch.tensor(math.log(500.0), requires_grad=True)
    out = ClipLoss()(reordered, present, ls)
    assert [k for k in out if k.startswith("clip/")] == ["clip/gene-expr", "clip/gene-mri", "clip/expr-mri"]
    assert out["temperature"].item() == pytest.approx(0.01)
    out["clip"].backward()
    assert ls.grad.item() == 0.0  # above ln 100 the scale is flat


def test_pairs_with_fewer_than_two_patients_are_left_out():
    emb, present = _batch(n=5)
    present["expr"][4] = True
    present["mri"] = torch.tensor([True, False, False, False, False])  # one patient with mri: no negatives
    leaves = _leaves(emb)
    out = ClipLoss()(leaves, present, torch.tensor(2.0))
    assert set(out) == {"clip/gene-expr", "clip", "temperature"}
    torch.testing.assert_close(out["clip"], out["clip/gene-expr"])
    present = {m: torch.tensor([True, False, False, False, False]) for m in MODS}
    out = ClipLoss()(leaves, present, torch.tensor(2.0))
    assert set(out) == {"clip", "temperature"} and out["clip"].item() == 0.0
    out["clip"].backward()  # still a graph: the step does not crash on such a batch
    assert torch.all(leaves["gene"].grad == 0)


def test_bad_arguments():
    with pytest.raises(ValueError):
        ClipLoss(modalities=["gene"])
    emb, present = _batch()
    with pytest.raises(ValueError, match="signal"):
        ClipLoss(modalities=["gene", "signal"])(emb, present, torch.tensor(1.0))
    with pytest.raises(ValueError):
        ClipLoss()({"gene": emb["gene"], "mri": emb["mri"][:4]}, present, torch.tensor(1.0))


def test_helpers_without_torch_distributed():
    x = torch.randn(3, 2)
    assert not pdist.is_distributed() and pdist.world_size() == 1 and pdist.rank() == 0
    assert pdist.all_gather_with_grad(x) is x and pdist.all_gather(x) is x


# ---------------------------------------------------------------- two CPU processes over gloo

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_rank(rank: int, world: int, bounds: list[int], log_scale: float) -> None:
    """Rank ``rank`` holds rows bounds[rank]:bounds[rank + 1] of the full batch."""
    emb, present = _batch(n=bounds[-1], seed=1)
    full = _leaves(emb)
    ls_full = torch.tensor(log_scale, dtype=torch.float64, requires_grad=True)
    expected = ClipLoss(gather=False)(full, present, ls_full)
    expected["clip"].backward()

    sl = slice(bounds[rank], bounds[rank + 1])
    local = {m: e[sl].clone().requires_grad_() for m, e in emb.items()}
    ls = torch.tensor(log_scale, dtype=torch.float64, requires_grad=True)
    out = ClipLoss()(local, {m: p[sl] for m, p in present.items()}, ls)
    assert set(out) == set(expected)
    for k in expected:
        torch.testing.assert_close(out[k], expected[k].detach())
    out["clip"].backward()
    # Convention: local rows get world * dL/dz; DDP's mean over ranks then gives the full-batch gradient.
    for m in MODS:
        torch.testing.assert_close(local[m].grad / world, full[m].grad[sl])
    torch.testing.assert_close(ls.grad, ls_full.grad)  # replicated: equal on every rank, mean unchanged


def _worker(rank: int, world: int, port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        assert pdist.is_distributed() and pdist.world_size() == world and pdist.rank() == rank
        _check_rank(rank, world, [0, 4, 8], math.log(1 / 0.07))  # half the batch each
        _check_rank(rank, world, [0, 5, 7], math.log(5.0))  # uneven last batch
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_two_process_gather_matches_full_batch():
    mp.spawn(_worker, args=(2, _free_port()), nprocs=2, join=True)
