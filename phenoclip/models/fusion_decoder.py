"""MGI's gene-informed fusion decoder (paper 003, section 2.4): image and gene tokens -> lesion logits.

:class:`FusionDecoder` = two :class:`AttentionInteraction` modules (SAM's two-way attention
block) over the gene tokens (a mask token first) and the image tokens, then a
:class:`MaskOutput` module that upsamples the image tokens to voxels (with :class:`ImageSkip`
features of the raw image) and weights them by the mask token. The segmenter that feeds it the
pretrained encoders' tokens is :class:`phenoclip.models.segmentation.FusionSegmenter`.

Shapes: ``B`` batch, ``L`` image tokens (the ViT's patch grid ``(d, h, w)`` in raster order),
``G`` gene tokens, ``W`` decoder width, ``C`` channels of the upsampled image embedding.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from phenoclip.models.heads import check_heads, check_positive, sinusoidal


def grid_position_code(grid: Sequence[int], width: int) -> Tensor:
    """Fixed 3D sin/cos code ``(prod(grid), width)`` of the token grid in raster order.

    Each axis gets ``2 * (width // 6)`` channels of :func:`~phenoclip.models.heads.sinusoidal`;
    the remaining channels are zero, so any width works.
    """
    per_axis = 2 * (width // 6)
    if per_axis == 0:
        raise ValueError(f"a 3D position code needs width >= 6, got {width}")
    axes = torch.meshgrid(*(torch.arange(g, dtype=torch.float32) for g in grid), indexing="ij")
    code = torch.cat([sinusoidal(a.reshape(-1), per_axis) for a in axes], dim=1)         # (L, 3 * per_axis)
    return nn.functional.pad(code, (0, width - code.shape[1]))


class AttentionInteraction(nn.Module):
    """One attention-interaction module of MGI's fusion decoder (SAM's ``TwoWayAttentionBlock``).

    Four steps, each residual and followed by a LayerNorm: (1) self-attention over the gene
    tokens, (2) cross-attention from gene tokens (queries) to image tokens, (3) an MLP on the
    gene tokens, (4) cross-attention from image tokens (queries) to gene tokens. Position codes
    are added to queries and keys at every attention (not to values), as in SAM, so the image
    tokens keep their place in the volume through the decoder.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float = 2.0, dropout: float = 0.0):
        super().__init__()
        check_heads(width, heads)
        check_positive(mlp_ratio=mlp_ratio)
        self.self_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.gene_to_image = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.image_to_gene = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        hidden = int(round(width * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(4))

    def forward(self, genes: Tensor, image: Tensor, gene_pos: Tensor, image_pos: Tensor) -> tuple[Tensor, Tensor]:
        """``genes (B, G, W)``, ``image (B, L, W)``, position codes broadcastable to them."""
        q = genes + gene_pos
        genes = self.norms[0](genes + self.self_attn(q, q, genes, need_weights=False)[0])           # (B, G, W)
        q, k = genes + gene_pos, image + image_pos
        genes = self.norms[1](genes + self.gene_to_image(q, k, image, need_weights=False)[0])       # (B, G, W)
        genes = self.norms[2](genes + self.mlp(genes))                                             # (B, G, W)
        q, k = image + image_pos, genes + gene_pos
        image = self.norms[3](image + self.image_to_gene(q, k, genes, need_weights=False)[0])      # (B, L, W)
        return genes, image


class UpBlock(nn.Module):
    """``(B, C_in, d, h, w) -> (B, C_out, d * s, h * s, w * s)``: transposed conv, [skip concat], conv, norm, GELU."""

    def __init__(self, c_in: int, c_out: int, stride: Sequence[int], skip_channels: int = 0):
        super().__init__()
        stride = tuple(int(s) for s in stride)
        self.up = nn.ConvTranspose3d(c_in, c_out, kernel_size=stride, stride=stride)
        self.conv = nn.Conv3d(c_out + skip_channels, c_out, kernel_size=3, padding=1)
        self.norm = nn.GroupNorm(1, c_out)
        self.act = nn.GELU()

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        x = self.up(x)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.act(self.norm(self.conv(x)))


class ImageSkip(nn.Module):
    """The raw image at one decoder resolution -> ``(B, C, ...)`` features (conv, norm, GELU).

    Not in the paper: its ViT decodes 2D slices of 256 x 256 pixels; on a 32^3 volume with 8^3
    patches the token grid is 4^3, and lesions of a few voxels need the input's own detail to be
    outlined (UNETR feeds the input to its decoder the same way).
    """

    def __init__(self, in_channels: int, channels: int, factor: Sequence[int]):
        super().__init__()
        factor = tuple(int(f) for f in factor)
        self.pool = nn.AvgPool3d(factor) if any(f > 1 for f in factor) else nn.Identity()
        self.conv = nn.Conv3d(in_channels, channels, kernel_size=3, padding=1)
        self.norm = nn.GroupNorm(1, channels)
        self.act = nn.GELU()

    def forward(self, images: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(self.pool(images))))


