"""Recall@1/5/10 and MRR of ``phenoclip retrieve``: each query ranks its own patient's item of the gallery.

``all``: every query whose patient is in the gallery, against the whole gallery; ``held_out``:
the checkpoint's validation patients having both modalities, as query and as gallery. A query's
rank bounds (:func:`query_rank_bounds`) depend on it and the gallery only, which is what lets
``retrieve --part`` jobs compute them apart (:mod:`phenoclip.retrieve.parts`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from phenoclip.eval.retrieval import metrics_from_bounds, rank_bounds
from phenoclip.retrieve.outputs import Side

_QUERY_BLOCK = 4096  # queries per rank_bounds call


def query_rank_bounds(query_ids: Sequence[str], queries: np.ndarray, gallery_ids: Sequence[str],
                      gallery: np.ndarray) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """``(rows, higher, tied)``: the queries whose ID is in the gallery (their rows) and, per such
    query, :func:`rank_bounds` of its own gallery item. Each query's bounds depend on it and the
    gallery only, so queries split across jobs give the same bounds."""
    pos = {s: i for i, s in enumerate(gallery_ids)}
    rows = [i for i, s in enumerate(query_ids) if s in pos]
    if not rows:
        return rows, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    q, g = torch.from_numpy(queries[rows]), torch.from_numpy(gallery)
    targets = torch.tensor([pos[query_ids[i]] for i in rows])
    chunk = max(1024, (1 << 24) // min(len(rows), _QUERY_BLOCK))  # similarity blocks of at most 64 MB
    bounds = [rank_bounds(q[a:a + _QUERY_BLOCK], g, targets[a:a + _QUERY_BLOCK], chunk=chunk)
              for a in range(0, len(rows), _QUERY_BLOCK)]
    return rows, torch.cat([b[0] for b in bounds]), torch.cat([b[1] for b in bounds])


def retrieval_metrics(query_ids: Sequence[str], queries: np.ndarray, gallery_ids: Sequence[str],
                      gallery: np.ndarray) -> dict | None:
    """Recall@1/5/10 and MRR of queries whose ID is in the gallery, against the whole gallery.

    None when no query's patient is in the gallery.
    """
    rows, higher, tied = query_rank_bounds(query_ids, queries, gallery_ids, gallery)
    return metrics_from_bounds(higher, tied, len(gallery_ids)) if rows else None


def held_out_ids(query_ids: Sequence[str], gallery_ids: Sequence[str], validation: Sequence[str]) -> list[str]:
    """The validation patients having both modalities, in query order: the held-out gallery."""
    val, in_gallery = set(validation), set(gallery_ids)
    return [s for s in query_ids if s in val and s in in_gallery]


def held_out_metrics(query: Side, gallery: Side, validation: Sequence[str]) -> dict | None:
    """:func:`retrieval_metrics` on the validation patients having both modalities (None under 2)."""
    ids = held_out_ids(query.samples, gallery.samples, validation)
    if len(ids) < 2:
        return None
    qpos, gpos = {s: i for i, s in enumerate(query.samples)}, {s: i for i, s in enumerate(gallery.samples)}
    return retrieval_metrics(ids, query.embeddings[[qpos[s] for s in ids]], ids,
                             gallery.embeddings[[gpos[s] for s in ids]])
