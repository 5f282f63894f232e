"""Small modules shared by the encoders and the pretext tasks: projection and pretext heads, and
the validation / transformer helpers every encoder uses (token masks and LD blocks are in
:mod:`phenoclip.models.masks`).

No loss lives here: a head maps token outputs to predictions, the objective compares them.

Shapes: ``B`` batch, ``L`` tokens, ``V`` variants, ``W`` encoder width, ``E`` shared embedding size.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from phenoclip.models.mamba import MambaEncoder

#: dosage classes of a variant token: 0, 1, 2 ALT alleles, a missing call, the [MASK] token
DOSAGE_MISSING = 3
DOSAGE_MASK = 4
N_DOSAGE_CLASSES = 5


# --------------------------------------------------------------------------- validation helpers

def check_positive(**values: float) -> None:
    """Raise ``ValueError`` naming the first argument that is not > 0."""
    for name, v in values.items():
        if not v > 0:
            raise ValueError(f"{name} must be positive, got {v}")


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def check_dropout(dropout: float) -> None:
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


def check_heads(width: int, heads: int) -> None:
    check_positive(width=width, heads=heads)
    if width % heads:
        raise ValueError(f"width {width} is not divisible by heads {heads}")


def check_token_mask(token_mask: Tensor | None, batch: int, n_tokens: int) -> Tensor | None:
    """``token_mask`` must be bool ``(B, L)``; returns it unchanged (or None)."""
    if token_mask is None:
        return None
    if token_mask.dtype != torch.bool or tuple(token_mask.shape) != (batch, n_tokens):
        raise ValueError(f"token_mask must be bool of shape ({batch}, {n_tokens}), "
                         f"got {token_mask.dtype} {tuple(token_mask.shape)}")
    return token_mask


def json_config(**kwargs: Any) -> dict:
    """Constructor arguments as JSON-ready values (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}


# --------------------------------------------------------------------------- shared blocks

def sinusoidal(positions: Tensor, dim: int) -> Tensor:
    """Fixed sin/cos code ``(L, dim)`` of real-valued ``positions (L,)`` (Vaswani et al.; base 10,000)."""
    if dim % 2:
        raise ValueError(f"a sinusoidal position code needs an even width, got {dim}")
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim)
    angle = positions.to(torch.float64)[:, None] * freq[None, :]
    return torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(1).float()


def transformer_stack(width: int, depth: int, heads: int, mlp_ratio: float, dropout: float) -> nn.TransformerEncoder:
    """Pre-norm ``nn.TransformerEncoder`` (batch first, GELU) ending in a LayerNorm: ``(B, L, W) -> (B, L, W)``."""
    layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=int(round(width * mlp_ratio)), dropout=dropout,
                                       activation="gelu", batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(width), enable_nested_tensor=False)


def mamba_stack(width: int, depth: int, d_state: int, d_conv: int, expand: int, bidirectional: bool) -> nn.Module:
    """:class:`phenoclip.models.mamba.MambaEncoder` ``(B, L, W) -> (B, L, W)``."""
    check_positive(width=width, depth=depth, d_state=d_state, d_conv=d_conv, expand=expand)
    return MambaEncoder(width, depth, d_state=d_state, d_conv=d_conv, expand=expand, bidirectional=bidirectional)


