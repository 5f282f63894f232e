"""Name -> class registry of the encoders, and the builders that combine a preset with a data shape.

Explicit dicts only: ``ENCODERS[(modality, arch)]`` is the class; ``DATA_ARGS[(modality, arch)]``
says which constructor arguments come from the modality's *data shape* (and under which key), the
rest come from the preset (:mod:`phenoclip.models.presets`) and user overrides.

Data shapes (what a dataset reports per modality)::

    gene:   {"n_variants": V}
    expr:   {"n_genes": G}
    mri:    {"volume_shape": (D, H, W), "in_channels": C}
    signal: {"n_channels": C, "length": T}
    hpo:    {"n_ontology_terms": m, "n_vocab": k}     # see phenotype.hpo_vocabulary

Every encoder keeps its full constructor arguments as JSON in ``encoder.config``;
:func:`encoder_from_config` rebuilds it (then load the state dict for weights and buffers).
"""

from __future__ import annotations

import inspect

from torch import nn

from phenoclip.models.expression import ExpressionMamba, TabularMLP
from phenoclip.models.mri import VolumeViT
from phenoclip.models.phenotype import HpoEncoder
from phenoclip.models.presets import Preset, get_preset
from phenoclip.models.signal import SignalCNNTransformer
from phenoclip.models.variant import DosageMLP, VariantMamba, VariantTransformer

ENCODERS: dict[tuple[str, str], type[nn.Module]] = {
    ("gene", "transformer"): VariantTransformer,
    ("gene", "mlp"): DosageMLP,
    ("gene", "mamba"): VariantMamba,
    ("expr", "mamba"): ExpressionMamba,
    ("expr", "mlp"): TabularMLP,
    ("mri", "vit"): VolumeViT,
    ("signal", "cnn-transformer"): SignalCNNTransformer,
    ("hpo", "graph"): HpoEncoder,
}

#: (modality, arch) -> {constructor argument: data-shape key}
DATA_ARGS: dict[tuple[str, str], dict[str, str]] = {
    ("gene", "transformer"): {"n_variants": "n_variants"},
    ("gene", "mlp"): {"n_variants": "n_variants"},
    ("gene", "mamba"): {"n_variants": "n_variants"},
    ("expr", "mamba"): {"n_genes": "n_genes"},
    ("expr", "mlp"): {"n_features": "n_genes"},
    ("mri", "vit"): {"volume_shape": "volume_shape", "in_channels": "in_channels"},
    ("signal", "cnn-transformer"): {"n_channels": "n_channels", "length": "length"},
    ("hpo", "graph"): {"n_ontology_terms": "n_ontology_terms", "n_vocab": "n_vocab"},
}


def encoder_class(modality: str, arch: str) -> type[nn.Module]:
    """``ENCODERS[(modality, arch)]`` with a ``ValueError`` that lists the known pairs."""
    if (modality, arch) not in ENCODERS:
        known = ", ".join(f"{m}/{a}" for m, a in ENCODERS)
        raise ValueError(f"no encoder '{arch}' for modality '{modality}' (known: {known})")
    return ENCODERS[(modality, arch)]


def build_encoder(modality: str, arch: str | None = None, preset: str | Preset = "tiny",
                  data_shape: dict | None = None, **overrides) -> nn.Module:
    """An encoder of ``preset`` size for data of ``data_shape`` (see the module docstring).

    ``arch=None`` takes the preset's default for the modality; ``overrides`` replace any
    constructor argument (e.g. ``patch=4``, ``input_key="pgs"``). Data-dependent buffers are set
    afterwards: ``set_positions`` (variant tokens), ``set_column_means`` (DosageMLP),
    ``init_from_ontology`` (HpoEncoder; or use ``HpoEncoder.from_phenotypes``).
    """
    p = get_preset(preset)
    if arch is None:
        if modality not in p.default_arch:
            raise ValueError(f"preset '{p.name}' has no default architecture for modality '{modality}'")
        arch = p.default_arch[modality]
    cls = encoder_class(modality, arch)
    kwargs = {k: v for k, v in vars(p.encoder_config(modality, arch)).items()}
    shape = data_shape or {}
    missing = [key for key in DATA_ARGS[(modality, arch)].values() if key not in shape]
    if missing:
        raise ValueError(f"data shape of '{modality}' lacks {', '.join(missing)}")
    kwargs.update({arg: shape[key] for arg, key in DATA_ARGS[(modality, arch)].items()})
    allowed = set(inspect.signature(cls).parameters)
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ValueError(f"{cls.__name__} has no argument(s) {', '.join(unknown)} "
                         f"(arguments: {', '.join(sorted(allowed))})")
    kwargs.update(overrides)
    return cls(**kwargs)


def encoder_from_config(modality: str, arch: str, config: dict) -> nn.Module:
    """Rebuild an encoder from its ``config`` (as saved in JSON); weights come from the state dict."""
    return encoder_class(modality, arch)(**config)
