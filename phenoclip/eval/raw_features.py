"""A modality's raw input features as a plain matrix, for the classic baselines beside every learned result.

* :func:`raw_features`: ``(ids, X)`` of the patients having a modality: dosages (missing calls
  NaN unless imputed), expression values standardised as the model sees them, flattened MRI
  volumes (the images only: lesion masks are labels, not inputs) and signal windows, and for HPO the multi-hot of the recorded terms and their ancestors;
* :func:`amplitude_spectra`: each signal window's amplitude spectrum per channel, the features a
  classic model of a recording whose start is arbitrary reads (a circular shift leaves it unchanged);
* :func:`classic_features`: what every classic baseline reads of a modality: :func:`raw_features`,
  but a recording's amplitude spectra;
* :func:`on_patients`: the same rows placed on a list of patients, NaN rows for those lacking it;
* :func:`standardise`: mean imputation and z-scoring fitted on training rows only;
* :func:`fuse`: early fusion of several modalities into one matrix, each block weighted equally.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from phenoclip.data.batch import DOSAGE, IMAGES, SIGNALS, VALUES
from phenoclip.data.multimodal import MultimodalDataset
from phenoclip.models.linear_path import flat_input

#: the one tensor of a modality's batch item that its encoder reads (never an MRI store's masks)
MODEL_INPUT = {"gene": DOSAGE, "expr": VALUES, "mri": IMAGES, "signal": SIGNALS}

def raw_features(stores, modality: str, samples: Sequence[str], expr_scaling=None,
                 impute_dosage: bool = True) -> tuple[list[str], np.ndarray]:
    """The input features of a modality as flat float64 rows, for the patients of ``samples`` having it.

    gene: dosage, missing calls (< 0) at the column mean of these patients (or NaN with
    ``impute_dosage=False``, for a caller that imputes from training rows only); expr:
    standardised with ``expr_scaling`` (mean, std) as the model sees it; mri / signal: flattened
    arrays; hpo: multi-hot of the recorded terms and all their ancestors.
    """
    ms = stores.by_modality[modality]
    ids = [s for s in samples if s in ms.row]
    if modality == "hpo":
        data = ms.meta["phenotypes"]
        rows = []
        for s in ids:
            terms = {int(t) for t in data.terms[ms.row[s]]}
            for t in list(terms):
                terms |= data.ontology.ancestors(t)
            rows.append(terms)
        cols = {t: j for j, t in enumerate(sorted(set().union(*rows)))} if rows else {}
        x = np.zeros((len(ids), len(cols)))
        for i, terms in enumerate(rows):
            x[i, [cols[t] for t in terms]] = 1.0
        return ids, x
    ds = MultimodalDataset(stores, [modality], ids, expr_stats=expr_scaling)
    # only the tensor the encoders read: an MRI store's lesion masks are an annotation, not an
    # input (with them, a "raw voxel" baseline read the answer: MRI AUROC 0.884 against 0.513)
    key = MODEL_INPUT[modality]
    x = np.stack([ds[i][modality][key].numpy().ravel() for i in range(len(ids))]).astype(np.float64)
    if modality == "gene":
        x[x < 0] = np.nan
        if impute_dosage:
            x = np.where(np.isnan(x), np.nan_to_num(np.nanmean(x, axis=0)), x)
    return ids, x


def amplitude_spectra(stores, samples: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """``(ids, X)``: ``|rfft|`` of every channel of the signal windows, flattened ``(N, C x (L // 2 + 1))``.

    The same features the signal linear path takes its principal components of
    (:func:`phenoclip.models.linear_path.flat_input`); the time-domain samples of
    :func:`raw_features` are a weak reference for recordings that start at an arbitrary beat (a
    logistic regression on them reaches 0.55-0.64 held-out AUROC on the sample cohort, one on the
    spectra's principal components 0.73-0.75).
    """
    ms = stores.by_modality["signal"]
    ids = [s for s in samples if s in ms.row]
    ds = MultimodalDataset(stores, ["signal"], ids)
    if not ids:
        return ids, np.zeros((0, 0))
    # the linear path's own function, so the baseline and the path cannot drift apart
    windows = torch.stack([ds[i]["signal"][SIGNALS] for i in range(len(ids))])
    return ids, flat_input("signal", {SIGNALS: windows}).numpy().astype(np.float64)


def classic_features(stores, modality: str, samples: Sequence[str], expr_scaling=None,
                     impute_dosage: bool = True) -> tuple[list[str], np.ndarray]:
    """``(ids, X)`` a classic baseline reads of ``modality``: :func:`raw_features`, except that a
    recording is read as its :func:`amplitude_spectra`.

    Every raw-feature reference (finetune's logistic regression and elastic net, the benchmark's raw,
    fused, MOFA+ and PCA + CCA baselines) reads these, so that none is handicapped by a signal's
    arbitrary starting beat.
    """
    if modality == "signal":
        return amplitude_spectra(stores, samples)
    return raw_features(stores, modality, samples, expr_scaling, impute_dosage)


def on_patients(ids: Sequence[str], x: np.ndarray, samples: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(X (N, F), present (N,))``: rows of ``(ids, x)`` placed on ``samples``, NaN rows where absent."""
    row = {s: i for i, s in enumerate(ids)}
    idx = np.array([row.get(s, -1) for s in samples], dtype=np.int64)
    present = idx >= 0
    out = np.full((len(samples), x.shape[1]), np.nan)
    out[present] = x[idx[present]]
    return out, present


def standardise(x: np.ndarray, fit: np.ndarray) -> np.ndarray:
    """Impute NaN with the mean of the ``fit`` rows, then z-score with their mean and SD (constant columns: 0)."""
    mean = np.nan_to_num(np.nanmean(x[fit], axis=0)) if fit.any() else np.zeros(x.shape[1])
    x = np.where(np.isnan(x), mean, x)
    sd = x[fit].std(axis=0) if fit.any() else np.ones(x.shape[1])
    return (x - mean) / np.where(sd > 1e-8, sd, 1.0)


def fuse(blocks: Mapping[str, tuple[np.ndarray, np.ndarray]], fit: np.ndarray) -> np.ndarray:
    """Early fusion of ``{modality: (X with NaN rows, present)}`` into one standardised matrix.

    Each block is standardised on the ``fit`` rows having it, absent rows set to 0 (its training
    mean) with a missingness indicator column, and divided by sqrt(its feature count) so that
    every modality carries the same total variance: otherwise 32,768 MRI voxels would drown
    200 genes in any L2-penalised fit.
    """
    parts = []
    for x, present in blocks.values():
        z = standardise(x, fit & present) * present[:, None] / np.sqrt(max(x.shape[1], 1))
        parts += [z, (~present)[:, None].astype(np.float64)]
    return np.concatenate(parts, axis=1)
