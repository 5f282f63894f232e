"""Segmentation models: MGI's gene-informed fusion decoder (paper 003, section 2.4) and monai baselines.

Every segmenter maps the batch dict to lesion logits ``(B, 1, D, H, W)`` on the volume's grid
(sigmoid: the lesion probability per voxel), through ``forward_volumes(images, values)``:

- :class:`FusionSegmenter`: the pretrained 3D ViT's patch tokens and the Mamba's gene tokens,
  fused by :class:`FusionDecoder` (:mod:`phenoclip.models.fusion_decoder`) = two
  :class:`AttentionInteraction` modules (SAM's two-way attention block) and a :class:`MaskOutput`
  module. With ``use_genes=False`` the expression input is replaced by zeros (every gene at its
  training mean), so the gene branch yields the same learned tokens for every patient: the
  ablation "same decoder, same parameters, no genes".
- :class:`MonaiSegmenter`: monai's ``UNet`` or ``AttentionUnet`` on the images only.

Shapes: ``B`` batch, ``L`` image tokens (the ViT's patch grid ``(d, h, w)`` in raster order),
``G`` gene tokens, ``W`` decoder width, ``C`` channels of the upsampled image embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from torch import Tensor, nn

from phenoclip.data.batch import IMAGES, VALUES
from phenoclip.models.fusion_decoder import FusionDecoder
from phenoclip.models.heads import check_choice, check_positive

DECODERS = ("fusion", "unet", "attention-unet")


class FusionSegmenter(nn.Module):
    """Pretrained image (and gene) encoders + :class:`FusionDecoder`: ``batch -> (B, 1, D, H, W)`` logits."""

    def __init__(self, image_encoder: nn.Module, gene_encoder: nn.Module | None, decoder: FusionDecoder,
                 use_genes: bool = True):
        super().__init__()
        if use_genes and gene_encoder is None:
            raise ValueError("use_genes needs a gene encoder")
        self.image_encoder, self.gene_encoder, self.decoder = image_encoder, gene_encoder, decoder
        self.use_genes = use_genes
        self.patch_shape = tuple(image_encoder.volume_shape)

    @property
    def needs_genes(self) -> bool:
        return self.use_genes

    def forward_volumes(self, images: Tensor, values: Tensor | None = None) -> Tensor:
        """``images (B, C, D, H, W)`` of the encoder's volume shape, ``values (B, G)`` standardised expression."""
        image_tokens = self.image_encoder.forward_tokens({IMAGES: images})                 # (B, L, W_i)
        gene_tokens = None
        if self.gene_encoder is not None:
            n = self.gene_encoder.tokens.n_genes
            if not self.use_genes or values is None:  # every gene at its training mean: no patient information
                values = images.new_zeros(images.shape[0], n)
            gene_tokens = self.gene_encoder.forward_tokens({VALUES: values})               # (B, G, W_g)
        return self.decoder(image_tokens, gene_tokens, images)

    def forward(self, batch: dict) -> Tensor:
        values = batch["expr"][VALUES] if "expr" in batch else None
        return self.forward_volumes(batch["mri"][IMAGES], values)


class MonaiSegmenter(nn.Module):
    """monai's ``UNet`` (plain, or residual units with ``res_units``) or ``AttentionUnet`` on the images only."""

    def __init__(self, kind: str, in_channels: int, channels: Sequence[int], patch_shape: Sequence[int],
                 res_units: int = 0):
        super().__init__()
        check_choice("kind", kind, ("unet", "attention-unet"))
        channels = tuple(int(c) for c in channels)
        if len(channels) < 2:
            raise ValueError(f"a U-Net needs at least 2 channel sizes, got {channels}")
        check_positive(**{f"channels[{i}]": c for i, c in enumerate(channels)})
        strides = (2,) * (len(channels) - 1)
        step = 2 ** len(strides)
        if any(int(s) % step for s in patch_shape):
            raise ValueError(f"{len(channels)} U-Net levels need volume sides divisible by {step}, got {tuple(patch_shape)}")
        # imported here: only segmentation users pay for monai
        from monai.networks.nets import AttentionUnet, UNet

        if kind == "unet":
            self.net = UNet(3, in_channels, 1, channels, strides, num_res_units=res_units)
        else:
            self.net = AttentionUnet(3, in_channels, 1, channels, strides)
        self.patch_shape = tuple(int(s) for s in patch_shape)

    @property
    def needs_genes(self) -> bool:
        return False

    def forward_volumes(self, images: Tensor, values: Tensor | None = None) -> Tensor:
        return self.net(images)

    def forward(self, batch: dict) -> Tensor:
        return self.forward_volumes(batch["mri"][IMAGES])


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- sizes and construction

