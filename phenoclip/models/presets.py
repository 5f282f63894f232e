"""Model size presets: typed, JSON-serialisable hyperparameters per encoder, and a default architecture per modality.

Each ``*Config`` dataclass holds the constructor arguments of one encoder *except* those that
come from the data (``n_variants``, ``volume_shape``, ... — see ``registry.DATA_ARGS``); the
field names are the constructor's argument names. ``dataclasses.asdict(preset)`` is plain JSON.

- ``tiny``: the sample cohort (~200 patients, 2,000 variants, 200 genes, 32-48^3 volumes,
  2 x 1,000-sample signals) pretrains in minutes on 2 CPU cores: widths 32-64, 1-2 layers,
  patching on, every encoder well under 1M parameters.
- ``small``: a CPU-hours / single small GPU model for real cohorts of thousands.
- ``paper``: GPU-sized as in the papers: ViT-B/16 volumes (768 wide, 12 layers, 12 heads),
  a BERT-base variant transformer, a 1D CNN + 6-layer transformer for signals, SCARF's
  256-wide MLPs, a Mamba gene encoder over single-gene tokens (MGI).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields


@dataclass
class VariantTransformerConfig:
    width: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    patch: int = 1
    patch_mixing: str = "linear"
    pool: str = "cls"
    dropout: float = 0.0
    position_unit: float = 1000.0
    position_scale: float = 0.1


@dataclass
class VariantMambaConfig:
    width: int = 64
    depth: int = 2
    patch: int = 1
    patch_mixing: str = "linear"
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    bidirectional: bool = True
    dropout: float = 0.0
    position_unit: float = 1000.0
    position_scale: float = 0.1


@dataclass
class DosageMLPConfig:
    width: int = 64
    hidden: tuple[int, ...] = (256,)
    norm: str = "batch"
    dropout: float = 0.0
    l1: float = 0.0


@dataclass
class ExpressionMambaConfig:
    width: int = 64
    depth: int = 2
    patch: int = 1
    patch_mixing: str = "linear"
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    bidirectional: bool = True
    pool: str = "mean"
    dropout: float = 0.0


@dataclass
class TabularMLPConfig:
    width: int = 64
    hidden: tuple[int, ...] = (256, 256)
    norm: str = "batch"
    dropout: float = 0.0


@dataclass
class VolumeViTConfig:
    patch: tuple[int, int, int] = (8, 8, 8)
    width: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    pool: str = "mean"
    pos_embed: str = "learnable"
    dropout: float = 0.0


@dataclass
class SignalCNNTransformerConfig:
    width: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    stem_channels: tuple[int, ...] = (32, 64)
    stem_strides: tuple[int, ...] = (4, 4)
    kernel_size: int = 7
    norm: str = "batch"
    pool: str = "mean"
    dropout: float = 0.0


@dataclass
class HpoEncoderConfig:
    width: int = 64
    hidden: int = 128
    dropout: float = 0.0


#: (modality, arch) -> the Preset field holding its config; the same keys as ``registry.ENCODERS``
PRESET_FIELDS: dict[tuple[str, str], str] = {
    ("gene", "transformer"): "gene_transformer",
    ("gene", "mlp"): "gene_mlp",
    ("gene", "mamba"): "gene_mamba",
    ("expr", "mamba"): "expr_mamba",
    ("expr", "mlp"): "expr_mlp",
    ("mri", "vit"): "mri_vit",
    ("signal", "cnn-transformer"): "signal_cnn_transformer",
    ("hpo", "graph"): "hpo_graph",
}


@dataclass
class Preset:
    """One size of every encoder, the shared embedding, and the default architecture per modality."""

    name: str
    embed_dim: int
    projection_hidden: int | None
    default_arch: dict[str, str]
    gene_transformer: VariantTransformerConfig = field(default_factory=VariantTransformerConfig)
    gene_mlp: DosageMLPConfig = field(default_factory=DosageMLPConfig)
    gene_mamba: VariantMambaConfig = field(default_factory=VariantMambaConfig)
    expr_mamba: ExpressionMambaConfig = field(default_factory=ExpressionMambaConfig)
    expr_mlp: TabularMLPConfig = field(default_factory=TabularMLPConfig)
    mri_vit: VolumeViTConfig = field(default_factory=VolumeViTConfig)
    signal_cnn_transformer: SignalCNNTransformerConfig = field(default_factory=SignalCNNTransformerConfig)
    hpo_graph: HpoEncoderConfig = field(default_factory=HpoEncoderConfig)

    def encoder_config(self, modality: str, arch: str):
        """The config dataclass of ``(modality, arch)``; ``ValueError`` if there is none."""
        if (modality, arch) not in PRESET_FIELDS:
            known = ", ".join(f"{m}/{a}" for m, a in PRESET_FIELDS)
            raise ValueError(f"no encoder '{arch}' for modality '{modality}' (known: {known})")
        return getattr(self, PRESET_FIELDS[(modality, arch)])

    @classmethod
    def from_dict(cls, d: dict) -> "Preset":
        """Inverse of ``dataclasses.asdict`` (lists from JSON become tuples)."""
        kinds = {f.name: f for f in fields(cls)}
        out = {}
        for k, v in d.items():
            if k not in kinds:
                raise ValueError(f"unknown preset field '{k}'")
            sub = _CONFIG_TYPES.get(k)
            out[k] = sub(**{n: tuple(x) if isinstance(x, list) else x for n, x in v.items()}) if sub else v
        return cls(**out)


_CONFIG_TYPES = {"gene_transformer": VariantTransformerConfig, "gene_mlp": DosageMLPConfig,
                 "gene_mamba": VariantMambaConfig, "expr_mamba": ExpressionMambaConfig, "expr_mlp": TabularMLPConfig,
                 "mri_vit": VolumeViTConfig, "signal_cnn_transformer": SignalCNNTransformerConfig,
                 "hpo_graph": HpoEncoderConfig}

_DEFAULT_ARCH = {"gene": "transformer", "expr": "mamba", "mri": "vit", "signal": "cnn-transformer", "hpo": "graph"}

TINY = Preset(
    # genetics through ContIG's dosage MLP on CPUs: on a few hundred patients the token
    # transformer over thousands of variants learned no cross-modal signal (held-out MRR at the
    # random-init level), the MLP did (pretrain learning test)
    # a 64-wide shared space: at 32 the expression embeddings (with the linear path) fell just below a
    # logistic regression on the raw genes at label fractions >= 0.2 (AUROC 0.986 vs 0.995, 3 seeds)
    name="tiny", embed_dim=64, projection_hidden=64, default_arch={**_DEFAULT_ARCH, "gene": "mlp"},
    gene_transformer=VariantTransformerConfig(width=32, depth=2, heads=4, mlp_ratio=2.0, patch=16),
    # no L1 on the first layer (DosageMLPConfig.l1): it stops the MLP memorising its training
    # patients, but at the strength that does (0.5-0.7) every pair without genotypes lost too
    # (expr-mri MRR 0.47 -> 0.22-0.27 on seed 0; MRI probe 0.80 -> 0.68 over 3 seeds), with the
    # CLIP temperature held fixed as well (docs/experiments.md, 2026-12-04 night)
    gene_mlp=DosageMLPConfig(width=64, hidden=(128,), dropout=0.1),
    gene_mamba=VariantMambaConfig(width=32, depth=2, patch=16, d_state=8),
    expr_mamba=ExpressionMambaConfig(width=32, depth=2, patch=4, d_state=8),
    expr_mlp=TabularMLPConfig(width=64, hidden=(128, 128)),
    mri_vit=VolumeViTConfig(patch=(8, 8, 8), width=48, depth=2, heads=4, mlp_ratio=2.0),
    signal_cnn_transformer=SignalCNNTransformerConfig(width=32, depth=2, heads=4, mlp_ratio=2.0,
                                                      stem_channels=(16, 32), stem_strides=(4, 4)),
    hpo_graph=HpoEncoderConfig(width=32, hidden=64),
)

SMALL = Preset(
    name="small", embed_dim=64, projection_hidden=128, default_arch=dict(_DEFAULT_ARCH),
    gene_transformer=VariantTransformerConfig(width=128, depth=4, heads=4, patch=8, dropout=0.1),
    gene_mlp=DosageMLPConfig(width=128, hidden=(512, 256), dropout=0.1),
    gene_mamba=VariantMambaConfig(width=128, depth=4, patch=8),
    expr_mamba=ExpressionMambaConfig(width=128, depth=4, patch=2),
    expr_mlp=TabularMLPConfig(width=128, hidden=(256, 256, 256)),
    mri_vit=VolumeViTConfig(patch=(8, 8, 8), width=192, depth=6, heads=6, dropout=0.1),
    signal_cnn_transformer=SignalCNNTransformerConfig(width=128, depth=4, heads=4, stem_channels=(32, 64, 128),
                                                      stem_strides=(2, 4, 4), dropout=0.1),
    hpo_graph=HpoEncoderConfig(width=128, hidden=256),
)

PAPER = Preset(
    name="paper", embed_dim=256, projection_hidden=512, default_arch=dict(_DEFAULT_ARCH),
    gene_transformer=VariantTransformerConfig(width=768, depth=12, heads=12, patch=4, dropout=0.1),
    gene_mlp=DosageMLPConfig(width=256, hidden=(2048, 1024), dropout=0.1),
    gene_mamba=VariantMambaConfig(width=512, depth=8, patch=1),
    expr_mamba=ExpressionMambaConfig(width=512, depth=8, patch=1, pool="mixed"),
    expr_mlp=TabularMLPConfig(width=256, hidden=(256, 256, 256)),
    mri_vit=VolumeViTConfig(patch=(16, 16, 16), width=768, depth=12, heads=12, dropout=0.1),
    signal_cnn_transformer=SignalCNNTransformerConfig(width=256, depth=6, heads=8, stem_channels=(64, 128, 256),
                                                      stem_strides=(2, 2, 4), dropout=0.1),
    hpo_graph=HpoEncoderConfig(width=256, hidden=512),
)

PRESETS: dict[str, Preset] = {"tiny": TINY, "small": SMALL, "paper": PAPER}


def get_preset(preset: str | Preset) -> Preset:
    """A private copy of a named preset (or of the given one); ``ValueError`` for an unknown name."""
    if isinstance(preset, Preset):
        return copy.deepcopy(preset)
    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}' (known: {', '.join(PRESETS)})")
    return copy.deepcopy(PRESETS[preset])
