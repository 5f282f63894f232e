"""3D volume encoder: the batch's ``mri`` sub-dict, ``IMAGES (B, C, D, H, W)`` float32.

:class:`VolumeViT` is a 3D ViT composed from MONAI's ``PatchEmbeddingBlock`` and the same
pre-norm ``nn.TransformerEncoder`` as the other encoders, rather than ``monai.networks.nets.ViT``:
masked volume modelling needs the mask token inserted between the patch projection and the
position embedding, and MONAI's ``TransformerBlock`` always builds a cross-attention norm that
receives no gradient (an unused parameter breaks ``DistributedDataParallel`` without
``find_unused_parameters``).

Patch order everywhere is raster over the patch grid ``(d, h, w)`` (last axis fastest), the
order of a strided Conv3d flattened; inside a patch, voxels are ``(pd, ph, pw, c)``.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch
from einops import rearrange
from monai.networks.blocks import PatchEmbeddingBlock
from torch import Tensor, nn

from phenoclip.data.batch import IMAGES
from phenoclip.models.heads import (Encoder, check_choice, check_dropout, check_heads, check_positive,
                                    check_token_mask, encode_with_cls, json_config, transformer_stack)


def _triple(name: str, value: Sequence[int] | int) -> tuple[int, int, int]:
    t = (int(value),) * 3 if isinstance(value, (int, np.integer)) else tuple(int(v) for v in value)
    if len(t) != 3:
        raise ValueError(f"{name} needs 3 sizes (D, H, W), got {value}")
    check_positive(**{f"{name}[{i}]": v for i, v in enumerate(t)})
    return t  # type: ignore[return-value]


def _check_divides(volume_shape: tuple[int, ...], patch: tuple[int, ...]) -> None:
    if any(s % p for s, p in zip(volume_shape, patch)):
        raise ValueError(f"patch {patch} does not divide the volume shape {volume_shape}")


def patchify(volume: Tensor, patch: Sequence[int] | int) -> Tensor:
    """``(B, C, D, H, W) -> (B, L, C * prod(patch))``; ``L`` patches in raster order."""
    p = _triple("patch", patch)
    _check_divides(tuple(volume.shape[2:]), p)
    return rearrange(volume, "b c (d pd) (h ph) (w pw) -> b (d h w) (pd ph pw c)", pd=p[0], ph=p[1], pw=p[2])


def unpatchify(patches: Tensor, patch: Sequence[int] | int, volume_shape: Sequence[int],
               in_channels: int = 1) -> Tensor:
    """Inverse of :func:`patchify`: ``(B, L, C * prod(patch)) -> (B, C, D, H, W)``."""
    p, s = _triple("patch", patch), _triple("volume_shape", volume_shape)
    _check_divides(s, p)
    return rearrange(patches, "b (d h w) (pd ph pw c) -> b c (d pd) (h ph) (w pw)", d=s[0] // p[0], h=s[1] // p[1],
                     w=s[2] // p[2], pd=p[0], ph=p[1], pw=p[2], c=in_channels)


class VolumeViT(Encoder):
    """3D Vision Transformer over non-overlapping patches (paper 000's imaging encoder, MGI's ViT).

    Parameters
    ----------
    volume_shape:
        ``(D, H, W)`` of the volumes store; ``patch`` must divide it.
    in_channels:
        ``C`` of the images.
    patch:
        Patch size (an int or 3 ints); ``n_tokens = prod(volume_shape / patch)``.
    width, depth, heads, mlp_ratio, dropout:
        Transformer size (``width % heads == 0``).
    pool:
        ``mean`` over patch tokens or ``cls`` (a learned token in front).
    pos_embed:
        ``learnable`` or ``sincos`` (fixed; needs ``width % 6 == 0``).

    A token mask replaces the masked patch embeddings by a learned mask token *before* the
    position embedding is added (SimMIM-style: every token stays, so shapes are fixed).
    """

    supports_token_mask = True

    def __init__(self, volume_shape: Sequence[int], in_channels: int = 1, patch: Sequence[int] | int = 8,
                 width: int = 64, depth: int = 2, heads: int = 4, mlp_ratio: float = 4.0, pool: str = "mean",
                 pos_embed: str = "learnable", dropout: float = 0.0):
        super().__init__()
        shape, p = _triple("volume_shape", volume_shape), _triple("patch", patch)
        _check_divides(shape, p)
        check_positive(in_channels=in_channels, depth=depth, mlp_ratio=mlp_ratio)
        check_heads(width, heads)
        check_choice("pool", pool, ("mean", "cls"))
        check_choice("pos_embed", pos_embed, ("learnable", "sincos"))
        check_dropout(dropout)
        if pos_embed == "sincos" and width % 6:
            raise ValueError(f"a 3D sincos position embedding needs width divisible by 6, got {width}")
        self.config = json_config(volume_shape=shape, in_channels=in_channels, patch=p, width=width, depth=depth,
                                  heads=heads, mlp_ratio=mlp_ratio, pool=pool, pos_embed=pos_embed, dropout=dropout)
        self.volume_shape, self.patch, self.in_channels = shape, p, in_channels
        self.width, self.pool = width, pool
        self.n_tokens = int(np.prod([s // q for s, q in zip(shape, p)]))
        with warnings.catch_warnings():  # MONAI's sincos table calls torch.meshgrid without indexing=
            warnings.filterwarnings("ignore", message="torch.meshgrid")
            self.embed = PatchEmbeddingBlock(in_channels, shape, p, width, heads, proj_type="conv",
                                             pos_embed_type=pos_embed, dropout_rate=dropout, spatial_dims=3)
        self.mask_token = nn.Parameter(torch.randn(width) * 0.02)
        self.cls_token = nn.Parameter(torch.randn(width) * 0.02) if pool == "cls" else None
        self.encoder = transformer_stack(width, depth, heads, mlp_ratio, dropout)

    def forward_features(self, inputs: dict, token_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(pooled (B, W), tokens (B, L, W))`` from one pass."""
        x = inputs[IMAGES]
        if x.dim() != 5 or tuple(x.shape[1:]) != (self.in_channels, *self.volume_shape):
            raise ValueError(f"'{IMAGES}' must be (B, {self.in_channels}, {', '.join(map(str, self.volume_shape))}), "
                             f"got {tuple(x.shape)}")
        t = self.embed.patch_embeddings(x).flatten(2).transpose(1, 2)         # (B, L, W)
        if check_token_mask(token_mask, t.shape[0], self.n_tokens) is not None:
            t = torch.where(token_mask[..., None], self.mask_token.to(t.dtype), t)
        t = self.embed.dropout(t + self.embed.position_embeddings)
        return encode_with_cls(self.encoder, t, self.cls_token)
