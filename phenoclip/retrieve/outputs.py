"""The files ``phenoclip retrieve`` writes: hits, plink2 phenotype PCs, the embeddings store.

Kept apart from :mod:`phenoclip.retrieve.run` (which embeds, searches and scores) so that each
module stays small; every writer here writes to the path it is given, which the caller has
staged under a temporary name (:class:`phenoclip.staging.StagedFiles`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from phenoclip.data.multimodal import CohortStores
from phenoclip.errors import InconsistentInputError, OutputError, UsageError, require_writable_parent
from phenoclip.progress import info
from phenoclip.store_write import create_store

#: the ``--gallery`` word that means "the hpo encoder's vocabulary terms"
HPO_GALLERY = "hpo"


@dataclass
class Side:
    """One embedded store: its path, modality and patients, and their embeddings (all present)."""

    path: str
    modality: str
    samples: list[str]
    embeddings: np.ndarray
    stores: CohortStores = field(repr=False, default=None)


def output_prefix(out: str) -> str:
    """``hits.tsv`` -> ``hits``: the stem the metrics, disease and part files are named from."""
    return out[:-4] if out.endswith(".tsv") else out


def write_hits(fh, query_ids, gallery_ids, scores, indices, names=None) -> None:
    fh.write("query\trank\thit\tscore" + ("\tname" if names is not None else "") + "\n")
    scores, indices = scores.tolist(), indices.tolist()
    for q, srow, irow in zip(query_ids, scores, indices):
        for r, (s, j) in enumerate(zip(srow, irow), start=1):
            fh.write(f"{q}\t{r}\t{gallery_ids[j]}\t{s:.6g}" + (f"\t{names[j]}" if names is not None else "") + "\n")


def write_pheno(path: str, query: Side, pcs: int, seed: int) -> dict:
    # imported here: sklearn takes 1-2 s to import; only --pheno-out needs PCA (retrieve merge imports this module too)
    from sklearn.decomposition import PCA

    n, e = query.embeddings.shape
    if n < 2:
        raise InconsistentInputError("--pheno-out needs at least 2 query patients", query.path)
    n_pcs = min(pcs, e, n - 1)
    if n_pcs < pcs:
        info(f"--pheno-out: {n_pcs} principal components (capped by the embedding size {e} and {n} patients)")
    pca = PCA(n_components=n_pcs, random_state=seed)
    comps = pca.fit_transform(query.embeddings.astype(np.float64))
    with open(path, "w") as fh:
        fh.write("#FID\tIID\t" + "\t".join(f"EMB_PC{i + 1}" for i in range(n_pcs)) + "\n")
        for s, row in zip(query.samples, comps.tolist()):
            fh.write(f"{s}\t{s}\t" + "\t".join(f"{v:.6g}" for v in row) + "\n")
    return {"pcs": n_pcs, "explained_variance_ratio": [round(float(v), 6) for v in pca.explained_variance_ratio_]}


def write_embeddings(path: str, pre, query: Side, gallery: Side | None, terms=None) -> None:
    samples = list(dict.fromkeys(query.samples + (gallery.samples if gallery is not None else [])))
    pos = {s: i for i, s in enumerate(samples)}
    sides = [query] + ([gallery] if gallery is not None else [])
    same = gallery is not None and gallery.modality == query.modality
    names = ["query", "gallery"] if same else [s.modality for s in sides]
    attrs = {"checkpoint": str(Path(pre.path).resolve()), "embed_dim": int(pre.model.embed_dim),
             "query_store": os.path.abspath(query.path),
             "gallery_store": HPO_GALLERY if gallery is None else os.path.abspath(gallery.path),
             "names": np.asarray(names, dtype=object)}
    with create_store(path, "embeddings", samples, attrs=attrs) as w:
        for name, side in zip(names, sides):
            rows = np.asarray([pos[s] for s in side.samples], dtype=np.int64)
            emb = np.zeros((len(samples), pre.model.embed_dim), dtype=np.float32)
            present = np.zeros(len(samples), dtype=bool)
            emb[rows], present[rows] = side.embeddings, True
            w.per_sample(f"embeddings/{name}", emb, attrs={"modality": side.modality,
                                                            "store": os.path.abspath(side.path)})
            w.per_sample(f"present/{name}", present)
        if terms is not None:
            w.array("terms/ids", terms.ids)
            w.array("terms/names", terms.names)
            w.array("terms/embeddings", terms.embeddings.astype(np.float32))


def check_outputs(paths: dict[str, str | None], inputs: Sequence[str]) -> None:
    finals = {}
    for what, p in paths.items():
        if p is None:
            continue
        require_writable_parent(p)
        if os.path.isdir(p):
            raise OutputError(f"is a folder; {what} needs a file name", p)
        real = os.path.realpath(p)
        if real in finals:
            raise UsageError(f"{what} and {finals[real]} are the same file: {p}")
        if real in {os.path.realpath(i) for i in inputs}:
            raise UsageError(f"{what} {p} would overwrite an input")
        finals[real] = what
