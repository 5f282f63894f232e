"""Hand-made features, the ElasticNet baseline and the linear probe of ``--suite classify`` (paper 000, Table 2).

Every builder returns ``(X (N, F) float64, present (N,) bool, names)`` for a list of patients,
with NaN rows where the modality's store lacks the patient. Whatever is *fitted* (PCA axes, the
HPO vocabulary, imputation means) is fitted on the training patients only, so nothing of the
test split leaks into the features:

* genetics: the top principal components of the dosage matrix, the standardised dosages
  themselves (the L1 part of the ElasticNet selects among them), and the store's ``pgs`` /
  ``burden`` matrices when ``phenoclip preprocess --pgs/--genes`` wrote them;
* expression: the store's log values (cpm-log1p), standardised in the classifier pipeline;
* MRI: a histogram and percentiles of the brain (non-zero) voxel intensities, the count of
  hyperintense voxels per hemisphere, and the volume averaged down to 8^3 blocks;
* signals: per channel (ECG, PPG) heart rate and RR-interval statistics from peak detection
  (mean, SD, RMSSD, coefficient of variation, share of successive differences > 50 ms) and the
  relative Welch power in six frequency bands, plus spectral entropy;
* HPO: indicators of the terms annotated to the patient (vocabulary: terms of training patients).
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
from scipy.signal import find_peaks, welch
from sklearn.compose import ColumnTransformer
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from phenoclip.preprocess.phenotypes import read_phenotype_store
from phenoclip.store_read import open_store

#: principal components of the dosage matrix kept as features
N_GENE_PCS = 10
#: (low, high) Hz of the Welch band powers of the signal features
SIGNAL_BANDS = [(0.5, 1.0), (1.0, 2.0), (2.0, 4.0), (4.0, 8.0), (8.0, 15.0), (15.0, 40.0)]
#: block edge (voxels) of the downsampled MRI volume
MRI_BLOCK = 4


def _rows(store_samples: Sequence[str], samples: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(row in the store or -1, present) for each of ``samples``."""
    row = {s: i for i, s in enumerate(store_samples)}
    idx = np.array([row.get(s, -1) for s in samples], dtype=np.int64)
    return idx, idx >= 0


