"""A prediction head on top of a (pretrained) multimodal model.

Per patient, every modality's embedding in the shared space is taken (zeros where the patient
lacks the modality), *fused* (``concat``: side by side; ``mean``: averaged over the modalities
the patient has, which the shared space makes meaningful), standardised with saved statistics
and passed to one linear layer. Classification heads output one logit per class (binary: two,
the first fixed at 0, so the softmax equals the logistic regression's sigmoid); regression heads
one value, de-standardised with the saved target statistics. A linear head's MRI and expression
blocks also hold the linear path's principal-component scores, and its signal block the deep and
the linear path side by side (:meth:`FinetuneModel.default_components`), so its blocks may be wider
than ``E``; expression's scores are only centred, not z-scored
(:data:`~phenoclip.models.linear_path.PROBE_COMPONENTS`).
"""

from __future__ import annotations

from typing import Sequence

import math

import torch
from torch import Tensor, nn

from phenoclip.data.batch import PRESENT
from phenoclip.models.linear_path import PROBE_COMPONENTS
from phenoclip.models.multimodal import MultimodalModel

FUSIONS = ("concat", "mean", "stack")
#: floor of a modality's class log-probabilities under ``stack`` (as :data:`phenoclip.eval.stacking.LOG_FLOOR`)
LOG_FLOOR = math.log(1e-6)


