"""The multimodal model: one encoder and one projection head per modality into a shared latent space.

Like open_clip's ``CLIP``: ``encode(modality, inputs, normalize=True)`` plays ``encode_image``,
and ``logit_scale`` is a learnable log inverse temperature initialised to ``ln(1 / 0.07)``
(the contrastive objective applies and clamps it). No loss lives here.

A modality may also have a linear path (:mod:`phenoclip.models.linear_path`): its embedding is
then ``projection(encoder(x)) + linear_path(x)``, a linear map of the raw input's whitened
principal components beside the deep encoder.

A modality may have a read-out (:mod:`phenoclip.models.readout`): a penalised linear map of its raw
input fitted after pretraining to the other modalities' embeddings. :meth:`MultimodalModel.probe_embedding`
returns it, once fitted, for the linear probes of ``finetune``; :meth:`MultimodalModel.encode`
(retrieval, the losses) never does. :meth:`MultimodalModel.probe_features` is what a linear probe
reads: that, beside the linear path's principal-component scores for the modalities of
:data:`~phenoclip.models.linear_path.PROBE_COMPONENTS` (for signals, beside the deep encoder's
pooled output instead of the embedding).
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import Tensor, nn

from phenoclip.data.batch import MODALITIES
from phenoclip.models.heads import ProjectionHead, check_positive
from phenoclip.models.linear_path import LINEAR_PATH_MODALITIES, PROBE_COMPONENTS, PCAPath, build_linear_path
from phenoclip.models.presets import Preset, get_preset
from phenoclip.models.readout import READOUT_MODALITIES, GenotypeReadout
from phenoclip.models.registry import build_encoder, encoder_class, encoder_from_config


class MultimodalModel(nn.Module):
    """Encoders ``(B, ...) -> (B, W_m)`` and projections ``(B, W_m) -> (B, E)`` keyed by modality.

    Parameters
    ----------
    encoders:
        Modality -> encoder (any registered class; ``encoder.width`` sizes its projection).
    archs:
        Modality -> registry architecture name of that encoder (saved in :meth:`config`).
    embed_dim:
        ``E``, the shared latent size.
    projection_hidden:
        Hidden size of the 2-layer projection heads; ``None`` for linear heads.
    init_logit_scale:
        Initial ``logit_scale`` (log of the inverse temperature).
    linear_paths:
        Modality -> :class:`~phenoclip.models.linear_path.PCAPath` added to that modality's embedding.
    readouts:
        Modality -> :class:`~phenoclip.models.readout.GenotypeReadout` read by :meth:`probe_embedding`.
    """

    def __init__(self, encoders: Mapping[str, nn.Module], archs: Mapping[str, str], embed_dim: int,
                 projection_hidden: int | None = None, init_logit_scale: float = math.log(1 / 0.07),
                 linear_paths: Mapping[str, PCAPath] | None = None,
                 readouts: Mapping[str, GenotypeReadout] | None = None):
        super().__init__()
        check_positive(embed_dim=embed_dim)
        if not encoders:
            raise ValueError("a multimodal model needs at least one encoder")
        if set(encoders) != set(archs):
            raise ValueError(f"archs {sorted(archs)} do not match encoders {sorted(encoders)}")
        for m, enc in encoders.items():
            if type(enc) is not encoder_class(m, archs[m]):
                raise ValueError(f"encoder of '{m}' is a {type(enc).__name__}, not the '{archs[m]}' architecture")
        self.archs = dict(archs)
        self.embed_dim, self.projection_hidden = embed_dim, projection_hidden
        self.encoders = nn.ModuleDict(dict(encoders))
        self.projections = nn.ModuleDict({m: ProjectionHead(enc.width, embed_dim, projection_hidden)
                                          for m, enc in encoders.items()})
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        paths = dict(linear_paths or {})
        for m, path in paths.items():
            if m not in encoders or path.linear.out_features != embed_dim:
                raise ValueError(f"linear path of '{m}' needs an encoder of '{m}' and output size {embed_dim}")
        self.linear_paths = nn.ModuleDict(paths)
        outs = dict(readouts or {})
        for m, r in outs.items():
            if m not in encoders or r.out_dim != embed_dim:
                raise ValueError(f"read-out of '{m}' needs an encoder of '{m}' and output size {embed_dim}")
        self.readouts = nn.ModuleDict(outs)

    @property
    def modalities(self) -> list[str]:
        return list(self.encoders)

    def encode(self, modality: str, inputs: dict, normalize: bool = True) -> Tensor:
        """``(B, E)`` embedding of one modality's sub-dict (L2-normalised unless ``normalize=False``)."""
        z = self.projections[modality](self.encoders[modality](inputs))
        if modality in self.linear_paths:
            z = z + self.linear_paths[modality](inputs)
        return nn.functional.normalize(z, dim=-1) if normalize else z

    def has_readout(self, modality: str) -> bool:
        """Whether ``modality`` has a fitted read-out (see :mod:`phenoclip.models.readout`)."""
        return modality in self.readouts and self.readouts[modality].is_fitted

    def probe_embedding(self, modality: str, inputs: dict, normalize: bool = True) -> Tensor:
        """``(B, E)``: what a linear probe of ``modality`` reads: its fitted read-out, else :meth:`encode`.

        A read-out is never L2-normalised: it is a linear score of the input (its norm carries how
        strongly a patient's genotypes predict the teacher; on the sample cohort normalising cost the
        gene probe 0.006-0.010 AUROC at every label fraction, 3 seeds).
        """
        if not self.has_readout(modality):
            return self.encode(modality, inputs, normalize)
        return self.readouts[modality](inputs)

    def probe_components(self, modality: str) -> bool:
        """Whether a probe of ``modality`` reads more than its embedding: its linear path's principal-component
        scores beside it (signals: beside the encoder's pooled output instead of the embedding)
        (:data:`~phenoclip.models.linear_path.PROBE_COMPONENTS`; never beside a read-out), or, for a
        read-out that keeps them, the eQTL-screened SNPs' dosages beside the read-out
        (:attr:`~phenoclip.models.readout.GenotypeReadout.has_choice`)."""
        if self.has_readout(modality):
            return self.readouts[modality].has_choice
        # "eqtl" blocks belong to a read-out; a genotype linear path alone adds no block
        return PROBE_COMPONENTS.get(modality, "eqtl") != "eqtl" and modality in self.linear_paths

    def probe_width(self, modality: str, components: bool = True) -> int:
        """Columns of :meth:`probe_features` (``components=True``) or of :meth:`probe_embedding`."""
        if not (components and self.probe_components(modality)):
            return self.embed_dim
        if self.has_readout(modality):
            return self.embed_dim + len(self.readouts[modality].eqtl_index)
        if PROBE_COMPONENTS[modality] == "encoder":
            return self.encoders[modality].width + self.linear_paths[modality].n_components
        return self.embed_dim + self.linear_paths[modality].n_components

    def probe_features(self, modality: str, inputs: dict) -> Tensor:
        """``(B, E [+ k])``: :meth:`probe_embedding`, beside the linear path's ``k`` principal-component
        scores where :meth:`probe_components` (components a checkpoint did not keep are zero columns);
        for a modality whose :data:`~phenoclip.models.linear_path.PROBE_COMPONENTS` kind is "encoder",
        ``(B, W + k)``: the deep encoder's pooled output (before its projection head) instead of the
        embedding, beside the scores."""
        if not self.probe_components(modality):
            return self.probe_embedding(modality, inputs)
        if self.has_readout(modality):  # the read-out, then the eQTL-screened SNPs' standardised dosages
            z = self.probe_embedding(modality, inputs)
            return torch.cat([z, self.readouts[modality].eqtl_dosages(inputs).to(z.dtype)], dim=1)
        scores = self.linear_paths[modality].scores(inputs)
        if PROBE_COMPONENTS[modality] == "encoder":
            h = self.encoders[modality](inputs)
            return torch.cat([h, scores.to(h.dtype)], dim=1)
        z = self.probe_embedding(modality, inputs)
        return torch.cat([z, scores.to(z.dtype)], dim=1)

    def probe_natural(self, modality: str, components: bool = True) -> list[bool]:
        """Per column of :meth:`probe_features` (``components``) or :meth:`probe_embedding`: whether a
        probe only centres it instead of z-scoring it (the component scores of a modality whose
        :data:`~phenoclip.models.linear_path.PROBE_COMPONENTS` kind is "natural" or "encoder")."""
        if not (components and self.probe_components(modality)):
            return [False] * self.embed_dim
        if self.has_readout(modality):
            return [False] * self.probe_width(modality)
        kind = PROBE_COMPONENTS[modality]
        first = self.encoders[modality].width if kind == "encoder" else self.embed_dim
        return [False] * first + [kind in ("natural", "encoder")] * (self.probe_width(modality) - first)

    def encode_terms(self, indices: Tensor | None = None, normalize: bool = True) -> Tensor:
        """``(K, E)``: HPO terms (ontology indices; default the vocabulary) as one-term patients in the
        shared space, for an ontology-alignment loss. Needs an ``hpo`` encoder with ``term_embeddings``."""
        if "hpo" not in self.encoders:
            raise ValueError("the model has no 'hpo' encoder")
        z = self.projections["hpo"](self.encoders["hpo"].term_embeddings(indices))
        return nn.functional.normalize(z, dim=-1) if normalize else z

    def forward(self, batch: dict, normalize: bool = True) -> dict[str, Tensor]:
        """``{modality: (B, E)}`` for every modality of the model present in ``batch``."""
        return {m: self.encode(m, batch[m], normalize) for m in self.encoders if m in batch}

    @property
    def config(self) -> dict:
        """JSON-ready description from which :meth:`from_config` rebuilds the model (weights aside)."""
        return {"embed_dim": self.embed_dim, "projection_hidden": self.projection_hidden,
                "encoders": {m: {"arch": self.archs[m], "config": dict(enc.config)}
                             for m, enc in self.encoders.items()},
                "linear_paths": {m: path.config for m, path in self.linear_paths.items()},
                "readouts": {m: r.config for m, r in self.readouts.items()}}

    @classmethod
    def from_config(cls, config: dict) -> "MultimodalModel":
        encs = {m: encoder_from_config(m, e["arch"], e["config"]) for m, e in config["encoders"].items()}
        paths = {m: PCAPath(m, out_dim=config["embed_dim"], **c) for m, c in config.get("linear_paths", {}).items()}
        outs = {m: GenotypeReadout(out_dim=config["embed_dim"], **c) for m, c in config.get("readouts", {}).items()}
        return cls(encs, {m: e["arch"] for m, e in config["encoders"].items()}, config["embed_dim"],
                   config.get("projection_hidden"), linear_paths=paths, readouts=outs)