def _upsampling_strides(patch: Sequence[int]) -> list[tuple[int, int, int]]:
    """Per stage the x2 (or x1) step of each axis taking the token grid back to voxels."""
    for p in patch:
        if p < 1 or p & (p - 1):
            raise ValueError(f"the fusion decoder needs power-of-two patch sizes, got {tuple(patch)}")
    n = max(int(math.log2(p)) for p in patch)
    return [tuple(2 if p >> (i + 1) >= 1 else 1 for p in patch) for i in range(n)]


class MaskOutput(nn.Module):
    """MGI's mask output module: upsampled image embedding ``(B, C, D, H, W)`` times a gene vector ``(B, C)``.

    One upsampling stage per x2 step of the patch, with the *last* entries of ``up_channels``
    (so one preset serves patches 8 and 16 and the full-resolution stage stays narrow).

    The image tokens, back on their grid, go through transposed-convolution stages to voxel
    resolution (with :class:`ImageSkip` features when ``image_skips``); the mask token (the
    first of the gene-side tokens) attends once more to the image tokens and an MLP maps it to
    ``C``; the logits are the point-wise product summed over ``C`` (SAM's hypernetwork output).
    """

    def __init__(self, width: int, heads: int, grid: Sequence[int], patch: Sequence[int], in_channels: int,
                 up_channels: Sequence[int], image_skips: bool = True):
        super().__init__()
        strides = _upsampling_strides(patch)
        if len(up_channels) < len(strides):
            raise ValueError(f"up_channels needs {len(strides)} sizes for patch {tuple(patch)}, got {tuple(up_channels)}")
        chans = [width, *[int(c) for c in up_channels[len(up_channels) - len(strides):]]]
        check_positive(**{f"up_channels[{i}]": c for i, c in enumerate(chans)})
        self.grid = tuple(int(g) for g in grid)
        self.final_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.final_norm = nn.LayerNorm(width)
        self.ups = nn.ModuleList()
        self.skips = nn.ModuleList()
        factor = [int(p) for p in patch]
        for i, s in enumerate(strides):
            factor = [f // t for f, t in zip(factor, s)]
            skip_c = max(4, chans[i + 1] // 2) if image_skips else 0
            self.ups.append(UpBlock(chans[i], chans[i + 1], s, skip_c))
            if image_skips:
                self.skips.append(ImageSkip(in_channels, skip_c, factor))
        self.hyper = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, chans[-1]))

    def forward(self, tokens: Tensor, image: Tensor, token_pos: Tensor, image_pos: Tensor, images: Tensor) -> Tensor:
        """``tokens (B, 1 + G, W)`` (mask token first), ``image (B, L, W)``, ``images (B, C_in, D, H, W)``."""
        q, k = tokens[:, :1] + token_pos[:, :1], image + image_pos
        mask_token = self.final_norm(tokens[:, :1] + self.final_attn(q, k, image, need_weights=False)[0])
        hyper = self.hyper(mask_token[:, 0])                                              # (B, C)
        b, _, w = image.shape
        x = image.transpose(1, 2).reshape(b, w, *self.grid)                               # (B, W, d, h, w)
        for i, up in enumerate(self.ups):
            x = up(x, self.skips[i](images) if len(self.skips) else None)                 # (B, C_i, ...)
        return torch.einsum("bc,bcdhw->bdhw", hyper, x)[:, None]                          # (B, 1, D, H, W)