@dataclass(frozen=True)
class DecoderPreset:
    """Decoder sizes per preset: the fusion decoder's attention and upsampling, the U-Nets' channels."""

    width: int
    heads: int
    mlp_ratio: float
    depth: int
    up_channels: tuple[int, ...]
    unet_channels: tuple[int, ...]
    #: narrower: monai's AttentionUnet costs about 8x a UNet of the same channels per step on CPU
    attention_unet_channels: tuple[int, ...]


DECODER_PRESETS: dict[str, DecoderPreset] = {
    "tiny": DecoderPreset(width=64, heads=4, mlp_ratio=2.0, depth=2, up_channels=(64, 32, 16, 8),
                          unet_channels=(16, 32, 64, 128), attention_unet_channels=(8, 16, 32, 64)),
    "small": DecoderPreset(width=128, heads=8, mlp_ratio=2.0, depth=2, up_channels=(128, 64, 32, 16),
                           unet_channels=(32, 64, 128, 256), attention_unet_channels=(16, 32, 64, 128)),
    "paper": DecoderPreset(width=256, heads=8, mlp_ratio=4.0, depth=2, up_channels=(128, 64, 32, 16),
                           unet_channels=(32, 64, 128, 256, 512), attention_unet_channels=(32, 64, 128, 256, 512)),
}


def fusion_config(image_encoder: nn.Module, gene_encoder: nn.Module | None, preset: str,
                  image_skips: bool = True) -> dict:
    """The :class:`FusionDecoder` arguments (JSON-ready) fitting these encoders at a preset's size."""
    p = DECODER_PRESETS[preset]
    patch = [int(x) for x in image_encoder.patch]
    grid = [int(s) // q for s, q in zip(image_encoder.volume_shape, patch)]
    return {"image_width": int(image_encoder.width), "gene_width": int(gene_encoder.width) if gene_encoder else 1,
            "grid": grid, "patch": patch, "n_gene_tokens": int(gene_encoder.n_tokens) if gene_encoder else 0,
            "in_channels": int(image_encoder.in_channels), "width": p.width, "heads": p.heads,
            "mlp_ratio": p.mlp_ratio, "depth": p.depth, "up_channels": list(p.up_channels),
            "image_skips": bool(image_skips), "dropout": 0.0}


def monai_config(kind: str, in_channels: int, patch_shape: Sequence[int], preset: str) -> dict:
    """The :class:`MonaiSegmenter` arguments (JSON-ready) at a preset's size."""
    p = DECODER_PRESETS[preset]
    channels = p.unet_channels if kind == "unet" else p.attention_unet_channels
    return {"kind": kind, "in_channels": int(in_channels), "channels": list(channels),
            "patch_shape": [int(s) for s in patch_shape], "res_units": 0}


def build_segmenter(decoder: str, decoder_config: dict, encoders: dict[str, nn.Module] | None = None,
                    use_genes: bool = False) -> nn.Module:
    """A segmenter from its saved description: ``decoder`` name, its arguments, the encoders (fusion)."""
    check_choice("decoder", decoder, DECODERS)
    if decoder == "fusion":
        if not encoders or "mri" not in encoders:
            raise ValueError("the fusion decoder needs an 'mri' encoder")
        gene_encoder = encoders.get("expr") if decoder_config["n_gene_tokens"] else None
        cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in decoder_config.items()}
        return FusionSegmenter(encoders["mri"], gene_encoder, FusionDecoder(**cfg), use_genes=use_genes)
    return MonaiSegmenter(**decoder_config)