def build_model(data_shapes: Mapping[str, dict], preset: str | Preset = "tiny", archs: Mapping[str, str] | None = None,
                overrides: Mapping[str, dict] | None = None, embed_dim: int | None = None,
                linear_components: int = 0, readouts: bool = False, readout_patients: int = 0) -> MultimodalModel:
    """A :class:`MultimodalModel` over the modalities of ``data_shapes`` (modality -> data shape).

    ``archs`` and ``overrides`` (modality -> constructor arguments) refine the preset's defaults;
    ``embed_dim`` replaces the preset's. Encoders come in the order of ``batch.MODALITIES``.
    ``linear_components`` > 0 gives every modality of ``LINEAR_PATH_MODALITIES`` a linear path of
    that many principal components (their axes are set later by ``PCAPath.fit``).
    ``readouts`` gives every modality of ``READOUT_MODALITIES`` an (unfitted) read-out;
    ``readout_patients`` > 0 (the training patients) lets it keep their cross-fitted values and the
    eQTL-screened SNPs (:class:`~phenoclip.models.readout.GenotypeReadout`).
    """
    p = get_preset(preset)
    unknown = sorted(set(data_shapes) - set(MODALITIES))
    if unknown:
        raise ValueError(f"unknown modalities {', '.join(unknown)} (known: {', '.join(MODALITIES)})")
    chosen = {m: (archs or {}).get(m, p.default_arch[m]) for m in MODALITIES if m in data_shapes}
    encoders = {m: build_encoder(m, a, p, data_shapes[m], **(overrides or {}).get(m, {})) for m, a in chosen.items()}
    dim = embed_dim or p.embed_dim
    paths = {m: build_linear_path(m, data_shapes[m], linear_components, dim)
             for m in chosen if m in LINEAR_PATH_MODALITIES and linear_components > 0}
    outs = {m: GenotypeReadout(int(data_shapes[m]["n_variants"]), dim, readout_patients) for m in chosen
            if m in READOUT_MODALITIES and readouts}
    return MultimodalModel(encoders, chosen, dim, p.projection_hidden, linear_paths=paths, readouts=outs)
