"""Biosignal encoder: the batch's ``signal`` sub-dict, ``SIGNALS (B, C, T)`` float32.

:class:`SignalCNNTransformer` (paper 000): a strided 1D CNN stem extracts local waveform
patterns and shortens the sequence by ``prod(stem_strides)``; a transformer models the
long-range rhythm over the resulting tokens.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from phenoclip.data.batch import SIGNALS
from phenoclip.models.heads import (Encoder, check_choice, check_dropout, check_heads, check_positive,
                                    check_token_mask, encode_with_cls, json_config, sinusoidal,
                                    transformer_stack)


def _norm(kind: str, channels: int) -> nn.Module:
    return nn.BatchNorm1d(channels) if kind == "batch" else nn.GroupNorm(math.gcd(8, channels), channels)


class SignalCNNTransformer(Encoder):
    """1D CNN stem -> tokens ``(B, L, W)`` -> pre-norm transformer -> mean (or CLS) pool.

    Parameters
    ----------
    n_channels, length:
        ``C`` and ``T`` of the signals store windows.
    width, depth, heads, mlp_ratio, dropout:
        Transformer size (``width % heads == 0``).
    stem_channels, stem_strides, kernel_size:
        One ``Conv1d(k, stride, padding k//2) - Norm - GELU`` per entry, then a 1x1 conv to
        ``width``. Token ``i`` is centred on sample ``i * S``, ``S = prod(stem_strides)``;
        ``n_tokens`` follows the conv arithmetic (``ceil(T / S)`` for odd ``kernel_size``).
    norm:
        ``batch`` or ``group`` (GroupNorm, for small or uneven batches).
    pool:
        ``mean`` over tokens or ``cls``.

    Tokens get a fixed sinusoidal position code. With a token mask, the samples of each masked
    token's span ``[i * S, (i + 1) * S)`` (see :meth:`time_mask`) are zeroed in the input, so the
    stem's overlapping receptive fields cannot leak them into neighbours, and the masked tokens
    are replaced by a learned mask token before the transformer.
    """

    supports_token_mask = True

    def __init__(self, n_channels: int, length: int, width: int = 64, depth: int = 2, heads: int = 4,
                 mlp_ratio: float = 4.0, stem_channels: Sequence[int] = (32, 64), stem_strides: Sequence[int] = (4, 4),
                 kernel_size: int = 7, norm: str = "batch", pool: str = "mean", dropout: float = 0.0):
        super().__init__()
        stem_channels, stem_strides = tuple(int(c) for c in stem_channels), tuple(int(s) for s in stem_strides)
        check_positive(n_channels=n_channels, length=length, depth=depth, mlp_ratio=mlp_ratio, kernel_size=kernel_size)
        check_heads(width, heads)
        if width % 2:
            raise ValueError(f"width must be even for the sinusoidal position code, got {width}")
        if len(stem_channels) != len(stem_strides) or not stem_channels:
            raise ValueError(f"stem_channels {stem_channels} and stem_strides {stem_strides} need the same, "
                             "non-zero length")
        check_positive(**{f"stem_channels[{i}]": c for i, c in enumerate(stem_channels)},
                       **{f"stem_strides[{i}]": s for i, s in enumerate(stem_strides)})
        check_choice("norm", norm, ("batch", "group"))
        check_choice("pool", pool, ("mean", "cls"))
        check_dropout(dropout)
        n = length
        for s in stem_strides:
            n = (n + 2 * (kernel_size // 2) - kernel_size) // s + 1
            if n < 1:
                raise ValueError(f"signals of length {length} are too short for stem strides {stem_strides} "
                                 f"with kernel {kernel_size}")
        self.config = json_config(n_channels=n_channels, length=length, width=width, depth=depth, heads=heads,
                                  mlp_ratio=mlp_ratio, stem_channels=stem_channels, stem_strides=stem_strides,
                                  kernel_size=kernel_size, norm=norm, pool=pool, dropout=dropout)
        self.n_channels, self.length, self.width, self.n_tokens, self.pool = n_channels, length, width, n, pool
        self.stride = math.prod(stem_strides)
        layers: list[nn.Module] = []
        c_in = n_channels
        for c, s in zip(stem_channels, stem_strides):
            layers += [nn.Conv1d(c_in, c, kernel_size, stride=s, padding=kernel_size // 2, bias=False),
                       _norm(norm, c), nn.GELU()]
            c_in = c
        layers.append(nn.Conv1d(c_in, width, 1))
        self.stem = nn.Sequential(*layers)
        self.mask_token = nn.Parameter(torch.randn(width) * 0.02)
        self.cls_token = nn.Parameter(torch.randn(width) * 0.02) if pool == "cls" else None
        self.dropout = nn.Dropout(dropout)
        self.encoder = transformer_stack(width, depth, heads, mlp_ratio, dropout)

    def time_mask(self, token_mask: Tensor) -> Tensor:
        """``(B, L)`` token mask -> ``(B, T)`` sample mask: token ``i`` covers ``[i * S, (i + 1) * S)``."""
        per_sample = token_mask.repeat_interleave(self.stride, dim=1)[:, : self.length]
        return nn.functional.pad(per_sample, (0, self.length - per_sample.shape[1]))

    def forward_features(self, inputs: dict, token_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(pooled (B, W), tokens (B, L, W))`` from one pass."""
        x = inputs[SIGNALS]
        if x.dim() != 3 or tuple(x.shape[1:]) != (self.n_channels, self.length):
            raise ValueError(f"'{SIGNALS}' must be (B, {self.n_channels}, {self.length}), got {tuple(x.shape)}")
        if check_token_mask(token_mask, x.shape[0], self.n_tokens) is not None:
            x = x.masked_fill(self.time_mask(token_mask)[:, None, :], 0.0)
        t = self.stem(x).transpose(1, 2)                                              # (B, L, W)
        if token_mask is not None:
            t = torch.where(token_mask[..., None], self.mask_token.to(t.dtype), t)
        pos = sinusoidal(torch.arange(t.shape[1], device=t.device), self.width).to(t.dtype)
        t = self.dropout(t + pos)
        return encode_with_cls(self.encoder, t, self.cls_token)