class FinetuneModel(nn.Module):
    """``batch -> (B, n_outputs)``: fused embeddings of ``modalities`` through a linear head.

    Parameters
    ----------
    model:
        The multimodal model whose encoders provide the embeddings.
    modalities:
        Modalities fused, in this order (each must be a modality of ``model``).
    fusion:
        ``concat``, ``mean`` or ``stack`` (see the module docstring).
    n_outputs:
        Classes (2 for binary) or 1 for regression.
    readout:
        Read a modality's fitted read-out instead of its encoder where the model has one
        (:meth:`MultimodalModel.probe_embedding`): the linear head on frozen encoders does; full
        fine-tuning, which trains the encoders, does not.
    components:
        Modalities whose block also holds the linear path's principal-component scores (signals: beside
        the deep encoder's pooled output instead of the embedding)
        (:meth:`MultimodalModel.probe_features`; needs ``readout`` and ``concat`` or ``stack``):
        the linear head of ``finetune`` reads them for :meth:`default_components`. Empty for heads
        saved before they existed, so those load as they were fitted.
    """

    def __init__(self, model: MultimodalModel, modalities: Sequence[str], fusion: str, n_outputs: int,
                 readout: bool = False, components: Sequence[str] = ()):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        missing = [m for m in modalities if m not in model.encoders]
        if not modalities or missing:
            raise ValueError(f"modalities {list(modalities)} must be a non-empty subset of {model.modalities}")
        if n_outputs < 1:
            raise ValueError(f"n_outputs must be positive, got {n_outputs}")
        self.model = model
        self.readout = bool(readout)
        self.modalities = list(modalities)
        self.fusion = fusion
        self.components = [m for m in self.modalities if m in set(components)]
        wrong = [m for m in components if m not in self.components or not model.probe_components(m)]
        if wrong or (self.components and (not self.readout or fusion == "mean")):
            raise ValueError(f"component blocks {list(components)} need a linear head (readout) with concat or "
                             f"stack fusion over modalities whose probe reads components")
        #: columns of each modality's block, in order
        self.widths = [model.probe_width(m) if m in self.components else model.embed_dim for m in self.modalities]
        self.in_features = model.embed_dim if fusion == "mean" else sum(self.widths)
        #: per feature: a column the linear head only centres (:meth:`MultimodalModel.probe_natural`);
        #: it matters when the head is fitted, the fitted scale is in ``feature_scale``
        self.natural = [False] * self.in_features if fusion == "mean" else [
            v for m in self.modalities for v in model.probe_natural(m, components=m in self.components)]
        self.register_buffer("feature_mean", torch.zeros(self.in_features))
        self.register_buffer("feature_scale", torch.ones(self.in_features))
        self.register_buffer("target_mean", torch.zeros(()))
        self.register_buffer("target_scale", torch.ones(()))
        if fusion == "stack":
            if n_outputs < 2:
                raise ValueError("stacked fusion needs a class label (two or more outputs)")
            self.block_heads = nn.ModuleList(nn.Linear(w, n_outputs) for w in self.widths)
            self.head = nn.Linear(len(self.modalities) * n_outputs, n_outputs)
        else:
            self.head = nn.Linear(self.in_features, n_outputs)

    @staticmethod
    def default_components(model: MultimodalModel, modalities: Sequence[str], fusion: str, readout: bool) -> list[str]:
        """The component blocks a new head gets: every modality whose probe reads them, for a linear
        head (``readout``) that concatenates or stacks; signals' encoder output beside their components
        (:data:`~phenoclip.models.linear_path.PROBE_COMPONENTS` "encoder") only in a head over signals
        alone. Measured (with the two paths side by side, the signal block before the encoder's output): in
        the stack over the sample cohort's four modalities the wider signal block
        cost the fused probe at 10 % of labels (-0.011 [-0.035, +0.012], 9 seeds, 3 ahead; with 16
        labelled patients the stack trusts a 128-column block fitted on them more than it earns),
        while the signal probe alone gained +0.033 there (docs/experiments.md)."""
        if not readout or fusion == "mean":
            return []
        # the read-out's eQTL SNPs only in a head over genotypes alone, whose fit chooses between the two
        # (eval.gene_probe); in a stack the gene block's one probe could not weigh them honestly
        return [m for m in modalities if model.probe_components(m)
                and (len(modalities) == 1 or (PROBE_COMPONENTS.get(m) != "encoder" and not model.has_readout(m)))]

    @property
    def gene_choice(self) -> bool:
        """Whether this is a head over genotypes alone whose block holds the read-out and, beside it, the
        eQTL-screened SNPs: its linear fit chooses between them (:mod:`phenoclip.eval.gene_probe`)."""
        return (self.modalities == ["gene"] and self.components == ["gene"] and self.fusion == "concat"
                and self.model.has_readout("gene"))

    def embedding(self, modality: str, inputs: dict) -> Tensor:
        """``(B, width)``: the block of ``modality`` that :meth:`features` fuses."""
        if modality in self.components:
            return self.model.probe_features(modality, inputs)
        if self.readout:
            return self.model.probe_embedding(modality, inputs)
        return self.model.encode(modality, inputs)

    def features(self, batch: dict) -> Tensor:
        """``(B, F)`` fused, unstandardised features of the modalities present in ``batch``."""
        embs, present = [], []
        for m, width in zip(self.modalities, self.widths):
            if m in batch:
                z = self.embedding(m, batch[m])
                ok = batch[m][PRESENT].to(z.dtype)[:, None]
            else:  # the store was not given: the modality is absent for every patient
                n = len(next(iter(v for v in batch.values() if isinstance(v, dict)))[PRESENT])
                z, ok = torch.zeros(n, width), torch.zeros(n, 1)
            embs.append(z * ok)
            present.append(ok)
        if self.fusion in ("concat", "stack"):
            return torch.cat(embs, dim=1)
        return torch.stack(embs).sum(0) / torch.stack(present).sum(0).clamp(min=1.0)

    def head_output(self, features: Tensor) -> Tensor:
        """Logits (classification) or values (regression) of already fused features."""
        if self.fusion == "stack":
            return self._stacked(features)
        out = self.head((features - self.feature_mean) / self.feature_scale)
        if self.head.out_features == 1:
            out = out * self.target_scale + self.target_mean
        return out

    def _stacked(self, features: Tensor) -> Tensor:
        k = self.head.out_features
        z = (features - self.feature_mean) / self.feature_scale
        parts, start = [], 0
        for head, width in zip(self.block_heads, self.widths):
            block, start = slice(start, start + width), start + width
            here = features[:, block].abs().sum(dim=1, keepdim=True) > 0  # absent embeddings are zeros
            logp = torch.log_softmax(head(z[:, block]), dim=1).clamp(min=LOG_FLOOR)
            parts.append(torch.where(here, logp, torch.full_like(logp, -math.log(k))))
        return self.head(torch.cat(parts, dim=1))

    def forward(self, batch: dict) -> Tensor:
        return self.head_output(self.features(batch))
