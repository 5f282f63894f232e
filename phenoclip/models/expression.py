"""Encoders of gene expression: the batch's ``expr`` sub-dict, ``VALUES (B, G)`` float32, standardised per gene.

- :class:`ExpressionMamba` (paper 003, MGI): Mamba over gene tokens, mean / mixed pooling.
- :class:`TabularMLP` (paper 002): the MLP encoder of SCARF, VIME and BYOL; also for PGS / burden vectors.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from phenoclip.data.batch import VALUES
from phenoclip.models.heads import (Encoder, PatchMixer, check_choice, check_dropout, check_positive,
                                    check_token_mask, json_config, mamba_stack, mlp, pool_tokens)


def _matrix(inputs: dict, key: str, n: int) -> Tensor:
    x = inputs[key]
    if x.dim() != 2 or x.shape[1] != n:
        raise ValueError(f"'{key}' must be (B, {n}), got {tuple(x.shape)}")
    return x


class ExpressionTokens(nn.Module):
    """Values ``(B, G)`` -> tokens ``(B, L, W)``, ``L = ceil(G / patch)``.

    A gene's embedding = its identity (learned) + a value embedding ``v * w + b``; a masked
    token has the value embedding of each of its genes replaced by a learned [MASK] vector.
    In ``sum`` patch mode ``w`` and ``b`` are slot-specific so the sum keeps genes apart.
    """

    def __init__(self, n_genes: int, width: int, patch: int = 1, patch_mixing: str = "linear"):
        super().__init__()
        check_positive(n_genes=n_genes, width=width, patch=patch)
        self.n_genes, self.patch = n_genes, patch
        self.n_tokens = math.ceil(n_genes / patch)
        slots = patch if patch_mixing == "sum" else 1
        self.identity = nn.Parameter(torch.randn(n_genes, width) * 0.02)
        self.value_weight = nn.Parameter(torch.randn(slots, width))
        self.value_bias = nn.Parameter(torch.zeros(slots, width))
        self.mask_value = nn.Parameter(torch.randn(width) * 0.02)
        self.mixer = PatchMixer(width, patch, patch_mixing)
        self.register_buffer("slot", torch.arange(n_genes) % slots, persistent=False)

    def forward(self, values: Tensor, token_mask: Tensor | None = None) -> Tensor:
        check_token_mask(token_mask, values.shape[0], self.n_tokens)
        content = values[..., None] * self.value_weight[self.slot] + self.value_bias[self.slot]   # (B, G, W)
        if token_mask is not None:
            per_gene = token_mask.repeat_interleave(self.patch, dim=1)[:, : self.n_genes]
            content = torch.where(per_gene[..., None], self.mask_value, content)
        return self.mixer(content + self.identity)                                             # (B, L, W)


class ExpressionMamba(Encoder):
    """MGI's gene encoder: gene tokens through :class:`phenoclip.models.mamba.MambaEncoder`, then pooling.

    Parameters
    ----------
    n_genes:
        Genes ``G`` of the expression store, in store order (the sequence order Mamba reads).
    width, depth, d_state, d_conv, expand, bidirectional:
        The Mamba stack; ``bidirectional`` also reads the genes backwards (gene order has no direction).
    patch, patch_mixing:
        Neighbouring genes per token (see :class:`ExpressionTokens`).
    pool:
        ``mean``, ``max`` or ``mixed`` (MGI's mixed pooling: the average of mean and max).
    """

    supports_token_mask = True

    def __init__(self, n_genes: int, width: int = 64, depth: int = 2, patch: int = 1, patch_mixing: str = "linear",
                 d_state: int = 16, d_conv: int = 4, expand: int = 2, bidirectional: bool = True,
                 pool: str = "mean", dropout: float = 0.0):
        super().__init__()
        check_positive(width=width, depth=depth)
        check_choice("pool", pool, ("mean", "max", "mixed"))
        check_dropout(dropout)
        self.config = json_config(n_genes=n_genes, width=width, depth=depth, patch=patch, patch_mixing=patch_mixing,
                                  d_state=d_state, d_conv=d_conv, expand=expand, bidirectional=bidirectional,
                                  pool=pool, dropout=dropout)
        self.tokens = ExpressionTokens(n_genes, width, patch, patch_mixing)
        self.width, self.n_tokens, self.pool = width, self.tokens.n_tokens, pool
        self.dropout = nn.Dropout(dropout)
        self.encoder = mamba_stack(width, depth, d_state, d_conv, expand, bidirectional)   # ends in its own norm

    def forward_features(self, inputs: dict, token_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(pooled (B, W), tokens (B, L, W))`` from one pass."""
        x = self.tokens(_matrix(inputs, VALUES, self.tokens.n_genes), token_mask)
        x = self.encoder(self.dropout(x))
        return pool_tokens(x, self.pool), x


class TabularMLP(Encoder):
    """``(B, F) -> (B, W)``: ``Linear-Norm-ReLU[-Dropout]`` blocks of ``hidden`` sizes, then a Linear to ``width``.

    The encoder of SCARF / VIME / BYOL (paper 002: a few layers of 256). ``input_key`` picks the
    entry of the sub-dict (``values`` for expression; a PGS or burden key for those vectors).
    Corruption (SCARF's marginal resampling, VIME's masks) is done to the input by the task:
    ``n_tokens`` is 1 and a token mask is refused.
    """

    supports_token_mask = False

    def __init__(self, n_features: int, width: int = 64, hidden: Sequence[int] = (256, 256), norm: str = "batch",
                 dropout: float = 0.0, input_key: str = VALUES):
        super().__init__()
        hidden = tuple(int(h) for h in hidden)
        check_positive(n_features=n_features, width=width, **{f"hidden[{i}]": h for i, h in enumerate(hidden)})
        check_dropout(dropout)
        self.config = json_config(n_features=n_features, width=width, hidden=hidden, norm=norm, dropout=dropout,
                                  input_key=input_key)
        self.width, self.n_tokens, self.n_features, self.input_key = width, 1, n_features, input_key
        self.net = mlp([n_features, *hidden, width], norm=norm, dropout=dropout)

    def forward_features(self, inputs: dict, token_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if token_mask is not None:
            raise ValueError("TabularMLP has no tokens to mask; corrupt the input features instead")
        out = self.net(_matrix(inputs, self.input_key, self.n_features))
        return out, out[:, None]
