"""Token masks of the pretext tasks: random patches (MAE) and whole haplotype blocks, and the cheap
LD blocks that make a block mask hide correlated neighbours together.

Shapes: ``B`` batch, ``L`` tokens, ``V`` variants, ``S`` samples.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from phenoclip.models.heads import check_positive
from phenoclip.ops.draws import Draws, as_draws


def _check_rate(rate: float) -> None:
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"mask rate must be in [0, 1), got {rate}")


def random_patch_mask(batch_size: int, n_tokens: int, rate: float, generator: torch.Generator | Draws | None = None,
                      device: torch.device | str | None = None) -> Tensor:
    """bool ``(B, L)`` with exactly ``round(rate * L)`` True per row, at random places (MAE)."""
    check_positive(batch_size=batch_size, n_tokens=n_tokens)
    _check_rate(rate)
    n_mask = int(round(rate * n_tokens))
    noise = as_draws(generator).rand((batch_size, n_tokens))
    ranks = noise.argsort(dim=1).argsort(dim=1)
    return (ranks < n_mask).to(device)


def haplotype_block_mask(block_ids: Tensor | np.ndarray | None, rate: float, batch_size: int,
                         generator: torch.Generator | Draws | None = None, *, n_variants: int | None = None,
                         window: int = 16, device: torch.device | str | None = None) -> Tensor:
    """bool ``(B, V)`` masking whole haplotype blocks, about ``rate`` of the variants per row.

    Masking single SNPs is a trivial task when neighbours in LD carry the same allele; hiding a
    whole block forces the model to infer it from other blocks (paper 000's haplotype masking).

    Parameters
    ----------
    block_ids:
        ``(V,)`` ints, equal for variants of one block (e.g. :func:`estimate_ld_blocks`); blocks
        need not be contiguous. ``None`` uses contiguous windows of ``window`` variants
        (then ``n_variants`` is required).
    rate:
        Target fraction in ``[0, 1)``. Per row the blocks are taken in random order while the
        running total stays within half a block of ``rate * V``, so the masked fraction is
        ``rate`` up to half the largest block.
    """
    _check_rate(rate)
    check_positive(batch_size=batch_size)
    if block_ids is None:
        if n_variants is None:
            raise ValueError("give block_ids or n_variants")
        check_positive(n_variants=n_variants, window=window)
        block_ids = np.arange(n_variants) // window
    ids = np.asarray(block_ids.cpu() if isinstance(block_ids, Tensor) else block_ids)
    if ids.ndim != 1 or len(ids) == 0:
        raise ValueError(f"block_ids must be a non-empty 1-D array, got shape {ids.shape}")
    _, inverse, sizes = np.unique(ids, return_inverse=True, return_counts=True)
    inverse_t, sizes_t = torch.as_tensor(inverse), torch.as_tensor(sizes, dtype=torch.float64)
    n_blocks = len(sizes)
    order = as_draws(generator).rand((batch_size, n_blocks)).argsort(dim=1)   # (B, K) random block order
    sz = sizes_t[order]
    before = sz.cumsum(1) - sz                                                  # variants masked before this one
    take = (before + sz / 2) <= rate * len(ids)
    block_mask = torch.zeros(batch_size, n_blocks, dtype=torch.bool).scatter(1, order, take)
    return block_mask[:, inverse_t].to(device)


_LD_CHUNK = 4096  # variant columns per step of estimate_ld_blocks: bounds the float64 copies


def _adjacent_r2(d: np.ndarray) -> np.ndarray:
    """``(S, n)`` dosages -> ``(n - 1,)`` r2 of each column with the next (pairwise complete; 0 if undefined)."""
    d = d.astype(np.float64)
    x, y = d[:, :-1], d[:, 1:]
    ok = (x >= 0) & (y >= 0)
    n = ok.sum(0)
    x, y = np.where(ok, x, 0.0), np.where(ok, y, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mx, my = x.sum(0) / n, y.sum(0) / n
        cov = (x * y).sum(0) / n - mx * my
        vx = (x * x).sum(0) / n - mx * mx
        vy = (y * y).sum(0) / n - my * my
        r2 = cov * cov / (vx * vy)
    return np.where((n > 1) & (vx > 1e-12) & (vy > 1e-12), r2, 0.0)


def estimate_ld_blocks(dosage: np.ndarray, r2_threshold: float = 0.3, max_block: int = 64) -> np.ndarray:
    """Cheap LD blocks from a dosage matrix: ``(S, V)`` -> ``(V,)`` int64 block ids ``0, 1, ...``.

    Variants are taken in column (genomic) order; a new block starts where the squared Pearson
    correlation of the dosages with the *previous* variant falls below ``r2_threshold`` (missing
    calls, ``< 0``, are left out pairwise; a monomorphic pair counts as r2 = 0), and where the
    current block reaches ``max_block`` variants. This is an adjacent-pair heuristic, not the
    confidence-interval haplotype blocks of Gabriel et al. (``plink --blocks``): a single poorly
    tagged variant splits a block. It is meant to make :func:`haplotype_block_mask` hide
    correlated neighbours together; it reads the matrix 4,096 variants at a time, so memory stays
    small and 10^5 variants take about a second.
    """
    d = np.asarray(dosage)
    if d.ndim != 2:
        raise ValueError(f"dosage must be (samples, variants), got shape {d.shape}")
    if not 0.0 <= r2_threshold <= 1.0:
        raise ValueError(f"r2_threshold must be in [0, 1], got {r2_threshold}")
    check_positive(max_block=max_block)
    n_var = d.shape[1]
    if n_var == 0:
        return np.zeros(0, dtype=np.int64)
    r2 = np.concatenate([_adjacent_r2(d[:, a: a + _LD_CHUNK + 1]) for a in range(0, n_var - 1, _LD_CHUNK)]
                        + [np.zeros(0)])
    starts = np.concatenate([[True], r2 < r2_threshold])
    ids = np.empty(n_var, dtype=np.int64)
    block, size = -1, 0
    for j in range(n_var):          # the max_block cut depends on where the block began: a scan
        if starts[j] or size == max_block:
            block, size = block + 1, 0
        ids[j] = block
        size += 1
    return ids