def mlp(sizes: Sequence[int], norm: str = "none", dropout: float = 0.0, activation: type[nn.Module] = nn.ReLU,
        final_activation: bool = False) -> nn.Sequential:
    """``Linear -> [BatchNorm|LayerNorm] -> activation -> [Dropout]`` between consecutive ``sizes``.

    The last Linear is bare unless ``final_activation`` (then it gets the norm and activation too).
    """
    check_choice("norm", norm, ("batch", "layer", "none"))
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or final_activation:
            if norm == "batch":
                layers.append(nn.BatchNorm1d(b))
            elif norm == "layer":
                layers.append(nn.LayerNorm(b))
            layers.append(activation())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def freeze_bias_before_batch_norm(module: nn.Module) -> int:
    """Stop training the bias of every Linear/Conv that feeds a BatchNorm directly (in a Sequential).

    Batch norm subtracts the batch mean, so such a bias has no effect and a gradient of zero up
    to rounding; Adam divides that rounding noise by its own tiny scale and moves the bias by
    full steps in a random direction (and the running mean follows). Frozen, it stays at its
    initial value: the function the layer computes is unchanged, the checkpoint keeps its keys,
    and runs that differ only in summation order (data-parallel against one process) agree.
    Returns how many biases were frozen.
    """
    frozen = 0
    for seq in module.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        layers = list(seq)
        for a, b in zip(layers[:-1], layers[1:]):
            if (isinstance(a, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and a.bias is not None
                    and isinstance(b, nn.modules.batchnorm._BatchNorm)):
                a.bias.requires_grad_(False)
                frozen += 1
    return frozen


def freeze_attention_key_bias(module: nn.Module) -> int:
    """Zero the gradient of the key bias of every ``nn.MultiheadAttention`` (returns how many).

    A key bias adds ``q . b_k`` to every score of a query, which the softmax cancels: its true
    gradient is zero and what autograd returns is rounding noise, which Adam would turn into
    full-size random steps (the same reason as :func:`freeze_bias_before_batch_norm`). The
    parameter keeps its place in ``in_proj_bias``; only its key third stops moving. Frozen layers
    (BYOL's target network) are skipped: torch refuses a hook on a tensor without gradients.
    """
    count = 0
    for layer in module.modules():
        if (isinstance(layer, nn.MultiheadAttention) and layer.in_proj_bias is not None
                and layer.in_proj_bias.requires_grad):
            e = layer.embed_dim

            def zero_key_part(grad: Tensor, e: int = e) -> Tensor:
                grad = grad.clone()
                grad[e:2 * e] = 0
                return grad

            layer.in_proj_bias.register_hook(zero_key_part)
            count += 1
    return count


class Encoder(nn.Module):
    """Base of every modality encoder: subclasses define ``forward_features(inputs, token_mask)``
    returning ``(pooled (B, W), tokens (B, L, W))``; ``forward`` and ``forward_tokens`` are its halves."""

    def forward(self, inputs: dict) -> Tensor:
        return self.forward_features(inputs)[0]

    def forward_tokens(self, inputs: dict, token_mask: Tensor | None = None) -> Tensor:
        return self.forward_features(inputs, token_mask)[1]


def encode_with_cls(encoder: nn.Module, tokens: Tensor, cls_token: Tensor | None) -> tuple[Tensor, Tensor]:
    """Run ``encoder`` over ``tokens`` (B, L, W), with a CLS token prepended when given.

    Returns ``(pooled (B, W), tokens (B, L, W))``: the CLS output, or the mean over tokens.
    """
    if cls_token is not None:
        tokens = torch.cat([cls_token.expand(tokens.shape[0], 1, -1), tokens], dim=1)
    out = encoder(tokens)
    if cls_token is not None:
        return out[:, 0], out[:, 1:]
    return out.mean(1), out


class PatchMixer(nn.Module):
    """Per-item embeddings ``(B, N, W)`` -> tokens ``(B, ceil(N / patch), W)``, ``patch`` neighbours each.

    ``linear`` concatenates the patch (zero-padded at the end) and maps it back to ``W``;
    ``sum`` adds the items, which keeps them apart only when their content embeddings are
    slot-specific (the tokenizers do that in ``sum`` mode).
    """

    def __init__(self, width: int, patch: int, mode: str):
        super().__init__()
        check_positive(width=width, patch=patch)
        check_choice("patch_mixing", mode, ("linear", "sum"))
        self.patch, self.mode = patch, mode
        self.linear = nn.Linear(patch * width, width) if patch > 1 and mode == "linear" else None

    def forward(self, x: Tensor) -> Tensor:
        if self.patch == 1:
            return x
        b, n, w = x.shape
        n_tok = math.ceil(n / self.patch)
        x = nn.functional.pad(x, (0, 0, 0, n_tok * self.patch - n)).view(b, n_tok, self.patch, w)
        return self.linear(x.flatten(2)) if self.linear is not None else x.sum(2)


def pool_tokens(tokens: Tensor, mode: str) -> Tensor:
    """``(B, L, W) -> (B, W)`` by ``mean``, ``max`` or ``mixed`` (mean + max halves, MGI's mixed pooling)."""
    if mode == "mean":
        return tokens.mean(1)
    if mode == "max":
        return tokens.amax(1)
    return 0.5 * (tokens.mean(1) + tokens.amax(1))


# --------------------------------------------------------------------------- heads

class ProjectionHead(nn.Module):
    """Encoder features ``(B, W)`` -> shared latent space ``(B, E)``.

    ``hidden=None`` gives a single Linear (CLIP); an int gives ``Linear-ReLU-Linear`` (SimCLR, ContIG).
    """

    def __init__(self, width: int, embed_dim: int, hidden: int | None = None, dropout: float = 0.0):
        super().__init__()
        check_positive(width=width, embed_dim=embed_dim)
        check_dropout(dropout)
        if hidden is not None:
            check_positive(hidden=hidden)
        sizes = [width, embed_dim] if hidden is None else [width, hidden, embed_dim]
        self.net = mlp(sizes, dropout=dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class VariantMaskingHead(nn.Module):
    """Token outputs ``(B, L, W)`` -> dosage logits ``(B, V, 3)`` (classes 0/1/2) for every variant.

    With patching each token predicts its ``patch`` variants; the trailing padding is cut off.
    The objective picks the masked, non-missing variants.
    """

    def __init__(self, width: int, n_variants: int, patch: int = 1, n_classes: int = 3):
        super().__init__()
        check_positive(width=width, n_variants=n_variants, patch=patch, n_classes=n_classes)
        self.n_variants, self.patch, self.n_classes = n_variants, patch, n_classes
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, patch * n_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        b, n, _ = tokens.shape
        if n != math.ceil(self.n_variants / self.patch):
            raise ValueError(f"expected {math.ceil(self.n_variants / self.patch)} tokens, got {n}")
        logits = self.out(self.norm(tokens)).view(b, n * self.patch, self.n_classes)
        return logits[:, : self.n_variants]


class VolumeReconstructionHead(nn.Module):
    """MAE-style: token outputs ``(B, L, W)`` -> voxels of each patch ``(B, L, C * prod(patch))``.

    The target is :func:`phenoclip.models.mri.patchify` of the input volume (same voxel order).
    ``hidden`` inserts one GELU layer (a deeper decoder is the task's choice).
    """

    def __init__(self, width: int, patch: Sequence[int], in_channels: int = 1, hidden: int | None = None):
        super().__init__()
        patch = tuple(int(p) for p in patch)
        check_positive(width=width, in_channels=in_channels, **{f"patch[{i}]": p for i, p in enumerate(patch)})
        out = in_channels * int(np.prod(patch))
        self.norm = nn.LayerNorm(width)
        self.net = mlp([width, out] if hidden is None else [width, hidden, out], activation=nn.GELU)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.net(self.norm(tokens))
