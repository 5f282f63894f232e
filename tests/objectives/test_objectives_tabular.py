"""SCARF, VIME and BYOL: corruption fractions and sources, hand-computed losses, EMA arithmetic."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from phenoclip.objectives import ByolLoss, EmaUpdater, ScarfCorruption, ScarfLoss, VimeLoss, VimeMasking, info_nce


def _tables(n_rows: int, n_feat: int, n_train: int = 500):
    """Rows of negatives; training column f holds 1000 f + 0..n_train-1, so every value names its column."""
    g = torch.Generator().manual_seed(0)
    marginals = 1000.0 * torch.arange(n_feat) + torch.arange(n_train, dtype=torch.float32).unsqueeze(1)
    x = -1.0 - torch.rand(n_rows, n_feat, generator=g)
    return x, marginals


@pytest.mark.parametrize("n_feat, rate", [(10, 0.3), (16, 0.3), (20, 0.6)])
def test_scarf_corrupts_the_requested_fraction(n_feat, rate):
    x, marginals = _tables(10_000, n_feat)
    xc, mask = ScarfCorruption(marginals, rate)(x, generator=torch.Generator().manual_seed(1))
    assert mask.float().mean().item() == pytest.approx(rate, rel=0.01)
    counts = mask.sum(dim=1)
    # an exact count per row; stochastic rounding when rate * F is not whole (16 * 0.3 = 4.8)
    assert set(counts.unique().tolist()) <= {math.floor(rate * n_feat), math.ceil(rate * n_feat)}
    assert torch.equal(mask, xc >= 0)  # corrupted entries are training values, the rest untouched
    assert torch.equal(xc[~mask], x[~mask])
    column = torch.arange(n_feat).expand_as(xc)
    assert torch.equal((xc[mask] // 1000).long(), column[mask])  # drawn from the same column
    assert torch.all(xc[mask] % 1000 < 500)


def test_scarf_edge_rates_and_checks():
    x, marginals = _tables(50, 8)
    assert not ScarfCorruption(marginals, 0.0)(x)[1].any()
    assert ScarfCorruption(marginals, 1.0)(x)[1].all()
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError):
            ScarfCorruption(marginals, bad)
    with pytest.raises(ValueError):
        ScarfCorruption(marginals, 0.5)(x[:, :4])


def test_vime_masking_fraction_and_sources():
    x, marginals = _tables(10_000, 10)
    xt, mask = VimeMasking(0.3, marginals)(x, generator=torch.Generator().manual_seed(2))
    assert mask.float().mean().item() == pytest.approx(0.3, abs=0.01)  # Bernoulli(0.3) entries
    assert torch.equal(mask, xt != x) and torch.equal((xt[mask] // 1000).long(), torch.arange(10).expand_as(xt)[mask])
    # without marginals: each column shuffled within the batch (VIME's reference code)
    xt, mask = VimeMasking(0.5)(x[:200], generator=torch.Generator().manual_seed(3))
    for f in range(10):
        assert set(xt[:, f].tolist()) <= set(x[:200, f].tolist())
    assert 0.4 < mask.float().mean().item() < 0.6


def test_info_nce_hand_value():
    tau = 0.5
    anchor = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # unnormalised on purpose
    positive = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    c = 1 / math.sqrt(2)
    row0 = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(c / tau)))
    row1 = -math.log(math.exp(c / tau) / (math.exp(0.0) + math.exp(c / tau)))
    assert info_nce(anchor, positive, tau).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    assert ScarfLoss(tau)(anchor, positive)["scarf"].item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_vime_loss_hand_values():
    logits = torch.tensor([[0.0, 2.0]])
    mask = torch.tensor([[True, False]])
    out = VimeLoss(alpha=2.0)(logits, torch.tensor([[1.0, 3.0]]), mask, torch.tensor([[0.0, 1.0]]))
    bce = (math.log(2) + math.log(1 + math.exp(2))) / 2
    assert out["vime/mask"].item() == pytest.approx(bce, rel=1e-6)
    assert out["vime/recon"].item() == pytest.approx((1 + 4) / 2)
    assert out["vime"].item() == pytest.approx(bce + 2 * 2.5, rel=1e-6)


def test_byol_values_and_no_target_gradient():
    v = torch.randn(4, 6)
    loss = ByolLoss()
    assert loss(v, 2 * v, 3 * v, v)["byol"].item() == pytest.approx(0.0, abs=1e-6)
    assert loss(v, v, -v, -2 * v)["byol"].item() == pytest.approx(4.0, abs=1e-6)
    online, target = nn.Linear(6, 3), nn.Linear(6, 3)
    x1, x2 = torch.randn(5, 6), torch.randn(5, 6)
    loss(online(x1), online(x2), target(x1), target(x2))["byol"].backward()
    assert all(p.grad is None for p in target.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in online.parameters())


def test_ema_copies_then_averages_exactly():
    online, target = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)), nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = EmaUpdater(online, target, base_tau=0.9)
    for t, o in zip(target.state_dict().values(), online.state_dict().values()):
        assert torch.equal(t, o)
    assert not any(p.requires_grad for p in target.parameters())
    before = [p.detach().clone() for p in target.parameters()]
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
        online[1].running_mean.fill_(7.0)
    assert ema.step() == 0.9
    for t, b, o in zip(target.parameters(), before, online.parameters()):
        assert torch.equal(t, b * 0.9 + o * (1 - 0.9))
    assert torch.equal(target[1].running_mean, torch.full((2,), 7.0))  # buffers copied
    assert ema.state_dict() == {"steps": 1}


def test_ema_cosine_schedule_rises_to_one():
    ema = EmaUpdater(nn.Linear(2, 2), nn.Linear(2, 2), base_tau=0.99, total_steps=10)
    taus = [ema.step() for _ in range(12)]
    assert taus[0] == pytest.approx(0.99)
    assert taus[5] == pytest.approx(1 - 0.01 / 2)
    assert taus[10] == taus[11] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(taus, taus[1:]))
    resumed = EmaUpdater(nn.Linear(2, 2), nn.Linear(2, 2), base_tau=0.99, total_steps=10)
    resumed.load_state_dict({"steps": 5})
    assert resumed.tau == pytest.approx(taus[5])
    with pytest.raises(ValueError):
        EmaUpdater(nn.Linear(2, 2), nn.Linear(2, 2), base_tau=1.5)