def _scatter(values: np.ndarray, idx: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Rows of ``values`` placed at the patients' positions, NaN rows for absent patients."""
    out = np.full((len(idx), values.shape[1]), np.nan)
    out[present] = values[idx[present]]
    return out


def gene_features(path, samples: Sequence[str], train: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Dosage PCs + standardised dosages (+ pgs / burden columns if the store has them)."""
    with open_store(path) as s:
        idx, present = _rows(s.samples, samples)
        dosage = s["dosage"][...].astype(np.float64)
        ids = s.strings("variants/id")
        extra = {k: s[k][...].astype(np.float64) for k in ("pgs", "burden") if k in s}
    dosage[dosage < 0] = np.nan
    x = _scatter(dosage, idx, present)
    fit = train & present
    mean = np.nan_to_num(np.nanmean(x[fit], axis=0), nan=0.0)
    x = np.where(np.isnan(x), mean, x)  # missing calls: the training mean dosage
    sd = x[fit].std(axis=0)
    z = (x - mean) / np.where(sd > 1e-8, sd, 1.0)
    # PCA axes from the training patients: eigenvectors of their (patients x patients) Gram matrix,
    # far cheaper than the SVD of the patients x variants matrix when variants outnumber patients
    zf = z[fit]
    evals, evecs = np.linalg.eigh(zf @ zf.T)
    top = np.argsort(evals)[::-1][:N_GENE_PCS]
    axes = (evecs[:, top].T @ zf) / np.sqrt(np.maximum(evals[top], 1e-12))[:, None]
    pcs = z @ axes.T
    blocks, names = [pcs, z], [f"gene_pc{i + 1}" for i in range(pcs.shape[1])] + [f"dosage:{v}" for v in ids]
    for key, values in extra.items():
        blocks.append(_scatter(values.reshape(len(values), -1), idx, present))
        names += [f"{key}{i}" for i in range(blocks[-1].shape[1])]
    out = np.concatenate(blocks, axis=1)
    out[~present] = np.nan
    return out, present, names


def expr_features(path, samples: Sequence[str], train: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The store's log expression values (standardised later, with training statistics)."""
    with open_store(path) as s:
        idx, present = _rows(s.samples, samples)
        values = s["values"][...].astype(np.float64)
        genes = s.strings("genes")
    return _scatter(values, idx, present), present, [f"expr:{g}" for g in genes]


def volume_features(image: np.ndarray) -> np.ndarray:
    """Intensity statistics of one z-scored volume (D, H, W), first axis left -> right."""
    brain = image[image != 0]
    if brain.size == 0:
        brain = np.zeros(1)
    hist = np.histogram(brain, bins=16, range=(-4.0, 4.0))[0] / brain.size
    pct = np.percentile(brain, [1, 5, 25, 50, 75, 95, 99])
    # the lesion is hyperintense and lateralised (neuro left, cardio right): bright voxels per half
    threshold = np.percentile(brain, 99)
    half = image.shape[0] // 2
    bright = [float((image[:half] > threshold).sum()), float((image[half:] > threshold).sum())]
    b = MRI_BLOCK
    d, h, w = (n // b for n in image.shape)
    small = image[:d * b, :h * b, :w * b].reshape(d, b, h, b, w, b).mean(axis=(1, 3, 5)).ravel()
    return np.concatenate([hist, pct, [brain.mean(), brain.std()], bright, small])


def mri_features(path, samples: Sequence[str], train: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Histogram, percentiles, bright voxels per hemisphere and the 8^3 block means of each volume."""
    with open_store(path) as s:
        idx, present = _rows(s.samples, samples)
        images = s["images"]
        feats = np.stack([volume_features(images[int(r), 0].astype(np.float64)) for r in idx[present]])
    names = ([f"hist{i}" for i in range(16)] + [f"p{q}" for q in (1, 5, 25, 50, 75, 95, 99)]
             + ["mean", "sd", "bright_left", "bright_right"]
             + [f"block{i}" for i in range(feats.shape[1] - 27)])
    out = np.full((len(samples), feats.shape[1]), np.nan)
    out[present] = feats
    return out, present, [f"mri:{n}" for n in names]


def channel_features(x: np.ndarray, rate: float) -> np.ndarray:
    """Rate, interval variability and band powers of one standardised channel."""
    seconds = len(x) / rate
    # beats: peaks at most 200/min apart, rising half-way from the median to the top 0.5 % of samples
    # (a 10 s window of ~10 narrow R waves still has that many samples at its peaks)
    height = np.percentile(x, 50) + 0.5 * (np.percentile(x, 99.5) - np.percentile(x, 50))
    peaks, _ = find_peaks(x, distance=max(1, int(0.3 * rate)), height=height)
    rr = np.diff(peaks) / rate
    if len(rr) >= 2:
        d = np.diff(rr)
        beat = [60.0 / rr.mean(), rr.mean(), rr.std(), np.sqrt(np.mean(d ** 2)),
                rr.std() / rr.mean(), float(np.mean(np.abs(d) > 0.05))]
    else:
        beat = [len(peaks) / seconds * 60, seconds, 0.0, 0.0, 0.0, 0.0]
    freq, power = welch(x, fs=rate, nperseg=min(len(x), int(4 * rate)))
    total = power[(freq >= SIGNAL_BANDS[0][0]) & (freq < SIGNAL_BANDS[-1][1])].sum() + 1e-12
    bands = [power[(freq >= lo) & (freq < hi)].sum() / total for lo, hi in SIGNAL_BANDS]
    p = np.asarray(bands) + 1e-12
    entropy = float(-(p * np.log(p)).sum())
    return np.array(beat + bands + [entropy])


def signal_features(path, samples: Sequence[str], train: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per channel: heart rate, RR statistics, relative band powers and spectral entropy (scipy)."""
    with open_store(path) as s:
        idx, present = _rows(s.samples, samples)
        signals = s["signals"][...].astype(np.float64)
        valid = s["valid_length"][...] if "valid_length" in s else np.full(len(signals), signals.shape[-1])
        channels = s.strings("channels")
        rate = float(s.attrs["sampling_rate"])
    rows = []
    for r in idx[present]:
        n = int(valid[r]) or signals.shape[-1]
        rows.append(np.concatenate([channel_features(signals[r, c, :n], rate) for c in range(len(channels))]))
    stats = ["rate_per_min", "rr_mean", "rr_sd", "rmssd", "rr_cv", "share_dd50ms"]
    bands = [f"power_{lo:g}-{hi:g}Hz" for lo, hi in SIGNAL_BANDS] + ["spectral_entropy"]
    names = [f"signal:{c}:{n}" for c in channels for n in stats + bands]
    out = np.full((len(samples), len(names)), np.nan)
    out[present] = np.stack(rows)
    return out, present, names


def hpo_features(path, samples: Sequence[str], train: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Term indicators over the terms annotated to at least one training patient."""
    data = read_phenotype_store(path)
    idx, present = _rows(data.samples, samples)
    terms = [set(map(int, data.terms[r])) if r >= 0 else set() for r in idx]
    vocab = sorted(set().union(*(t for t, k in zip(terms, train & present) if k)))
    col = {t: i for i, t in enumerate(vocab)}
    out = np.zeros((len(samples), len(vocab)))
    for i, t in enumerate(terms):
        out[i, [col[x] for x in t if x in col]] = 1.0
    out[~present] = np.nan
    return out, present, [f"hpo:{data.ontology.ids[v]}" for v in vocab]


BUILDERS = {"gene": gene_features, "expr": expr_features, "mri": mri_features, "signal": signal_features,
            "hpo": hpo_features}


def early_fusion(blocks: dict[str, np.ndarray], train: np.ndarray) -> np.ndarray:
    """Concatenate modality blocks; absent modalities get the training mean plus a missingness indicator."""
    parts = []
    for x in blocks.values():
        missing = np.isnan(x).all(axis=1)
        mean = np.nan_to_num(np.nanmean(x[train & ~missing], axis=0), nan=0.0)
        parts += [np.where(np.isnan(x), mean, x), missing[:, None].astype(np.float64)]
    return np.concatenate(parts, axis=1)


def fit_elasticnet(x_train: np.ndarray, y_train: np.ndarray, grid: dict, seed: int, folds: int = 3,
                   max_iter: int = 100):
    """ElasticNet logistic regression (saga) on standardised features, C / l1_ratio by stratified CV.

    The CV sees the training patients only and scores macro one-vs-rest AUROC (plain AUROC for
    two classes). Returns the refitted pipeline and the chosen parameters. ``penalty`` is left
    at its default: scikit-learn >= 1.8 reads an ``l1_ratio`` strictly between 0 and 1 as the
    elastic net (and deprecates ``penalty='elasticnet'``).
    """
    # saga is capped at max_iter epochs (tol 1e-3): on ~150 patients x ~3,000 features it rarely meets
    # the tolerance, but the test AUROC moved by < 0.01 between 50, 100 and 300 epochs
    model = make_pipeline(StandardScaler(), LogisticRegression(solver="saga", max_iter=max_iter, tol=1e-3,
                                                               random_state=seed))
    params = {f"logisticregression__{k}": v for k, v in grid.items()}
    scoring = "roc_auc_ovr" if len(np.unique(y_train)) > 2 else "roc_auc"
    search = GridSearchCV(model, params, scoring=scoring,
                          cv=StratifiedKFold(folds, shuffle=True, random_state=seed), refit=True, n_jobs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(x_train, y_train)
    chosen = {k.split("__", 1)[1]: v for k, v in search.best_params_.items()}
    return search.best_estimator_, chosen


def full_proba(model, x: np.ndarray, n_classes: int) -> np.ndarray:
    """(N, n_classes) probabilities even when the training split missed a class (its column 0)."""
    p = model.predict_proba(x)
    out = np.zeros((len(x), n_classes))
    out[:, model.classes_.astype(int)] = p
    return out


def fit_probe(x_train: np.ndarray, y_train: np.ndarray, cs: list[float], seed: int, natural=None):
    """Standardised L2 logistic regression (as ``finetune --mode linear``), C by 3-fold CV; (model, C).
    ``natural`` columns (:meth:`~phenoclip.models.multimodal.MultimodalModel.probe_natural`) are only centred."""
    natural = np.zeros(x_train.shape[1], bool) if natural is None else np.asarray(natural, dtype=bool)
    scaler = ColumnTransformer([("z", StandardScaler(), np.flatnonzero(~natural)),
                                ("centre", StandardScaler(with_std=False), np.flatnonzero(natural))])
    model = make_pipeline(scaler, LogisticRegression(max_iter=5000, random_state=seed))
    search = GridSearchCV(model, {"logisticregression__C": cs}, scoring="roc_auc_ovr", n_jobs=1,
                          cv=StratifiedKFold(3, shuffle=True, random_state=seed)).fit(x_train, y_train)
    return search.best_estimator_, float(search.best_params_["logisticregression__C"])
