"""Pretext helpers: haplotype-block and patch masks, LD blocks, the pretext and projection heads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from phenoclip.models import masks
from phenoclip.models.heads import ProjectionHead, VariantMaskingHead, VolumeReconstructionHead
from phenoclip.models.masks import estimate_ld_blocks, haplotype_block_mask, random_patch_mask
from phenoclip.models.mri import patchify


def _blocks(sizes) -> np.ndarray:
    return np.repeat(np.arange(len(sizes)), sizes)


def _whole_blocks(mask: torch.Tensor, ids: np.ndarray) -> bool:
    for b in np.unique(ids):
        cols = mask[:, torch.as_tensor(ids == b)]
        if not (cols.all(1) | (~cols).all(1)).all():
            return False
    return True


def test_haplotype_block_mask_hides_whole_blocks_at_the_requested_rate():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 21, size=120)
    ids = _blocks(sizes)
    v = len(ids)
    mask = haplotype_block_mask(ids, 0.25, batch_size=64, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (64, v) and mask.dtype == torch.bool
    assert _whole_blocks(mask, ids)
    frac = mask.float().mean(1)
    assert (frac - 0.25).abs().max() <= sizes.max() / 2 / v + 1e-9     # within half the largest block
    assert abs(frac.mean().item() - 0.25) < 0.01
    assert len({tuple(r.tolist()) for r in mask}) == 64                   # rows differ
    again = haplotype_block_mask(ids, 0.25, batch_size=64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)


def test_haplotype_block_mask_windows_and_scattered_blocks():
    mask = haplotype_block_mask(None, 0.5, batch_size=8, n_variants=100, window=10,
                                generator=torch.Generator().manual_seed(1))
    assert _whole_blocks(mask, np.arange(100) // 10)
    assert (mask.sum(1) == 50).all()
    scattered = np.arange(60) % 6                                         # blocks need not be contiguous
    m2 = haplotype_block_mask(torch.as_tensor(scattered), 0.5, batch_size=5, generator=torch.Generator().manual_seed(2))
    assert _whole_blocks(m2, scattered) and (m2.sum(1) == 30).all()
    assert not haplotype_block_mask(scattered, 0.0, batch_size=2).any()
    with pytest.raises(ValueError):
        haplotype_block_mask(None, 0.5, batch_size=2)
    with pytest.raises(ValueError):
        haplotype_block_mask(scattered, 1.0, batch_size=2)


def test_random_patch_mask_exact_count():
    m = random_patch_mask(16, 80, 0.75, torch.Generator().manual_seed(0))
    assert m.shape == (16, 80) and (m.sum(1) == 60).all()
    assert not torch.equal(m[0], m[1])
    assert not random_patch_mask(2, 10, 0.0).any()
    with pytest.raises(ValueError):
        random_patch_mask(2, 10, 1.5)


def _ld_dosage(sizes, n_samples=400, seed=0, missing=0.01) -> np.ndarray:
    """Each block copies one latent allele per chromosome into all its variants (2 % flips)."""
    rng = np.random.default_rng(seed)
    cols = []
    for size in sizes:
        freq = rng.uniform(0.2, 0.8)
        latent = rng.random((n_samples, 2)) < freq
        flips = rng.random((n_samples, 2, size)) < 0.02
        cols.append((latent[:, :, None] ^ flips).sum(1))
    d = np.concatenate(cols, axis=1).astype(np.int8)
    d[rng.random(d.shape) < missing] = -1
    return d


def test_estimate_ld_blocks_recovers_planted_boundaries():
    sizes = [5, 12, 1, 30, 8, 20, 3, 1, 1, 9]
    ids = estimate_ld_blocks(_ld_dosage(sizes), r2_threshold=0.3, max_block=64)
    assert ids.dtype == np.int64
    np.testing.assert_array_equal(ids, _blocks(sizes))
    capped = estimate_ld_blocks(_ld_dosage(sizes), r2_threshold=0.3, max_block=16)
    np.testing.assert_array_equal(np.bincount(capped), [5, 12, 1, 16, 14, 8, 16, 4, 3, 1, 1, 9])


def test_estimate_ld_blocks_is_the_same_in_chunks(monkeypatch):
    d = _ld_dosage([5, 12, 1, 30, 8] * 4, n_samples=100, seed=3)
    whole = estimate_ld_blocks(d)
    monkeypatch.setattr(masks, "_LD_CHUNK", 7)
    np.testing.assert_array_equal(estimate_ld_blocks(d), whole)


def test_estimate_ld_blocks_edge_cases():
    mono = np.zeros((10, 4), dtype=np.int8)                              # monomorphic: r2 = 0 everywhere
    np.testing.assert_array_equal(estimate_ld_blocks(mono), [0, 1, 2, 3])
    assert estimate_ld_blocks(np.zeros((3, 0))).shape == (0,)
    with pytest.raises(ValueError):
        estimate_ld_blocks(np.zeros(5))
    with pytest.raises(ValueError):
        estimate_ld_blocks(mono, r2_threshold=2.0)


def test_heads_shapes():
    head = VariantMaskingHead(16, n_variants=50, patch=8)
    logits = head(torch.randn(2, 7, 16))
    assert logits.shape == (2, 50, 3)
    with pytest.raises(ValueError, match="7 tokens"):
        head(torch.randn(2, 6, 16))
    rec = VolumeReconstructionHead(16, (4, 4, 6), in_channels=2, hidden=32)
    vol = torch.randn(2, 2, 8, 8, 12)
    assert rec(torch.randn(2, 8, 16)).shape == patchify(vol, (4, 4, 6)).shape
    assert len(ProjectionHead(16, 8).net) == 1
    proj = ProjectionHead(16, 8, hidden=32)
    assert proj(torch.randn(5, 16)).shape == (5, 8) and len(proj.net) == 3
    with pytest.raises(ValueError):
        ProjectionHead(16, 0)
