"""The linear path of an embedding: principal components of the raw input, mapped linearly.

A modality's embedding is ``projection(encoder(x)) + linear_path(x)`` ("wide and deep"). The
deep path learns what a network can learn; the linear path holds, from the first step, every
direction a linear model of the raw features could use, so contrastive training can keep what a
PCA + CCA or a logistic regression on the raw features would find, and small cohorts (a few
hundred patients, where deep encoders on thousands of inputs memorise or collapse) still get
embeddings that carry the linear signal.

The principal axes are data, not learned weights: :meth:`PCAPath.fit` computes them on the
training patients (like the dosage column means), they are saved as buffers, and a
random-initialised twin of a checkpoint keeps them (its ``linear`` map is random).

Raw input per modality (:func:`flat_input`):

- ``gene``: dosages ``(B, V)``, a missing call (``< 0``) at the training mean, so it adds nothing;
- ``expr``: standardised values ``(B, G)``;
- ``mri``: the volume ``(B, C, D, H, W)``, average-pooled until at most :data:`MAX_MRI_FEATURES` voxels;
- ``signal``: the amplitude spectrum of each channel (``|rfft|``), which a circular shift of the
  recording (the training augmentation; a recording's start is arbitrary) leaves unchanged.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from phenoclip.data.batch import DOSAGE, IMAGES, SIGNALS, VALUES
from phenoclip.models.heads import check_positive

#: modalities that get a linear path (hpo is a set of ontology terms; its graph encoder is already linear in them)
LINEAR_PATH_MODALITIES = ("gene", "expr", "mri", "signal")
#: voxels kept for the MRI path: a 32^3 grid; larger volumes are average-pooled down to it
MAX_MRI_FEATURES = 32 ** 3
#: modality -> training patients per kept component. The signal path keeps at most one component
#: per 4 training patients: 128 components of the amplitude spectra of ~145 patients are nearly one
#: axis per patient, a patient code that CLIP aligns with the other modalities' (held-out signal
#: probe 0.61 against 0.97 out-of-fold on the pretraining patients). On the sample cohort (3 seeds,
#: docs/experiments.md, "the signal path keeps one component per 4 training patients") the cap
#: lifted the signal probe by 0.015-0.046 at every label fraction and expr-hpo retrieval above
#: PCA + CCA (MRR 0.427 against 0.405). The same cap cost MRI (its components are population
#: directions) and genotypes, so they keep every component; capping genotypes only pays together
#: with an L1 first layer for the dosage MLP, which is not the default (DosageMLPConfig.l1).
PATIENTS_PER_COMPONENT = {"signal": 4}
#: modality -> what its linear probe (``finetune --mode linear``) reads beyond the embedding, and how it
#: scales the path's principal-component scores that it reads beside it ("encoder": beside the deep
#: encoder's output instead of the embedding, below): "dimension" z-scores each score, as the embedding's
#: dimensions are; "natural" only centres them, so they keep the path's own scale (relative variances
#: as the data has them, mean variance 1) and the probe's L2 penalty sees the raw features'
#: geometry: with every component kept it is a logistic regression on the raw standardised
#: features, rotated, beside the embedding.
#:
#: MRI ("dimension"): contrastive training maps its 128 components into the 64-wide space keeping
#: the directions the other modalities share and drops population directions that carry the label
#: (the MRI deep path adds little: a probe on the ViT's pooled features alone is near chance on the
#: sample cohort). Probed side by side, on the same checkpoints and splits, the sample cohort's MRI
#: probe (9 seeds) and the 2,000-patient cohort's gained at every label fraction, the latter
#: reaching raw-voxel logistic regression at full labels (docs/experiments.md, "the MRI probe reads
#: its principal components too"). At their natural scale MRI's scores lost (raw-voxel geometry is
#: itself near chance on the sample cohort: voxel logistic regression 0.48-0.52).
#:
#: Expression ("natural"): z-scored, its scores lost (0.965 -> 0.890 at 10 % of labels, seed 0: 128
#: components of ~145 patients are nearly patient codes once each is lifted to unit variance); at
#: their natural scale the probe gained at every label fraction, on the sample cohort (9 seeds) and
#: on GSE7390 (18 seeds) (docs/experiments.md, "expression reads its components at their own scale").
#: Signals ("encoder"): the deep encoder's pooled output (before the projection head, z-scored)
#: beside the component scores at their natural scale. Logistic regression on the scores alone,
#: the principal components of the amplitude spectra, is the strongest classic model of a recording
#: measured; the pretrained embedding lost to it (the two paths side by side, each L2-normalised,
#: the kind before: -0.012 / -0.016 at 10 % of labels on the sample, 12 seeds, and the coalescent
#: cohort, 6 seeds, the latter real), as CLIP keeps in its 64 shared directions what signals share
#: with the other modalities, not all the spectral variance that carries the label. Beside the
#: scores the encoder output comes level with it at every fraction on both cohorts (within 0.002)
#: and gains on the paths +0.012 / +0.018 at 10 % (real); the two paths beside the scores, or the
#: encoder output beside the linear path, gained less, and the encoder output alone lost on the
#: coalescent cohort (-0.013 to -0.042) (docs/experiments.md, "2026-12-07 (last)"). It is a tie with
#: the classic model, not a win: the random-init encoder's output does as well.
#: Genotypes have no linear path: a head over them alone reads the read-out's eQTL-screened SNPs beside it
#: ("eqtl", :class:`~phenoclip.models.readout.GenotypeReadout`), and chooses between the two.
PROBE_COMPONENTS = {"mri": "dimension", "expr": "natural", "signal": "encoder", "gene": "eqtl"}


def mri_pool_factor(volume_shape) -> int:
    """Smallest integer pooling factor that brings the volume to at most :data:`MAX_MRI_FEATURES` voxels."""
    f = 1
    while int(np.prod([max(1, s // f) for s in volume_shape])) > MAX_MRI_FEATURES:
        f += 1
    return f


def n_raw_features(modality: str, shape: dict) -> int:
    """Length of :func:`flat_input`'s rows for a modality's data shape (see ``models.registry``)."""
    if modality == "gene":
        return int(shape["n_variants"])
    if modality == "expr":
        return int(shape["n_genes"])
    if modality == "mri":
        f = mri_pool_factor(shape["volume_shape"])
        return int(shape.get("in_channels", 1)) * int(np.prod([max(1, s // f) for s in shape["volume_shape"]]))
    if modality == "signal":
        return int(shape["n_channels"]) * (int(shape["length"]) // 2 + 1)
    raise ValueError(f"no linear path for modality '{modality}' (only {', '.join(LINEAR_PATH_MODALITIES)})")


def flat_input(modality: str, inputs: dict, pool: int = 1) -> Tensor:
    """``(B, F)`` raw features of one modality's batch sub-dict (missing dosages left negative)."""
    if modality == "gene":
        return inputs[DOSAGE]
    if modality == "expr":
        return inputs[VALUES]
    if modality == "mri":
        v = inputs[IMAGES]
        if pool > 1:
            v = nn.functional.avg_pool3d(v, pool)
        return v.flatten(1)
    if modality == "signal":
        return torch.fft.rfft(inputs[SIGNALS], dim=-1).abs().flatten(1)
    raise ValueError(f"no linear path for modality '{modality}'")


