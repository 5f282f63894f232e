"""The eQTL screen: the variants that most strongly drive a measured gene's expression.

A classic two-stage reference for a model of genotypes, the idea behind expression-informed
variant sets (PrediXcan, TWAS): on patients with both genotypes and expression, each gene's
strongest variant by absolute Pearson correlation between its dosage and the gene's expression,
kept when that correlation passes a Bonferroni bound over every gene x variant test. No label is
read, so the screen may be fitted on every training patient, as a principal-component axis is.
A classifier on the kept dosages is then the reference (``--suite baselines``'s gene row).

The scan is genome-wide (no cis window: a store of dosages carries no gene coordinates), so a
variant that moves a gene through the disease it raises (a trans association) is kept too. On a
simulated cohort, whose causal variants are cis-eQTLs of their genes (``truth.json``), the screen
keeps them and a few variants of the heritable traits.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from phenoclip.data.batch import DOSAGE
from phenoclip.eval.raw_features import classic_features, on_patients, standardise

#: family-wise error of the Bonferroni bound over genes x variants
ALPHA = 0.05
#: at most this many variants are kept (the strongest first)
MAX_VARIANTS = 64
#: variants correlated per block (bounds memory at CHUNK x genes floats)
CHUNK = 4096


def critical_r(n: int, tests: int, alpha: float = ALPHA) -> float:
    """The absolute Pearson correlation over ``n`` patients that passes a two-sided test at
    ``alpha / tests`` (the t-test of a correlation, ``n - 2`` degrees of freedom)."""
    if n < 4 or tests < 1:
        return np.inf
    t = float(stats.t.isf(alpha / (2 * tests), n - 2))
    return t / np.sqrt(n - 2 + t * t)


def eqtl_variants(dosage: np.ndarray, expression: np.ndarray, alpha: float = ALPHA,
                  max_variants: int = MAX_VARIANTS) -> np.ndarray:
    """Indices of the variants the screen keeps, strongest first (at most ``max_variants``).

    ``dosage`` ``(N, V)`` (NaN: a missing call) and ``expression`` ``(N, G)`` of the same ``N``
    patients. A gene whose strongest variant does not pass the Bonferroni bound over ``V x G``
    tests contributes nothing; a variant strongest for several genes is kept once, at its largest
    correlation. Empty when no gene passes.
    """
    if len(dosage) != len(expression):
        raise ValueError(f"dosage has {len(dosage)} patients, expression {len(expression)}")
    # every patient's column z-scores (a missing call at its column's mean adds nothing; a constant column is 0)
    every = np.ones(len(dosage), bool)
    d = standardise(np.asarray(dosage, dtype=np.float64), every)
    e = standardise(np.asarray(expression, dtype=np.float64), every)
    n, v = d.shape
    g = e.shape[1]
    if v == 0 or g == 0:
        return np.zeros(0, dtype=np.int64)
    best_r, best_v = np.zeros(g), np.zeros(g, dtype=np.int64)
    for start in range(0, v, CHUNK):
        r = np.abs(d[:, start:start + CHUNK].T @ e) / n        # (chunk, G)
        top = r.argmax(axis=0)
        better = r[top, np.arange(g)] > best_r
        best_r = np.where(better, r[top, np.arange(g)], best_r)
        best_v = np.where(better, top + start, best_v)
    passed = best_r > critical_r(n, v * g, alpha)
    strength: dict[int, float] = {}
    for variant, r in zip(best_v[passed].tolist(), best_r[passed].tolist()):
        strength[variant] = max(r, strength.get(variant, 0.0))
    order = sorted(strength, key=lambda k: (-strength[k], k))
    return np.asarray(order[:max_variants], dtype=np.int64)


#: fewer patients with genotypes and expression: no screen
MIN_PATIENTS = 8
#: at most this many dosages (patients x variants) are read for the screen, in float64 about 0.8 GB
#: (as the genotype read-out's fit, phenoclip.pretrain.readout.MAX_CELLS); beyond it a seeded subset
#: of the patients, which the Bonferroni bound then counts
MAX_CELLS = 100_000_000


def screen_cohort(stores, samples) -> np.ndarray:
    """:func:`eqtl_variants` over those of ``samples`` (e.g. a pretraining run's training patients)
    that have genotypes and expression in ``stores`` (a :class:`~phenoclip.data.multimodal.CohortStores`):
    indices into the genotype store's variants. Empty without an expression store or with fewer
    than :data:`MIN_PATIENTS` such patients; at most :data:`MAX_CELLS` dosages are read (a seeded
    subset of the patients beyond it). (A correlation is blind to each gene's scaling, so the
    expression is read unscaled.)"""
    if "gene" not in stores.by_modality or "expr" not in stores.by_modality:
        return np.zeros(0, dtype=np.int64)
    both = [s for s in samples if stores.present("gene", [s])[0] and stores.present("expr", [s])[0]]
    if len(both) < MIN_PATIENTS:
        return np.zeros(0, dtype=np.int64)
    n_variants = max(1, int(stores.by_modality["gene"].shapes[DOSAGE][0]))
    if len(both) * n_variants > MAX_CELLS:
        keep = max(MIN_PATIENTS, MAX_CELLS // n_variants)
        both = [both[i] for i in np.sort(np.random.default_rng(0).permutation(len(both))[:keep])]
    ids, dosage = classic_features(stores, "gene", both, None, impute_dosage=False)
    expression = on_patients(*classic_features(stores, "expr", both, None), ids)[0]
    return eqtl_variants(dosage, expression)
