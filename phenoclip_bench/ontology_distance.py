"""Paper 000 Fig. 6: does the embedding space keep the HPO graph's notion of closeness?

For the terms of the hpo encoder's vocabulary (the cohort's terms and their ancestors), every
pair (or a random sample of pairs when there are many) gets its ontology graph distance (shortest
``is_a`` path through a common ancestor, :meth:`~phenoclip.io.ontology.Ontology.distance_matrix`)
and its cosine distance in the shared embedding space (:meth:`encode_terms`: a term as a one-term
patient). The Spearman correlation of the two is the figure's number; the plot shows the mean
(and interquartile range) of the cosine distance per graph distance, one line per model, each
divided by that model's mean over all pairs so that models of very different spread share an axis.
"""

from __future__ import annotations

import os

import matplotlib
import numpy as np
import torch
from scipy.stats import spearmanr

#: pairs kept at most (sampled uniformly without replacement when the vocabulary has more)
MAX_PAIRS = 20000


def term_pairs(n_terms: int, max_pairs: int = MAX_PAIRS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) index arrays of distinct term pairs i < j: all of them, or ``max_pairs`` sampled."""
    i, j = np.triu_indices(n_terms, k=1)
    if len(i) > max_pairs:
        keep = np.sort(np.random.default_rng(seed).choice(len(i), max_pairs, replace=False))
        i, j = i[keep], j[keep]
    return i, j


def graph_distances(ontology, vocab_terms: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """int ``(P,)`` graph distance between ``vocab_terms[i]`` and ``vocab_terms[j]`` (-1: unrelated)."""
    d = ontology.distance_matrix([int(t) for t in vocab_terms])
    return d[i, j]


@torch.no_grad()
def cosine_distances(model, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """``1 - cos`` between the shared-space embeddings of vocabulary terms ``i`` and ``j``."""
    z = torch.nn.functional.normalize(model.encode_terms().float(), dim=1).numpy()
    return 1.0 - np.einsum("pe,pe->p", z[i], z[j])


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return float(spearmanr(x, y).statistic)


def binned(graph: np.ndarray, cos: np.ndarray) -> dict[int, tuple[float, float, float, int]]:
    """``{graph distance: (mean, 25th percentile, 75th percentile, pairs)}`` of the cosine distance."""
    out = {}
    for d in np.unique(graph):
        c = cos[graph == d]
        out[int(d)] = (float(c.mean()), float(np.percentile(c, 25)), float(np.percentile(c, 75)), int(len(c)))
    return out


def plot_distance(curves: dict[str, tuple[np.ndarray, np.ndarray]], out_png: str | os.PathLike,
                  title: str = "") -> dict[str, float]:
    """One line per model (mean cosine distance per graph distance, IQR band); returns its Spearman rho.

    ``curves``: ``{model label: (graph distances, cosine distances)}`` of the same pairs.
    """
    matplotlib.use("Agg")
    # imported here, not at the top: pyplot loads only once the Agg backend is chosen, and choosing it is
    # drawing's business, not an import's (as in phenoclip.eval.plots)
    import matplotlib.pyplot as plt

    rhos = {}
    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=120)
    for k, (label, (g, c)) in enumerate(curves.items()):
        ok = g >= 0
        rhos[label] = spearman(g[ok], c[ok])
        # relative to the model's own mean: an untrained MLP squeezes every term into a narrow cone (cosine
        # distances ~0.005), which would flatten its line; Spearman is unaffected by the scaling
        b = binned(g[ok], c[ok] / max(float(c[ok].mean()), 1e-12))
        xs = np.array(sorted(b)) + (k - (len(curves) - 1) / 2) * 0.08  # small offset: bands do not hide each other
        means = np.array([b[d][0] for d in sorted(b)])
        lo, hi = np.array([b[d][1] for d in sorted(b)]), np.array([b[d][2] for d in sorted(b)])
        line, = ax.plot(xs, means, marker="o", ms=3, label=f"{label} (Spearman {rhos[label]:.2f})")
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
    ax.set_xlabel("HPO graph distance (shortest is-a path via a common ancestor)")
    ax.set_ylabel("cosine distance / the model's mean over all pairs\n(mean, IQR)")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(os.fspath(out_png), format="png")
    plt.close(fig)
    return rhos
