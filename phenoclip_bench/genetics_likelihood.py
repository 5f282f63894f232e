"""The likelihood scores behind :mod:`phenoclip_bench.genetics_ceiling`: how well a genotype side
explains each partner record, and R@1 / MRR of the resulting score matrices.

Every function takes the genotype side's trait predictions and disease probabilities (computed
by the ceiling module on the training patients) and scores every (genotype, partner record)
couple of the held-out patients by a log-likelihood ratio against the marginal likelihood; see
the ceiling module's docstring for what is scored and why.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from scipy.stats import norm

from phenoclip.eval.retrieval import metrics_from_rank_bounds

def likelihood_scores(pred: np.ndarray, prob: np.ndarray, traits: np.ndarray, disease: np.ndarray,
                      fit_rows: Sequence[int], rows: Sequence[int], channel: dict) -> np.ndarray:
    """``S[i, j]``: log-likelihood ratio of patient ``rows[j]``'s planted partner values given ``rows[i]``'s
    genotype side, against their marginal likelihood.

    Dividing by the marginal (Bayes' rule for "which of these records is this genotype's") keeps a
    partner with common values from outranking the true one when the genotype says little.
    ``pred`` / ``prob``: genotype-side trait predictions and disease probabilities (all patients);
    ``traits`` / ``disease``: the planted values. Each trait's Gaussian given the genotype, and its
    marginal, are fitted on ``fit_rows``.
    """
    fit_rows, rows = list(fit_rows), list(rows)
    s_mat = np.zeros((len(rows), len(rows)))
    used = set(channel["traits"]) | {k for k, _, _ in channel["terms"]}
    for k in sorted(used):
        mu, sd, mean0, sd0 = _trait_gaussians(pred[:, k], traits[:, k], fit_rows, rows)
        if k in channel["traits"]:
            s_mat += _gauss(traits[rows, k][None, :], mu[:, None], sd) - _gauss(traits[rows, k], mean0, sd0)[None, :]
        for kk, direction, threshold in channel["terms"]:
            if kk != k:
                continue
            has = traits[rows, k] > threshold if direction == ">" else traits[rows, k] < threshold
            s_mat += _term_loglik(has[None, :], mu[:, None], sd, direction, threshold)
            s_mat -= _term_loglik(has, mean0, sd0, direction, threshold)[None, :]
    prior = np.bincount(disease[fit_rows], minlength=prob.shape[1]) / len(fit_rows)
    s_mat += np.log(np.clip(prob[rows], 1e-9, None))[:, disease[rows]]
    s_mat -= np.log(np.clip(prior, 1e-9, None))[disease[rows]][None, :]
    return s_mat


def _trait_gaussians(pred: np.ndarray, value: np.ndarray, fit_rows: list[int],
                     rows: list[int]) -> tuple[np.ndarray, float, float, float]:
    """One trait: its mean given each of ``rows``' genotype side and the residual sd (the line fitted
    on ``fit_rows``), then its marginal mean and sd there."""
    a, b = _calibration(pred[fit_rows], value[fit_rows])
    sd = max(float(np.std(value[fit_rows] - (a * pred[fit_rows] + b))), 1e-6)
    return a * pred[rows] + b, sd, float(value[fit_rows].mean()), max(float(value[fit_rows].std()), 1e-6)


def _calibration(pred: np.ndarray, value: np.ndarray) -> tuple[float, float]:
    # least-squares line; a constant prediction (a lasso that kept no SNP) says nothing: slope 0
    if np.std(pred) <= 1e-12:
        return 0.0, float(value.mean())
    a, b = np.polyfit(pred, value, 1)
    return float(a), float(b)


def _gauss(x, mu, sd) -> np.ndarray:
    return -((x - mu) ** 2) / (2 * sd * sd) - np.log(sd)


def _term_loglik(has, mu, sd, direction: str, threshold: float) -> np.ndarray:
    p = norm.sf((threshold - mu) / sd) if direction == ">" else norm.cdf((threshold - mu) / sd)
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return np.where(has, np.log(p), np.log1p(-p))


def decoded_scores(pred: np.ndarray, prob: np.ndarray, values: np.ndarray, partner_prob: np.ndarray,
                   disease: np.ndarray, fit_rows: Sequence[int], rows: Sequence[int], shown: Sequence[int]) -> np.ndarray:
    """``S[i, j]``: log-likelihood ratio of the traits decoded from ``rows[j]``'s partner data given
    ``rows[i]``'s genotype side, plus the log-ratio of the two sides' disease probabilities agreeing.

    Like :func:`likelihood_scores`, with the partner's decoded values (``values``, ``partner_prob``)
    in place of the planted truth; each decoded trait's Gaussian given the genotype is fitted on ``fit_rows``.
    """
    fit_rows, rows = list(fit_rows), list(rows)
    s_mat = np.zeros((len(rows), len(rows)))
    for k in shown:
        mu, sd, mean0, sd0 = _trait_gaussians(pred[:, k], values[:, k], fit_rows, rows)
        s_mat += _gauss(values[rows, k][None, :], mu[:, None], sd) - _gauss(values[rows, k], mean0, sd0)[None, :]
    prior = np.clip(np.bincount(disease[fit_rows], minlength=prob.shape[1]) / len(fit_rows), 1e-9, None)
    # P(same disease | both sides) / P(same disease | independent): sum_d p_i(d) q_j(d) / prior(d)
    s_mat += np.log(np.clip((prob[rows] / prior) @ partner_prob[rows].T, 1e-9, None))
    return s_mat


def score_matrix_metrics(s_mat: np.ndarray) -> dict[str, float]:
    """R@1, MRR and R@1 over chance of a square score matrix whose diagonal holds the true couples.

    Both directions (rows as queries, then columns), ties broken at random as in the main table.
    """
    n = s_mat.shape[0]
    out = []
    for s in (s_mat, s_mat.T):
        true = np.diag(s)[:, None]
        band = 1e-9 * np.maximum(np.abs(true), 1.0)
        higher = (s > true + band).sum(1)
        tied = (s >= true - band).sum(1) - higher
        out.append(metrics_from_rank_bounds(torch.as_tensor(higher), torch.as_tensor(tied), (1,)))
    r1, mrr = (out[0]["R@1"] + out[1]["R@1"]) / 2, (out[0]["MRR"] + out[1]["MRR"]) / 2
    return {"n": n, "R@1": r1, "MRR": mrr, "x chance@1": r1 * n}