class FusionDecoder(nn.Module):
    """MGI's lightweight multimodal fusion decoder.

    Parameters
    ----------
    image_width, gene_width:
        Token widths of the image and gene encoders (projected to ``width``).
    grid, patch:
        The ViT's token grid ``(d, h, w)`` and patch size (voxels per token along each axis).
    n_gene_tokens:
        ``G`` (a learned position code per gene token; 0 for a decoder without gene tokens).
    width, heads, mlp_ratio, depth:
        Attention sizes; ``depth`` attention-interaction modules (the paper: 2).
    up_channels:
        Channels of the transposed-convolution stages (the last one per x2 step of the patch).
    image_skips:
        Feed the raw image to each upsampling stage (see :class:`ImageSkip`).
    """

    def __init__(self, image_width: int, gene_width: int, grid: Sequence[int], patch: Sequence[int],
                 n_gene_tokens: int, in_channels: int = 1, width: int = 64, heads: int = 4, mlp_ratio: float = 2.0,
                 depth: int = 2, up_channels: Sequence[int] = (32, 16, 8), image_skips: bool = True,
                 dropout: float = 0.0):
        super().__init__()
        check_positive(image_width=image_width, gene_width=gene_width, depth=depth, in_channels=in_channels)
        check_heads(width, heads)
        if len(grid) != 3 or len(patch) != 3:
            raise ValueError(f"grid and patch need 3 sizes, got {tuple(grid)} and {tuple(patch)}")
        if n_gene_tokens < 0:
            raise ValueError(f"n_gene_tokens must be >= 0, got {n_gene_tokens}")
        self.grid, self.n_gene_tokens = tuple(int(g) for g in grid), int(n_gene_tokens)
        self.image_proj = nn.Linear(image_width, width)
        self.gene_proj = nn.Linear(gene_width, width)
        self.mask_token = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        # token position codes: the mask token and one per gene token (which gene it holds)
        self.token_pos = nn.Parameter(torch.randn(1, 1 + self.n_gene_tokens, width) * 0.02)
        self.register_buffer("image_pos", grid_position_code(self.grid, width)[None], persistent=False)
        self.blocks = nn.ModuleList(AttentionInteraction(width, heads, mlp_ratio, dropout) for _ in range(depth))
        self.output = MaskOutput(width, heads, self.grid, patch, in_channels, up_channels, image_skips)

    def forward(self, image_tokens: Tensor, gene_tokens: Tensor | None, images: Tensor) -> Tensor:
        """``image_tokens (B, L, W_i)``, ``gene_tokens (B, G, W_g)`` or None, ``images (B, C, D, H, W)``
        -> logits ``(B, 1, D, H, W)``."""
        b = image_tokens.shape[0]
        image = self.image_proj(image_tokens)                                             # (B, L, W)
        tokens = self.mask_token.expand(b, -1, -1)                                        # (B, 1, W)
        if gene_tokens is not None:
            if gene_tokens.shape[1] != self.n_gene_tokens:
                raise ValueError(f"expected {self.n_gene_tokens} gene tokens, got {gene_tokens.shape[1]}")
            tokens = torch.cat([tokens, self.gene_proj(gene_tokens)], dim=1)             # (B, 1 + G, W)
        pos = self.token_pos[:, : tokens.shape[1]]
        for block in self.blocks:
            tokens, image = block(tokens, image, pos, self.image_pos)
        return self.output(tokens, image, pos, self.image_pos, images)