class PCAPath(nn.Module):
    """Raw features ``(B, F)`` -> ``(B, E)``: the top ``k`` principal components, then a Linear.

    Parameters
    ----------
    modality:
        Which raw input to read (:func:`flat_input`).
    n_features:
        ``F``.
    n_components:
        ``k``; components beyond the training patients' rank (or, for a modality of
        :data:`PATIENTS_PER_COMPONENT`, beyond one per that many training patients) stay at zero.
    out_dim:
        ``E``, the shared embedding size.
    pool:
        MRI average-pooling factor (:func:`mri_pool_factor`).
    """

    def __init__(self, modality: str, n_features: int, n_components: int, out_dim: int, pool: int = 1):
        super().__init__()
        check_positive(n_features=n_features, n_components=n_components, out_dim=out_dim, pool=pool)
        self.modality, self.pool = modality, pool
        self.n_features, self.n_components = n_features, n_components
        self.register_buffer("mean", torch.zeros(n_features))
        #: (k, F): principal axes, scaled so that the scores' mean variance over components is 1
        self.register_buffer("components", torch.zeros(n_components, n_features))
        self.linear = nn.Linear(n_components, out_dim)

    @property
    def config(self) -> dict:
        return {"n_features": self.n_features, "n_components": self.n_components, "pool": self.pool}

    @torch.no_grad()
    def fit(self, x: np.ndarray) -> int:
        """Principal axes of the training rows ``x`` ``(N, F)`` (missing dosages negative); returns the rank used."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"fit needs (N, {self.n_features}) rows, got {x.shape}")
        if self.modality == "gene":
            called = x >= 0
            mean = np.where(called, x, 0).sum(0) / np.maximum(called.sum(0), 1)
            x = np.where(called, x, mean)
        else:
            mean = x.mean(0)
        centred = x - mean
        # thin SVD: (N x F) with N patients << F features costs O(N^2 F)
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        sd = s / np.sqrt(max(len(x) - 1, 1))
        keep = int(min(self.n_components, (sd > 1e-6 * max(sd.max(initial=0.0), 1e-12)).sum()))
        if self.modality in PATIENTS_PER_COMPONENT:
            keep = min(keep, max(1, len(x) // PATIENTS_PER_COMPONENT[self.modality]))
        comps = np.zeros((self.n_components, self.n_features))
        # one scale for all kept components (their mean variance becomes 1), not one per component:
        # whitening would blow the noise of the last components up to the level of the first, and the
        # weight decay on ``linear`` then acts as a ridge that favours the high-variance directions.
        # On the sample cohort (seed 0, 128 components) whitening lost expr-mri and mri-hpo retrieval
        # to PCA + CCA and the expression probe at 10 % of labels to logistic regression; this did not.
        comps[:keep] = vt[:keep] / np.sqrt(np.mean(sd[:keep] ** 2))
        self.mean.copy_(torch.as_tensor(mean, dtype=self.mean.dtype))
        self.components.copy_(torch.as_tensor(comps, dtype=self.components.dtype))
        return keep

    def scores(self, inputs: dict) -> Tensor:
        """``(B, k)`` principal-component scores of a batch sub-dict."""
        return self.project(flat_input(self.modality, inputs, self.pool))

    def project(self, x: Tensor) -> Tensor:
        """``(B, k)`` principal-component scores of raw features ``x`` ``(B, F)`` already flat (:func:`flat_input`)."""
        centred = x - self.mean
        if self.modality == "gene":
            centred = torch.where(x < 0, torch.zeros_like(centred), centred)
        return centred @ self.components.T

    def forward(self, inputs: dict) -> Tensor:
        return self.linear(self.scores(inputs))


def build_linear_path(modality: str, shape: dict, n_components: int, out_dim: int) -> PCAPath:
    """A :class:`PCAPath` for a modality's data shape (see ``models.registry``)."""
    pool = mri_pool_factor(shape["volume_shape"]) if modality == "mri" else 1
    return PCAPath(modality, n_raw_features(modality, shape), n_components, out_dim, pool)
