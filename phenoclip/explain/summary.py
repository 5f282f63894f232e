"""Global summaries of an attributions store: the ranked table, per-gene aggregation and plots.

``PREFIX.tsv`` has one row per input feature, sorted by the mean absolute attribution over
individuals (ties: store order), with ``rank`` 1 for the strongest:

* variants (``--modality gene``): ``chrom pos id ref alt mean_abs_attr mean_attr rank``
* expression: ``gene mean_abs_attr mean_attr rank``
* volumes: ``[channel] d h w mean_abs_attr mean_attr rank``: voxels of the preprocessed grid
  (axis 0 D runs left to right, 1 H posterior to anterior, 2 W inferior to superior).

``PREFIX.genes.tsv`` (``--genes FILE``): ``gene chrom start end n_variants max_mean_abs_attr
sum_mean_abs_attr top_variant rank``, genes (1-based inclusive intervals, widened by
``--gene-window`` bp each side) ranked by their strongest variant; genes without a variant
are left out.

Means are taken by reading the store in blocks of :data:`BLOCK_ROWS` rows in float64, so a
merged run and a single run, whose stores hold the same rows, give the same numbers.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from phenoclip.eval.plots import new_figure, save_png
from phenoclip.io.annotations import GeneIntervals, normalise_chrom
from phenoclip.store_read import open_store

#: rows read at a time (64 x 100,000 variants in float64: 51 MB)
BLOCK_ROWS = 64
FORMAT = "%.6g"


def feature_means(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, int]:
    """``(mean_abs (F...), mean (F...), n individuals)`` of the ``attributions`` dataset of a store."""
    with open_store(path, expect="attributions") as s:
        ds = s["attributions"]
        n = ds.shape[0]
        total_abs = np.zeros(ds.shape[1:], dtype=np.float64)
        total = np.zeros(ds.shape[1:], dtype=np.float64)
        for a in range(0, n, BLOCK_ROWS):
            block = ds[a:a + BLOCK_ROWS].astype(np.float64)
            total_abs += np.abs(block).sum(0)
            total += block.sum(0)
    n_eff = max(n, 1)
    return total_abs / n_eff, total / n_eff, n


def ranking(mean_abs: np.ndarray) -> np.ndarray:
    """Feature indices, strongest first; ties keep store order."""
    return np.argsort(-mean_abs.reshape(-1), kind="stable")


def _fmt(values: np.ndarray) -> list[str]:
    return [FORMAT % v for v in values]


def feature_columns(modality: str, meta: dict, shape: tuple[int, ...]) -> tuple[list[str], list[list[str]]]:
    """Header and per-feature identifying columns (as strings) for ``modality``."""
    if modality == "gene":
        v = meta["variants"]
        names = ["chrom", "pos", "id", "ref", "alt"]
        return names, [list(map(str, v[k])) for k in names]
    if modality == "expr":
        return ["gene"], [list(meta["genes"])]
    grid = np.indices(shape).reshape(len(shape), -1)
    names = (["channel"] if shape[0] > 1 else []) + ["d", "h", "w"]
    rows = grid if shape[0] > 1 else grid[1:]
    return names, [list(map(str, r)) for r in rows]


def write_table(path: str | os.PathLike, header: list[str], columns: list[list[str]], mean_abs: np.ndarray,
                mean: np.ndarray) -> None:
    """The ranked TSV: identifying columns, ``mean_abs_attr``, ``mean_attr``, ``rank``."""
    order = ranking(mean_abs)
    ma, m = _fmt(mean_abs.reshape(-1)[order]), _fmt(mean.reshape(-1)[order])
    with open(path, "w") as fh:
        fh.write("\t".join(header + ["mean_abs_attr", "mean_attr", "rank"]) + "\n")
        for r, i in enumerate(order):
            fh.write("\t".join([c[i] for c in columns] + [ma[r], m[r], str(r + 1)]) + "\n")


def write_gene_table(path: str | os.PathLike, variants: dict, mean_abs: np.ndarray, genes: GeneIntervals,
                     window: int = 0) -> int:
    """Per-gene aggregation of variant attributions (see the module docstring); returns genes written."""
    chrom = np.array([normalise_chrom(str(c)) for c in variants["chrom"]])
    pos = np.asarray(variants["pos"], dtype=np.int64)
    ids = list(map(str, variants["id"]))
    rows = []
    by_chrom = {c: np.flatnonzero(chrom == c) for c in np.unique(chrom)}
    for g, name in enumerate(genes.names):
        idx = by_chrom.get(normalise_chrom(genes.chrom[g]))
        if idx is None:
            continue
        inside = idx[(pos[idx] >= genes.start[g] - window) & (pos[idx] <= genes.end[g] + window)]
        if not len(inside):
            continue
        vals = mean_abs[inside]
        top = inside[int(np.argmax(vals))]
        rows.append((float(vals.max()), float(vals.sum()), name, genes.chrom[g], int(genes.start[g]),
                     int(genes.end[g]), len(inside), ids[top]))
    rows.sort(key=lambda r: -r[0])
    with open(path, "w") as fh:
        fh.write("gene\tchrom\tstart\tend\tn_variants\tmax_mean_abs_attr\tsum_mean_abs_attr\ttop_variant\trank\n")
        for rank, (mx, sm, name, c, a, b, nv, top) in enumerate(rows, start=1):
            fh.write(f"{name}\t{c}\t{a}\t{b}\t{nv}\t{FORMAT % mx}\t{FORMAT % sm}\t{top}\t{rank}\n")
    return len(rows)


def _chrom_key(c: str) -> tuple[int, str]:
    c = normalise_chrom(c)
    if c.isdigit():
        return int(c), ""
    return {"X": 23, "Y": 24, "M": 25, "MT": 25}.get(c.upper(), 26), c


#: the Manhattan plot's background line: this many robust standard deviations (1.4826 MAD) above the median
OUTLIER_MADS = 10


def manhattan_png(path: str | os.PathLike, variants: dict, mean_abs: np.ndarray, top: int = 10,
                  title: str = "") -> Path:
    """Genomic position (chromosomes side by side, alternating colours) against mean |attribution|.

    The ``top`` strongest loci are labelled with the ID of their strongest variant.
    """
    chrom = np.array(list(map(str, variants["chrom"])))
    pos = np.asarray(variants["pos"], dtype=np.float64)
    order = sorted(set(chrom), key=_chrom_key)
    x = np.zeros(len(pos))
    ticks, offset = [], 0.0
    fig = new_figure(figsize=(11, 4))
    ax = fig.add_subplot()
    for i, c in enumerate(order):
        sel = chrom == c
        lo, hi = pos[sel].min(), pos[sel].max()
        x[sel] = offset + pos[sel] - lo
        ax.scatter(x[sel], mean_abs[sel], s=6, color=("#1f4e79", "#7fa7d1")[i % 2], linewidths=0)
        ticks.append((offset + (hi - lo) / 2, normalise_chrom(c)))
        offset += (hi - lo) + max(1.0, 0.02 * (pos.max() - pos.min() + 1))
    ids = list(map(str, variants["id"]))
    # the strongest variant of each of the top loci: neighbours of a labelled hit (within 0.5 % of
    # the axis, i.e. the same LD block at any realistic scale) are marked but not labelled again
    near = 0.005 * max(offset, 1.0)
    labelled: list[float] = []
    for i in ranking(mean_abs):
        if len(labelled) >= top:
            break
        ax.scatter([x[i]], [mean_abs[i]], s=14, color="#b22222", linewidths=0)
        if all(abs(x[i] - x0) > near for x0 in labelled):
            ax.annotate(ids[i], (x[i], mean_abs[i]), xytext=(3, 3), textcoords="offset points", fontsize=7,
                        color="#b22222")
            labelled.append(x[i])
    ax.set_xticks([t for t, _ in ticks], [n for _, n in ticks])
    ax.set(xlabel="chromosome", ylabel="mean |attribution|", title=title or "variant attributions")
    ax.set_ylim(bottom=0)
    # a scale for "is this peak real": most variants carry no signal, so the bulk of the
    # distribution is the background; a peak far above median + 10 MAD stands out of it (an
    # outlier rule, not a significance test: the benchmark's explain suite scores hits against
    # planted SNPs and a marginal test)
    finite = mean_abs[np.isfinite(mean_abs)]
    median = float(np.median(finite)) if len(finite) else 0.0
    mad = float(np.median(np.abs(finite - median))) if len(finite) else 0.0
    if mad > 0:
        line = median + OUTLIER_MADS * 1.4826 * mad
        ax.axhline(line, color="grey", linestyle="--", linewidth=1)
        ax.annotate(f"median + {OUTLIER_MADS} robust sd ({int((finite > line).sum())} variants above)", (0, line),
                    xycoords=("axes fraction", "data"), xytext=(4, 3), textcoords="offset points", fontsize=7,
                    color="grey")
    if median > 0:
        right = ax.secondary_yaxis("right", functions=(lambda v: v / median, lambda v: v * median))
        right.set_ylabel("x the median variant")
    fig.tight_layout()
    return save_png(fig, path)


def top_features_png(path: str | os.PathLike, names: list[str], mean_abs: np.ndarray, top: int = 30,
                     title: str = "") -> Path:
    """Horizontal bars of the ``top`` features by mean |attribution| (expression genes)."""
    order = ranking(mean_abs)[:top][::-1]
    fig = new_figure(figsize=(6, max(3.0, 0.22 * len(order) + 1)))
    ax = fig.add_subplot()
    ax.barh(range(len(order)), mean_abs[order], color="#1f4e79")
    ax.set_yticks(range(len(order)), [names[i] for i in order], fontsize=7)
    ax.set(xlabel="mean |attribution|", title=title or f"top {len(order)} features")
    fig.tight_layout()
    return save_png(fig, path)


def slices_png(path: str | os.PathLike, volume: np.ndarray, title: str = "") -> Path:
    """Three orthogonal slices through the voxel of largest mean |attribution| of a (D, H, W) map."""
    d, h, w = np.unravel_index(int(np.argmax(volume)), volume.shape)
    views = [("sagittal (D = %d)" % d, volume[d].T), ("coronal (H = %d)" % h, volume[:, h].T),
             ("axial (W = %d)" % w, volume[:, :, w].T)]
    fig = new_figure(figsize=(10, 3.6))
    vmax = float(volume.max()) or 1.0
    for i, (name, img) in enumerate(views):
        ax = fig.add_subplot(1, 3, i + 1)
        im = ax.imshow(img, origin="lower", cmap="magma", vmin=0, vmax=vmax)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.colorbar(im, ax=fig.axes, shrink=0.8, label="mean |attribution|")
    fig.suptitle(title or "voxel attributions (preprocessed grid)")
    return save_png(fig, path)
