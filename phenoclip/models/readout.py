"""The genotype read-out: a linear score of the dosages distilled from the other modalities.

Contrastive pretraining teaches the dosage encoder to place each training patient next to that
patient's other modalities. With thousands of variants and a few hundred to a few thousand
patients it does so partly by memorising them: a probe on its embedding is near perfect on the
pretraining patients and far weaker on new ones, and it stops gaining from labels (on 2,000
simulated patients the gene probe stayed at 0.70 AUROC from 10 % to 100 % of labels while an
elastic net on the dosages climbed to 0.83; docs/experiments.md, "a genotype read-out
distilled from the other modalities").

The read-out cannot memorise: once pretraining ends, a penalised linear regression (a screened
ridge, or a multi-task elastic net where it cross-validates clearly better) maps the standardised
dosages of the training patients to their *consensus*, the mean of their other modalities'
L2-normalised embeddings, the teacher (:func:`phenoclip.pretrain.readout.fit_gene_readout`). It
is what a linear probe of the gene block reads (``MultimodalModel.probe_embedding``); retrieval
and the contrastive loss keep the encoder's embedding. On 2,000 patients it lifted the gene probe to 0.77-0.78 AUROC at every
label fraction, above the elastic net up to half the labels.

A missing call (``< 0``) is set to the training mean, so it contributes nothing, as in the
dosage MLP and the linear path.

On the patients it was fitted on the read-out is an in-sample fit, pulled towards their teacher. A
probe fitted on those patients (the usual case: fine-tuning labels a subset of the pretraining
cohort) therefore learns the teacher's direction for the label, and a few labels fix it: on the
sample cohort the gene probe is flat with the label fraction and level with a probe fitted on the
teacher itself. Its ceiling is how much of that direction the dosages predict, and anything that
weighs the read-out against another model on those patients overrates it (docs/experiments.md,
2026-12-08). So a read-out fitted with ``n_patients`` also keeps what an honest comparison needs:
each training patient's *cross-fitted* read-out (from the fit's own cross-validation folds, a fit
that did not see the patient: how a new patient looks to it) and the SNPs the eQTL screen keeps
(:mod:`phenoclip.eval.eqtl_screen`); a gene probe then chooses between the read-out, those SNPs
and both by scoring its held folds on the cross-fitted values (:mod:`phenoclip.eval.gene_probe`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from phenoclip.data.batch import DOSAGE
from phenoclip.models.heads import check_positive

#: modalities that get a read-out when pretraining pairs them with at least one other modality
READOUT_MODALITIES = ("gene",)


def fits_gene_readout(asked: bool, objectives, modalities) -> bool:
    """Whether a pretraining run ends by fitting the genotype read-out: asked for, genotypes among
    the contrastive modalities, and at least one other modality to be its teacher."""
    return bool(asked) and "clip" in objectives and "gene" in modalities and len(modalities) > 1


class GenotypeReadout(nn.Module):
    """Dosages ``(B, V)`` -> ``(B, E)``: ``((x - mean) / scale) @ weight.T + bias``.

    Every tensor is a buffer (fitted in closed form, never by the optimiser); ``fitted`` is 0
    until :meth:`set_fit` is called, and an unfitted read-out is not used. With ``n_patients`` > 0
    (the pretraining run's training patients, in its split's order) it also holds ``crossfit``
    ``(n_patients, E)``, each one's cross-fitted read-out where ``crossfit_set`` is 1
    (:meth:`set_crossfit`), and ``eqtl`` ``(V,)``, 1 on the SNPs the eQTL screen keeps
    (:meth:`set_eqtl`). Checkpoints written before these existed load with ``n_patients`` 0.
    """

    def __init__(self, n_features: int, out_dim: int, n_patients: int = 0):
        super().__init__()
        check_positive(n_features=n_features, out_dim=out_dim)
        if n_patients < 0:
            raise ValueError(f"n_patients must be >= 0, got {n_patients}")
        self.n_features, self.out_dim, self.n_patients = n_features, out_dim, int(n_patients)
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))
        self.register_buffer("weight", torch.zeros(out_dim, n_features))
        self.register_buffer("bias", torch.zeros(out_dim))
        #: the penalty chosen, the ridge's or the elastic net's (0 while unfitted)
        self.register_buffer("alpha", torch.zeros(()))
        # 1.0 once fitted; a float, not a bool: tools that compare checkpoints subtract tensors
        self.register_buffer("fitted", torch.zeros(()))
        if self.n_patients:
            self.register_buffer("crossfit", torch.zeros(self.n_patients, out_dim))
            self.register_buffer("crossfit_set", torch.zeros(self.n_patients))
            self.register_buffer("eqtl", torch.zeros(n_features))

    @property
    def config(self) -> dict:
        return {"n_features": self.n_features, **({"n_patients": self.n_patients} if self.n_patients else {})}

    @property
    def eqtl_index(self) -> np.ndarray:
        """Indices of the eQTL-screened SNPs, ascending (empty where none was kept or stored)."""
        if not self.n_patients:
            return np.zeros(0, dtype=np.int64)
        if self.eqtl.is_meta:
            return np.arange(self.n_features)
        return np.flatnonzero(self.eqtl.cpu().numpy() > 0)

    @property
    def has_choice(self) -> bool:
        """Whether a probe can choose honestly between the read-out and the eQTL SNPs: fitted, with
        SNPs kept by the screen and cross-fitted read-outs of the training patients."""
        if self.fitted.is_meta:
            return bool(self.n_patients)
        return bool(self.is_fitted and self.n_patients and self.eqtl.sum() > 0 and self.crossfit_set.sum() > 0)

    @torch.no_grad()
    def set_crossfit(self, rows: np.ndarray, values: np.ndarray) -> None:
        """Store the cross-fitted read-outs ``values`` ``(len(rows), E)`` of training patients ``rows``."""
        rows = np.asarray(rows, dtype=np.int64)
        if not self.n_patients or (len(rows) and (rows.min() < 0 or rows.max() >= self.n_patients)):
            raise ValueError(f"cross-fitted rows must lie in [0, {self.n_patients})")
        self.crossfit.zero_()
        self.crossfit_set.zero_()
        self.crossfit[torch.as_tensor(rows)] = torch.as_tensor(np.asarray(values), dtype=self.crossfit.dtype)
        self.crossfit_set[torch.as_tensor(rows)] = 1.0

    @torch.no_grad()
    def set_eqtl(self, index: np.ndarray) -> None:
        """Mark the variants ``index`` (into the dosages) as kept by the eQTL screen."""
        index = np.asarray(index, dtype=np.int64)
        if not self.n_patients or (len(index) and (index.min() < 0 or index.max() >= self.n_features)):
            raise ValueError(f"eQTL variants must lie in [0, {self.n_features})")
        self.eqtl.zero_()
        self.eqtl[torch.as_tensor(index)] = 1.0

    def eqtl_dosages(self, inputs: dict) -> Tensor:
        """``(B, K)``: the standardised dosages (as :meth:`standardise`) of the eQTL-screened SNPs; only
        those K columns are read, not all V."""
        index = torch.as_tensor(self.eqtl_index, device=self.weight.device)
        x = inputs[DOSAGE].to(self.weight.dtype).index_select(1, index)
        z = (x - self.mean.index_select(0, index)) / self.scale.index_select(0, index)
        return torch.where(x < 0, torch.zeros_like(z), z)

    @property
    def is_fitted(self) -> bool:
        # on PyTorch's meta device (a checkpoint's size checked before it is built) values are unknown:
        # taken as fitted, with every variant an eQTL SNP (the widest head the weights could describe)
        return True if self.fitted.is_meta else bool(self.fitted > 0)

    @torch.no_grad()
    def set_fit(self, mean: np.ndarray, scale: np.ndarray, weight: np.ndarray, bias: np.ndarray, alpha: float) -> None:
        """Install a fitted map: ``mean``/``scale`` ``(V,)``, ``weight`` ``(E, V)``, ``bias`` ``(E,)``."""
        for name, value, shape in (("mean", mean, (self.n_features,)), ("scale", scale, (self.n_features,)),
                                   ("weight", weight, (self.out_dim, self.n_features)), ("bias", bias, (self.out_dim,))):
            t = torch.as_tensor(np.asarray(value), dtype=torch.float32)
            if tuple(t.shape) != shape:
                raise ValueError(f"read-out {name} must have shape {shape}, got {tuple(t.shape)}")
            getattr(self, name).copy_(t)
        self.alpha.fill_(float(alpha))
        self.fitted.fill_(1.0)

    def standardise(self, dosage: Tensor) -> Tensor:
        """``(B, V)`` standardised dosages, a missing call (``< 0``) at 0 (the training mean)."""
        z = (dosage - self.mean) / self.scale
        return torch.where(dosage < 0, torch.zeros_like(z), z)

    def forward(self, inputs: dict) -> Tensor:
        return self.standardise(inputs[DOSAGE].to(self.weight.dtype)) @ self.weight.T + self.bias
