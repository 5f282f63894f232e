"""A 2D map of patients' embeddings from several modalities, and whether it clusters by label.

Paper 000's Fig. 2: held-out patients from every modality in one t-SNE, coloured by disease and
marked by data source; a shared space that works groups patients by disease, not by modality.
:func:`cluster_scores` puts a number on that picture: the silhouette of the embeddings (cosine,
in the full space, not the 2D projection) grouped by label and grouped by modality.

numpy / scikit-learn / matplotlib only; drawn and written through :mod:`phenoclip.eval.plots`
(the Agg canvas without pyplot, an atomic PNG write).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from sklearn.manifold import TSNE
from sklearn.metrics import silhouette_score

from phenoclip.errors import InputMissingError, MalformedInputError
from phenoclip.eval.plots import new_figure, save_png
from phenoclip.io.tables import read_table


@dataclass
class MapPoints:
    """Points of the map: ``embeddings`` (N, E), and per point its patient, label and group (modality)."""

    embeddings: np.ndarray
    samples: list[str]
    labels: list[str]
    groups: list[str]


def points_from(groups: list[tuple[str, list[str], np.ndarray]], labels: dict[str, str],
                keep: set[str] | None = None) -> MapPoints:
    """One point per (group, patient) with a label, and in ``keep`` when given.

    ``groups``: ``(group name, patient IDs, embeddings (N, E))``, e.g. one per modality.
    """
    embs, ids, labs, names = [], [], [], []
    for name, samples, embeddings in groups:
        for s, e in zip(samples, embeddings):
            if (keep is None or s in keep) and s in labels:
                embs.append(e)
                ids.append(s)
                labs.append(labels[s])
                names.append(name)
    dim = groups[0][2].shape[1] if groups else 0
    stacked = np.stack(embs).astype(np.float32) if embs else np.zeros((0, dim), np.float32)
    return MapPoints(stacked, ids, labs, names)


def split_label_spec(spec: str) -> tuple[str, str | None]:
    """``FILE[:COLUMN]`` -> (FILE, COLUMN or None), raising :class:`InputMissingError` if FILE is absent."""
    path, column = spec, None
    if not os.path.exists(spec) and ":" in spec:
        path, column = spec.rsplit(":", 1)
    if not os.path.isfile(path):
        raise InputMissingError("labels table does not exist", path, "give --labels FILE[:COLUMN]")
    return path, column


def read_label_column(spec: str) -> tuple[dict[str, str], str, str]:
    """``FILE[:COLUMN]`` -> ({sample: label}, column, file); the first column is the sample ID.

    The default column is the second. Empty cells and NA are left out (unlabelled).
    """
    path, column = split_label_spec(spec)
    table = read_table(path)
    if len(table.header) < 2:
        raise MalformedInputError("labels table needs a sample column and at least one label column", path)
    column = column or table.header[1]
    if column not in table.header[1:]:
        raise MalformedInputError(f"no label column '{column}'; found {', '.join(table.header[1:])}", path)
    ids, values = table.column(table.header[0]), table.column(column)
    missing = {"", "NA", "NaN", "nan", "N/A", "null", "none", "."}
    return {s: v for s, v in zip(ids, values) if v not in missing}, column, path


def cluster_scores(points: MapPoints) -> dict:
    """Silhouette (cosine) of the embeddings grouped by label and by modality.

    Higher by label than by modality means the space groups patients by what they have rather
    than by where the data came from. A score is None when its grouping has fewer than two
    groups (or every point is its own group).
    """
    out: dict = {"n_points": len(points.samples), "n_patients": len(set(points.samples)),
                 "n_labels": len(set(points.labels)), "n_modalities": len(set(points.groups))}
    for key, groups in (("silhouette_label", points.labels), ("silhouette_modality", points.groups)):
        n_groups = len(set(groups))
        ok = 2 <= n_groups < len(groups)
        out[key] = float(silhouette_score(points.embeddings, groups, metric="cosine")) if ok else None
    a, b = out["silhouette_label"], out["silhouette_modality"]
    out["clusters_by"] = None if a is None or b is None else ("label" if a > b else "modality")
    return out


def project_2d(embeddings: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """(N, 2) coordinates and the method: UMAP when ``umap`` is importable, else t-SNE (cosine)."""
    n = embeddings.shape[0]
    if n < 3:
        return np.zeros((n, 2)) if n else np.zeros((0, 2)), "none"
    try:
        # imported here: umap is optional (t-SNE otherwise)
        import umap  # type: ignore[import-not-found]

        reducer = umap.UMAP(n_components=2, n_neighbors=min(15, n - 1), metric="cosine", random_state=seed)
        return np.asarray(reducer.fit_transform(embeddings)), "umap"
    except ImportError:
        pass

    # perplexity must stay below n; about n / 4 for small sets, the usual 30 for large ones
    perplexity = float(min(30.0, max(2.0, (n - 1) / 4)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", metric="cosine", random_state=seed)
    return tsne.fit_transform(embeddings.astype(np.float64)), "tsne"


_MARKERS = ["o", "^", "s", "D", "P", "X", "v", "*"]


def plot_map(points: MapPoints, out_png: str | os.PathLike, *, title: str = "", seed: int = 0,
             label_name: str = "label") -> dict:
    """Project, plot (colour = label, marker = modality) and write ``out_png`` atomically.

    Returns the projection method, the scores of :func:`cluster_scores` and the file written.
    """
    # imported here: only plotting pays for matplotlib (importing this module must not load it)
    from matplotlib import colormaps
    from matplotlib.lines import Line2D

    xy, method = project_2d(points.embeddings, seed)
    labels = sorted(set(points.labels))
    groups = sorted(set(points.groups))
    cmap = colormaps["tab10" if len(labels) <= 10 else "tab20"]
    fig = new_figure(figsize=(7, 6))
    ax = fig.add_subplot(1, 1, 1)
    lab_arr, grp_arr = np.asarray(points.labels, dtype=object), np.asarray(points.groups, dtype=object)
    for gi, g in enumerate(groups):
        for li, lab in enumerate(labels):
            sel = (grp_arr == g) & (lab_arr == lab)
            if sel.any():
                ax.scatter(xy[sel, 0], xy[sel, 1], s=22, alpha=0.8, color=cmap(li % cmap.N),
                           marker=_MARKERS[gi % len(_MARKERS)], edgecolors="none")
    handles = [Line2D([], [], linestyle="", marker="o", color=cmap(i % cmap.N), label=lab)
               for i, lab in enumerate(labels)]
    handles += [Line2D([], [], linestyle="", marker=_MARKERS[i % len(_MARKERS)], color="0.3", label=g)
                for i, g in enumerate(groups)]
    ax.legend(handles=handles, loc="best", fontsize=8, title=f"{label_name} / modality", title_fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"{method} 1")
    ax.set_ylabel(f"{method} 2")
    scores = cluster_scores(points)
    sub = (f"silhouette by {label_name} {_f(scores['silhouette_label'])}, "
           f"by modality {_f(scores['silhouette_modality'])}")
    ax.set_title((title + "\n" if title else "") + sub, fontsize=9)
    fig.tight_layout()
    out_png = os.fspath(out_png)
    save_png(fig, out_png)
    return {"method": method, **scores, "file": out_png}


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"
