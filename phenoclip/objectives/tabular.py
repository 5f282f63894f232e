"""Self-supervised objectives for tabular rows (gene expression): SCARF, VIME and BYOL (paper 002).

Corruptions replace a feature by a draw from that feature's empirical marginal, i.e. the same
feature of a random training row, so a corrupted value is always one the feature really takes.
They act on data (no gradient) and return ``(x_corrupted, mask)`` with ``mask`` True where an
entry was corrupted; pass a ``torch.Generator`` for reproducible draws.

Fraction conventions
--------------------
* SCARF (:class:`ScarfCorruption`): every row gets an exact count of corrupted features, as in
  the SCARF reference code, but with *stochastic rounding*: ``floor(rate * F)`` plus one more with
  probability ``frac(rate * F)``. When ``rate * F`` is whole every row has exactly that many; when
  not (``rate=0.3``, ``F=16``) rows have 4 or 5 and the mean fraction is still ``rate`` (plain
  rounding would give 5/16 = 31.25%).
* VIME (:class:`VimeMasking`): each entry independently with probability ``rate`` (VIME's
  Bernoulli mask vectors).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from phenoclip.ops.draws import Draws, as_draws


def _check_rate(rate: float) -> float:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"corruption rate must be in [0, 1], got {rate}")
    return float(rate)


def _marginal_draws(marginals: torch.Tensor, batch: int, draws: Draws) -> torch.Tensor:
    """(batch, F): entry (b, f) is feature f of a random row of ``marginals`` (N, F), drawn independently."""
    rows = draws.randint(0, marginals.shape[0], (batch, marginals.shape[1]), device=marginals.device)
    return marginals.gather(0, rows)


class ScarfCorruption(nn.Module):
    """SCARF's random feature corruption.

    Parameters
    ----------
    marginals : (N_train, F) training rows to draw replacement values from (a random subset
        is enough; kept as a non-persistent buffer, so it moves with ``.to()`` but never enters
        a checkpoint).
    rate : fraction of features corrupted per row (SCARF's c, 0.6 in the paper).
    """

    def __init__(self, marginals: torch.Tensor, rate: float = 0.6) -> None:
        super().__init__()
        marginals = torch.as_tensor(marginals)
        if marginals.ndim != 2 or marginals.shape[0] < 1 or marginals.shape[1] < 1:
            raise ValueError(f"marginals must be a non-empty (N_train, F) table, got {tuple(marginals.shape)}")
        self.rate = _check_rate(rate)
        self.register_buffer("marginals", marginals, persistent=False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, generator: torch.Generator | Draws | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, F) -> (x_corrupted (B, F), mask (B, F) bool, True where replaced).

        A replacement can equal the original value (same row drawn, or a tied value); it still
        counts as corrupted, so ``mask`` holds exactly the requested count.
        """
        batch, n_feat = x.shape
        if n_feat != self.marginals.shape[1]:
            raise ValueError(f"x has {n_feat} features, marginals {self.marginals.shape[1]}")
        target = self.rate * n_feat
        target = round(target) if abs(target - round(target)) < 1e-9 else target  # 0.7 * 10 = 7.000000000000001
        whole = math.floor(target)
        rng = as_draws(generator)  # drawn where the generator lives, returned on x's device
        extra = rng.rand((batch,), device=x.device) < target - whole
        count = whole + extra.long()  # (B,) features to corrupt in each row
        # rank of each feature under uniform noise = a random permutation per row; keep the first `count`
        noise = rng.rand((batch, n_feat), device=x.device)
        mask = noise.argsort(dim=1).argsort(dim=1) < count.unsqueeze(1)
        draws = _marginal_draws(self.marginals, batch, rng).to(x)
        return torch.where(mask, draws, x), mask


def info_nce(z_anchor: torch.Tensor, z_positive: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """SCARF's InfoNCE: each anchor must pick out its own corrupted view among the batch's views.

    ``z_anchor``, ``z_positive``: (B, D), L2-normalised here. Returns the scalar
    ``mean_i -log softmax_j(cos(a_i, p_j) / temperature)[i]`` (one direction, as in the SCARF paper).
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    logits = F.normalize(z_anchor, dim=1) @ F.normalize(z_positive, dim=1).T / temperature
    return F.cross_entropy(logits, torch.arange(z_anchor.shape[0], device=z_anchor.device))


class ScarfLoss(nn.Module):
    """:func:`info_nce` as a module. forward(z_anchor (B, D), z_positive (B, D)) -> ``{"scarf"}``."""

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, z_anchor: torch.Tensor, z_positive: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"scarf": info_nce(z_anchor, z_positive, self.temperature)}


class VimeMasking(nn.Module):
    """VIME's mask vectors and corruption ``x_tilde = m * x_bar + (1 - m) * x``.

    Parameters
    ----------
    rate : VIME's p_m, probability that an entry is masked.
    marginals : optional (N_train, F) rows for ``x_bar``; without it each column is shuffled within
        the batch, as in the VIME reference code.
    """

    def __init__(self, rate: float = 0.3, marginals: torch.Tensor | None = None) -> None:
        super().__init__()
        self.rate = _check_rate(rate)
        if marginals is not None:
            marginals = torch.as_tensor(marginals)
            if marginals.ndim != 2 or marginals.shape[0] < 1:
                raise ValueError(f"marginals must be a non-empty (N_train, F) table, got {tuple(marginals.shape)}")
        self.register_buffer("marginals", marginals, persistent=False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, generator: torch.Generator | Draws | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, F) -> (x_tilde (B, F), mask (B, F) bool).

        ``mask`` is VIME's pretext label: True where the value actually changed (the reference
        code's ``x != x_tilde``), since a swap for an equal value (a zero count for a zero count)
        cannot be detected. For continuous features its mean is ``rate``.
        """
        batch, n_feat = x.shape
        rng = as_draws(generator)  # drawn where the generator lives, returned on x's device
        if self.marginals is not None:
            if n_feat != self.marginals.shape[1]:
                raise ValueError(f"x has {n_feat} features, marginals {self.marginals.shape[1]}")
            draws = _marginal_draws(self.marginals, batch, rng).to(x)
        else:  # an independent permutation of the batch rows per column
            perm = rng.rand((batch, n_feat), device=x.device)
            draws = x.gather(0, perm.argsort(dim=0))
        chosen = rng.rand((batch, n_feat), device=x.device) < self.rate
        x_tilde = torch.where(chosen, draws, x)
        return x_tilde, x_tilde != x


class VimeLoss(nn.Module):
    """VIME's self-supervised loss: mask estimation + ``alpha`` * feature reconstruction.

    forward(mask_logits (B, F), x_recon (B, F), mask (B, F) bool, x (B, F) original) ->
    ``{"vime/mask": BCE of mask_logits against mask, "vime/recon": MSE of x_recon against x,
    "vime": mask + alpha * recon}``.
    """

    def __init__(self, alpha: float = 2.0) -> None:
        super().__init__()
        if not alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha = float(alpha)

    def forward(self, mask_logits: torch.Tensor, x_recon: torch.Tensor, mask: torch.Tensor,
                x: torch.Tensor) -> dict[str, torch.Tensor]:
        if not mask_logits.shape == x_recon.shape == mask.shape == x.shape:
            raise ValueError("VimeLoss: mask_logits, x_recon, mask and x must share one (B, F) shape")
        mask_term = F.binary_cross_entropy_with_logits(mask_logits, mask.to(mask_logits.dtype))
        recon_term = F.mse_loss(x_recon, x)
        return {"vime/mask": mask_term, "vime/recon": recon_term, "vime": mask_term + self.alpha * recon_term}


def _byol_distance(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z)``, in [0, 4]; ``z`` gets no gradient."""
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=-1)).mean()


class ByolLoss(nn.Module):
    """BYOL's normalised-MSE between online predictions and target projections.

    forward(p1, p2, z1, z2), all (B, D): ``p_v`` the online network's prediction for view v,
    ``z_v`` the target network's projection of view v. Symmetric: p1 against z2 and p2 against z1,
    *averaged* (BYOL sums the two; the mean keeps the term in [0, 4], 0 for identical directions and
    4 for opposite ones, at half the gradient). Targets are detached: the target network learns only
    through :class:`EmaUpdater`. Returns ``{"byol"}``.
    """

    def forward(self, p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"byol": (_byol_distance(p1, z2) + _byol_distance(p2, z1)) / 2}


class EmaUpdater:
    """Keeps BYOL's target network an exponential moving average of the online network.

    At construction the online weights and buffers are copied into ``target``, whose parameters stop
    requiring grad. Each :meth:`step` (once per optimiser step) sets, for every parameter,
    ``target = tau * target + (1 - tau) * online`` with ``tau`` from BYOL's cosine schedule
    ``1 - (1 - base_tau) * (cos(pi * k / total_steps) + 1) / 2`` (``k`` = steps taken, capped at
    ``total_steps``; constant ``base_tau`` when ``total_steps`` is None), so tau rises to 1. Buffers
    (normalisation statistics) are copied, not averaged. Not an ``nn.Module``: it owns no weights;
    save :meth:`state_dict` with the checkpoint to resume the schedule.
    """

    def __init__(self, online: nn.Module, target: nn.Module, base_tau: float = 0.996,
                 total_steps: int | None = None) -> None:
        if not 0.0 <= base_tau <= 1.0:
            raise ValueError(f"base_tau must be in [0, 1], got {base_tau}")
        if total_steps is not None and total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.online, self.target = online, target
        self.base_tau, self.total_steps, self.steps = float(base_tau), total_steps, 0
        target.load_state_dict(online.state_dict())  # strict: the two networks must match
        target.requires_grad_(False)

    @property
    def tau(self) -> float:
        """The decay the next :meth:`step` applies."""
        if self.total_steps is None:
            return self.base_tau
        k = min(self.steps, self.total_steps)
        return 1.0 - (1.0 - self.base_tau) * (math.cos(math.pi * k / self.total_steps) + 1.0) / 2.0

    @torch.no_grad()
    def step(self) -> float:
        """Move the target towards the online network; returns the tau used."""
        tau = self.tau
        for t, o in zip(self.target.parameters(), self.online.parameters()):
            # two products then a sum, each rounded once: exactly tau * t + (1 - tau) * o (no fused multiply-add)
            t.mul_(tau).add_(o.detach() * (1.0 - tau))
        for t, o in zip(self.target.buffers(), self.online.buffers()):
            t.copy_(o)
        self.steps += 1
        return tau

    def state_dict(self) -> dict[str, int]:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.steps = int(state["steps"])
