"""Encoders of germline variants: the batch's ``gene`` sub-dict, ``DOSAGE (B, V)`` float in {0, 1, 2}, -1 missing.

- :class:`VariantTransformer` (paper 000): BERT-style over variant tokens; masked-variant pretext.
- :class:`VariantMamba`: the same tokens through a Mamba stack, in genomic (column) order.
- :class:`DosageMLP` (ContIG, DietNetworks): an MLP over the dosage vector.

Every encoder: ``forward(inputs) -> (B, W)``, ``forward_tokens(inputs, token_mask) -> (B, L, W)``,
``forward_features`` returning both from one pass, attributes ``width``, ``n_tokens``, ``config``.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from phenoclip.data.batch import DOSAGE
from phenoclip.models.heads import (DOSAGE_MASK, DOSAGE_MISSING, Encoder, N_DOSAGE_CLASSES, PatchMixer,
                                    check_choice, check_dropout, check_heads, check_positive,
                                    check_token_mask, encode_with_cls, json_config, mamba_stack, mlp,
                                    sinusoidal, transformer_stack)


def _dosage_matrix(inputs: dict, key: str, n_variants: int) -> Tensor:
    x = inputs[key]
    if x.dim() != 2 or x.shape[1] != n_variants:
        raise ValueError(f"'{key}' must be (B, {n_variants}), got {tuple(x.shape)}")
    return x


class VariantTokens(nn.Module):
    """Dosages ``(B, V)`` -> tokens ``(B, L, W)``, ``L = ceil(V / patch)``.

    A variant's embedding = its identity (learned, one per column) + a sinusoidal code of its
    position within the chromosome (in units of ``position_unit`` bp, times ``position_scale``)
    + the embedding of its dosage class (0, 1, 2, missing, [MASK]). ``patch`` consecutive
    variants are mixed into one token by :class:`PatchMixer`; in ``sum`` mode the dosage
    classes are slot-specific so that the sum still tells which variant carries which dosage.
    A masked token has every one of its variants' dosage replaced by [MASK] (identity and
    position stay, as BERT keeps the position of a masked word).
    """

    def __init__(self, n_variants: int, width: int, patch: int = 1, patch_mixing: str = "linear",
                 position_unit: float = 1000.0, position_scale: float = 0.1):
        super().__init__()
        check_positive(n_variants=n_variants, width=width, patch=patch, position_unit=position_unit)
        if width % 2:
            raise ValueError(f"width must be even for the sinusoidal position code, got {width}")
        if position_scale < 0:
            raise ValueError(f"position_scale must be >= 0, got {position_scale}")
        self.n_variants, self.width, self.patch = n_variants, width, patch
        self.position_unit, self.position_scale = position_unit, position_scale
        self.n_tokens = math.ceil(n_variants / patch)
        slots = patch if patch_mixing == "sum" else 1
        self.identity = nn.Embedding(n_variants, width)
        nn.init.normal_(self.identity.weight, std=0.02)  # BERT's init for learned position-like tables
        self.dosage = nn.Embedding(N_DOSAGE_CLASSES * slots, width)
        self.mixer = PatchMixer(width, patch, patch_mixing)
        self.register_buffer("slot_offset", (torch.arange(n_variants) % slots) * N_DOSAGE_CLASSES, persistent=False)
        # base-pair positions; int64 so that a cast of the model to half precision leaves them exact
        self.register_buffer("positions", torch.arange(n_variants, dtype=torch.int64) * 1000)

    def set_positions(self, positions: Sequence[int] | np.ndarray | Tensor) -> None:
        """Base-pair position of each variant column within its chromosome (the store's ``variants/pos``).

        Until called, variants are spaced 1 kb apart in column order.
        """
        pos = torch.as_tensor(np.asarray(positions), dtype=torch.int64)
        if pos.shape != (self.n_variants,):
            raise ValueError(f"positions must have shape ({self.n_variants},), got {tuple(pos.shape)}")
        self.positions.copy_(pos.to(self.positions.device))

    def _classes(self, dosage: Tensor, token_mask: Tensor | None) -> Tensor:
        """Dosage classes ``(B, V)``: 0/1/2, missing, or [MASK] for the variants of masked tokens."""
        check_token_mask(token_mask, dosage.shape[0], self.n_tokens)
        cls = dosage.round().long().clamp(0, 2)
        cls = torch.where(dosage < 0, DOSAGE_MISSING, cls)
        if token_mask is not None:
            per_variant = token_mask.repeat_interleave(self.patch, dim=1)[:, : self.n_variants]
            cls = torch.where(per_variant, DOSAGE_MASK, cls)
        return cls

    def _static(self) -> Tensor:
        """``(V, W)``: identity + scaled position code, the sample-independent part of each variant."""
        code = sinusoidal(self.positions.to(torch.float64) / self.position_unit, self.width)
        return self.identity.weight + self.position_scale * code.to(self.identity.weight.dtype)

    def forward(self, dosage: Tensor, token_mask: Tensor | None = None) -> Tensor:
        """Tokens ``(B, L, W)``; equal to :meth:`forward_reference`, without its ``(B, V, W)`` tensors.

        The mixer is linear in the per-variant embeddings, so a token splits into a static part
        (the mixer applied to identity + position, once per batch) and a dynamic part that only
        depends on each slot's dosage class: a one-hot ``(B, L, patch * classes)`` times a small
        ``(patch * classes, W)`` table of mixed class embeddings.
        """
        cls = self._classes(dosage, token_mask)
        static = self._static()
        if self.patch == 1:
            return self.dosage(cls + self.slot_offset) + static
        p, c, w, n_tok = self.patch, N_DOSAGE_CLASSES, self.width, self.n_tokens
        emb = self.dosage.weight
        emb = emb.view(p, c, w) if emb.shape[0] == p * c else emb.view(1, c, w).expand(p, c, w)  # (p, C, W)
        if self.mixer.linear is not None:  # slot j's block of the mixing matrix: weight[:, j*W:(j+1)*W]
            table = torch.einsum("ojw,jcw->jco", self.mixer.linear.weight.view(w, p, w), emb)
        else:
            table = emb
        padded = nn.functional.pad(cls, (0, n_tok * p - self.n_variants), value=c)  # class C = padding
        onehot = nn.functional.one_hot(padded, c + 1)[..., :c].to(table.dtype)      # (B, L*p, C)
        dynamic = onehot.view(cls.shape[0], n_tok, p * c) @ table.reshape(p * c, w)   # (B, L, W)
        return dynamic + self.mixer(static.unsqueeze(0))

    def forward_reference(self, dosage: Tensor, token_mask: Tensor | None = None) -> Tensor:
        """The readable twin of :meth:`forward`: embed every variant ``(B, V, W)``, then mix."""
        cls = self._classes(dosage, token_mask)
        x = self.dosage(cls + self.slot_offset) + self._static()  # (B, V, W)
        return self.mixer(x)                                      # (B, L, W)


class VariantTransformer(Encoder):
    """BERT-style encoder over variant tokens (paper 000's genomic encoder).

    Parameters
    ----------
    n_variants:
        Variant columns ``V`` of the genotype store.
    width, depth, heads, mlp_ratio, dropout:
        Pre-norm ``nn.TransformerEncoder`` size (``width % heads == 0``).
    patch, patch_mixing:
        Variants per token and how they are mixed (see :class:`VariantTokens`); patching keeps
        attention affordable with thousands of variants on a CPU.
    pool:
        ``cls`` (a learned token in front; its output is the feature) or ``mean`` over tokens.
    position_unit, position_scale:
        Base pairs per unit of the sinusoidal position code, and its amplitude.

    Call :meth:`set_positions` with the store's ``variants/pos`` (saved in the state dict).
    """

    supports_token_mask = True

    def __init__(self, n_variants: int, width: int = 64, depth: int = 2, heads: int = 4, mlp_ratio: float = 4.0,
                 patch: int = 1, patch_mixing: str = "linear", pool: str = "cls", dropout: float = 0.0,
                 position_unit: float = 1000.0, position_scale: float = 0.1):
        super().__init__()
        check_heads(width, heads)
        check_positive(depth=depth, mlp_ratio=mlp_ratio)
        check_choice("pool", pool, ("cls", "mean"))
        check_dropout(dropout)
        self.config = json_config(n_variants=n_variants, width=width, depth=depth, heads=heads, mlp_ratio=mlp_ratio,
                                  patch=patch, patch_mixing=patch_mixing, pool=pool, dropout=dropout,
                                  position_unit=position_unit, position_scale=position_scale)
        self.tokens = VariantTokens(n_variants, width, patch, patch_mixing, position_unit, position_scale)
        self.width, self.n_tokens, self.pool = width, self.tokens.n_tokens, pool
        self.cls_token = nn.Parameter(torch.randn(width) * 0.02) if pool == "cls" else None
        self.encoder = transformer_stack(width, depth, heads, mlp_ratio, dropout)

    def set_positions(self, positions) -> None:
        """See :meth:`VariantTokens.set_positions`."""
        self.tokens.set_positions(positions)

    def forward_features(self, inputs: dict, token_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(pooled (B, W), tokens (B, L, W))`` from one pass."""
        x = self.tokens(_dosage_matrix(inputs, DOSAGE, self.tokens.n_variants), token_mask)
        return encode_with_cls(self.encoder, x, self.cls_token)

    def variant_to_token_mask(self, variant_mask: Tensor) -> Tensor:
        """``(B, V)`` variant mask -> ``(B, L)`` token mask: a token is hidden if any of its variants is."""
        return _variant_to_token_mask(variant_mask, self.tokens.n_variants, self.tokens.patch)


def _variant_to_token_mask(variant_mask: Tensor, n_variants: int, patch: int) -> Tensor:
    if variant_mask.dim() != 2 or variant_mask.shape[1] != n_variants:
        raise ValueError(f"variant mask must be (B, {n_variants}), got {tuple(variant_mask.shape)}")
    n_tok = math.ceil(n_variants / patch)
    padded = nn.functional.pad(variant_mask, (0, n_tok * patch - n_variants))
    return padded.view(variant_mask.shape[0], n_tok, patch).any(-1)


class VariantMamba(Encoder):
    """Mamba over variant tokens in genomic order (the tokens of :class:`VariantTransformer`), mean pool.

    ``d_state``, ``d_conv``, ``expand``, ``bidirectional`` go to
    :class:`phenoclip.models.mamba.MambaEncoder` (which ends in its own norm).
    """

    supports_token_mask = True

    def __init__(self, n_variants: int, width: int = 64, depth: int = 2, patch: int = 1, patch_mixing: str = "linear",
                 d_state: int = 16, d_conv: int = 4, expand: int = 2, bidirectional: bool = True,
                 dropout: float = 0.0, position_unit: float = 1000.0, position_scale: float = 0.1):
        super().__init__()
        check_positive(width=width, depth=depth)
        check_dropout(dropout)
        self.config = json_config(n_variants=n_variants, width=width, depth=depth, patch=patch,
                                  patch_mixing=patch_mixing, d_state=d_state, d_conv=d_conv, expand=expand,
                                  bidirectional=bidirectional, dropout=dropout, position_unit=position_unit,
                                  position_scale=position_scale)
        self.tokens = VariantTokens(n_variants, width, patch, patch_mixing, position_unit, position_scale)
        self.width, self.n_tokens = width, self.tokens.n_tokens
        self.dropout = nn.Dropout(dropout)
        self.encoder = mamba_stack(width, depth, d_state, d_conv, expand, bidirectional)   # ends in its own norm

    def set_positions(self, positions) -> None:
        """See :meth:`VariantTokens.set_positions`."""
        self.tokens.set_positions(positions)

    def forward_features(self, inputs: dict, token_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = self.tokens(_dosage_matrix(inputs, DOSAGE, self.tokens.n_variants), token_mask)
        x = self.encoder(self.dropout(x))   # (B, L, W)
        return x.mean(1), x

    def variant_to_token_mask(self, variant_mask: Tensor) -> Tensor:
        """``(B, V)`` variant mask -> ``(B, L)`` token mask: a token is hidden if any of its variants is."""
        return _variant_to_token_mask(variant_mask, self.tokens.n_variants, self.tokens.patch)


class DosageMLP(Encoder):
    """ContIG / DietNetwork-style MLP over the dosage vector ``(B, V) -> (B, W)``.

    A missing call (``< 0``) is imputed with its column mean, and every column is centred on
    that mean, so a missing call contributes exactly 0. The means are a buffer: call
    :meth:`set_column_means` (e.g. with :meth:`column_means` of the training dosages); until
    then every mean is 1 (allele frequency 0.5). ``input_key`` selects another ``(B, V)``
    entry of the sub-dict. There are no tokens: ``n_tokens`` is 1 and masking is refused
    (corrupt the input instead, as SCARF and VIME do).

    ``l1`` > 0 puts an L1 penalty on the first layer's weights (the ones each variant feeds),
    applied as a proximal step after each optimizer step (:meth:`proximal_step`, which
    pretraining calls): weights within ``lr * l1`` of zero become exactly zero, as in Diet
    Networks' sparse first layer. AdamW moves a weight by about ``lr`` a step, so ``l1`` must be
    near 1 to bite: on the sample cohort 0.07 left 0.5 % of the weights at zero, 0.5 79 %, 1.0
    99.9 % (docs/experiments.md). Off in every preset: at the strengths that stop the layer
    memorising its training patients, the other modalities' pairs lost too.
    """

    supports_token_mask = False

    def __init__(self, n_variants: int, width: int = 64, hidden: Sequence[int] = (256,), norm: str = "batch",
                 dropout: float = 0.0, l1: float = 0.0, input_key: str = DOSAGE):
        super().__init__()
        hidden = tuple(int(h) for h in hidden)
        check_positive(n_variants=n_variants, width=width, **{f"hidden[{i}]": h for i, h in enumerate(hidden)})
        check_dropout(dropout)
        if not (l1 >= 0 and math.isfinite(l1)):
            raise ValueError(f"l1 must be a finite number >= 0, got {l1}")
        self.config = json_config(n_variants=n_variants, width=width, hidden=hidden, norm=norm, dropout=dropout,
                                  l1=float(l1), input_key=input_key)
        self.l1 = float(l1)
        self.width, self.n_tokens, self.n_variants, self.input_key = width, 1, n_variants, input_key
        self.net = mlp([n_variants, *hidden, width], norm=norm, dropout=dropout)
        self.register_buffer("column_mean", torch.ones(n_variants))

    @staticmethod
    def column_means(dosage: np.ndarray) -> np.ndarray:
        """Mean of the non-missing calls per column of ``(S, V)`` dosages (1.0 where all are missing)."""
        d = np.asarray(dosage, dtype=np.float64)
        ok = d >= 0
        n = ok.sum(0)
        return np.where(n > 0, np.where(ok, d, 0).sum(0) / np.maximum(n, 1), 1.0).astype(np.float32)

    def set_column_means(self, means: Sequence[float] | np.ndarray | Tensor) -> None:
        m = torch.as_tensor(np.asarray(means), dtype=self.column_mean.dtype)
        if m.shape != (self.n_variants,):
            raise ValueError(f"column means must have shape ({self.n_variants},), got {tuple(m.shape)}")
        self.column_mean.copy_(m)

    @torch.no_grad()
    def proximal_step(self, lr: float) -> None:
        """Soft-threshold the first layer's weights by ``lr * l1`` (the proximal map of the L1 penalty)."""
        if self.l1 > 0:
            w = self.net[0].weight
            w.copy_(torch.sign(w) * torch.clamp(w.abs() - lr * self.l1, min=0.0))

    def forward_features(self, inputs: dict, token_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if token_mask is not None:
            raise ValueError("DosageMLP has no tokens to mask; corrupt the input features instead")
        x = _dosage_matrix(inputs, self.input_key, self.n_variants)
        x = torch.where(x < 0, 0.0, x - self.column_mean)
        out = self.net(x)
        return out, out[:, None]
