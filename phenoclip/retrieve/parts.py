"""``retrieve --part K --num-parts N`` and ``retrieve merge``: the queries split across jobs.

The rule (recorded in every part as ``part_rule``): the patients of the ``--query`` store, in
store order, are cut into N consecutive runs of near-equal count; part K (0-based) embeds and
searches patients ``floor(K n / N)`` to ``floor((K + 1) n / N) - 1`` against the whole gallery.
A query's hits and the rank bounds of its own gallery item
(:func:`phenoclip.retrieve.metrics.query_rank_bounds`) depend on that query and the gallery only,
so ``retrieve merge`` writes the hits TSV and the metrics JSON of an unsharded run: the hits in
the same order, Recall@K and MRR from the same bounds.

A part is an HDF5 store of schema ``retrieval``: ``samples`` (the part's queries), ``scores``
(n, k) float32, ``indices`` (n, k) int64 into ``gallery_ids`` (and ``gallery_names`` for the
``hpo`` gallery), and per query ``all_higher``/``all_tied`` and ``held_higher``/``held_tied``
(-1 where the query is not in that gallery). Its attributes carry the part, the fingerprint and
run settings (:mod:`phenoclip.parts`) and the metrics JSON's header fields.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from phenoclip import parts as part_files
from phenoclip.eval.retrieval import format_metrics, metrics_from_bounds
from phenoclip.pretrained import Pretrained
from phenoclip.retrieve.metrics import held_out_ids, query_rank_bounds
from phenoclip.retrieve.outputs import HPO_GALLERY, Side, output_prefix, write_hits
from phenoclip.progress import info
from phenoclip.staging import StagedFiles
from phenoclip.store_read import open_store
from phenoclip.store_schema import STR_DTYPE
from phenoclip.store_write import create_store
from phenoclip.checkpoint_files import CONFIG_FILE, MODEL_FILE

SCHEMA = "retrieval"
PART_RULE = ("query patients in --query store order, cut into N consecutive runs of near-equal count; part K of "
             "N (0-based) holds patients floor(K*n/N) .. floor((K+1)*n/N)-1")


def part_slice(n_queries: int, part: int, num_parts: int) -> slice:
    """The queries of ``part`` under :data:`PART_RULE`."""
    return slice(part * n_queries // num_parts, (part + 1) * n_queries // num_parts)


def _per_query(n: int, rows: list[int], values: torch.Tensor) -> np.ndarray:
    out = np.full(n, -1, dtype=np.int64)
    out[rows] = values.numpy()
    return out


def write_part(path: str, *, query_ids: Sequence[str], scores: torch.Tensor, indices: torch.Tensor,
               gallery_ids: Sequence[str], names: Sequence[str] | None, all_bounds, held_bounds,
               header: dict, held_out_size: int, identity: dict, part: int, num_parts: int) -> None:
    """One part's store at ``path`` (the caller stages it); ``*_bounds`` are ``(rows, higher, tied)``."""
    n = len(query_ids)
    attrs = {"part": part, "num_parts": num_parts, "part_rule": PART_RULE,
             "fingerprint": part_files.fingerprint(identity), "run_settings": json.dumps(identity, sort_keys=True),
             "header": json.dumps(header, sort_keys=True), "gallery_size": len(gallery_ids),
             "held_out_size": held_out_size}
    with create_store(path, SCHEMA, list(query_ids), attrs=attrs) as w:
        w.per_sample("scores", scores.numpy().astype(np.float32))
        w.per_sample("indices", indices.numpy().astype(np.int64))
        for name, (rows, higher, tied) in (("all", all_bounds), ("held", held_bounds)):
            w.per_sample(f"{name}_higher", _per_query(n, rows, higher))
            w.per_sample(f"{name}_tied", _per_query(n, rows, tied))
        w.array("gallery_ids", np.asarray(list(gallery_ids), dtype=object).astype(STR_DTYPE))
        if names is not None:
            w.array("gallery_names", np.asarray(list(names), dtype=object).astype(STR_DTYPE))


def write_run_part(pre: Pretrained, path: str, q: Side, all_queries: list[str], g_ids, g_emb: np.ndarray, names,
                   scores, indices, header: dict, zero_shot: bool, query: str, gallery: str, ontology,
                   part: int, num_parts: int) -> dict:
    """``OUT.partK.h5``: this part's hits and the rank bounds its queries contribute to the metrics."""
    no_bounds = ([], torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    all_bounds, held_bounds, held = no_bounds, no_bounds, []
    if not zero_shot:
        all_bounds = query_rank_bounds(q.samples, q.embeddings, g_ids, g_emb)
        held = held_out_ids(all_queries, g_ids, pre.validation_samples)
        if len(held) >= 2:
            gpos = {s: i for i, s in enumerate(g_ids)}
            held_bounds = query_rank_bounds(q.samples, q.embeddings, held, g_emb[[gpos[s] for s in held]])
    identity = {"step": "retrieve", "k": header["k"], "num_parts": num_parts,
                "checkpoint": {"weights": part_files.file_digest(Path(pre.path) / MODEL_FILE),
                               "config": part_files.file_digest(Path(pre.path) / CONFIG_FILE)},
                "query": part_files.store_identity(query),
                "gallery": HPO_GALLERY if zero_shot else part_files.store_identity(gallery),
                "ontology": None if ontology is None else os.path.abspath(ontology),
                "queries": part_files.digest(all_queries)}
    with StagedFiles() as staged:
        write_part(staged.tmp(path), query_ids=q.samples, scores=scores, indices=indices, gallery_ids=g_ids,
                   names=names, all_bounds=all_bounds, held_bounds=held_bounds, header=header,
                   held_out_size=len(held), identity=identity, part=part, num_parts=num_parts)
    info(f"retrieve: part {part} of {num_parts}: {len(q.samples)} of {len(all_queries)} queries -> {path}")
    return {"metrics": header, "outputs": [path]}


def merge(paths: Sequence[str | os.PathLike], out: str, metrics_out: str | None = None) -> dict:
    """Write ``out`` (hits TSV, ``-`` for stdout) and the metrics JSON of the parts' unsharded run."""
    found = part_files.read_parts(paths, SCHEMA, "retrieve")
    queries: list[str] = []
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("scores", "indices", "all_higher", "all_tied",
                                                       "held_higher", "held_tied")}
    for _, p, _ in found:
        with open_store(p, expect=SCHEMA) as s:
            queries.extend(s.samples)
            for k in cols:
                cols[k].append(s.h5[k][...])
    with open_store(found[0][1], expect=SCHEMA) as head:
        gallery_ids = head.strings("gallery_ids")
        names = head.strings("gallery_names") if "gallery_names" in head.h5 else None
        metrics = json.loads(str(head.attrs["header"]))
        gallery_size, held_out_size = int(head.attrs["gallery_size"]), int(head.attrs["held_out_size"])
    data = {k: np.concatenate(v) for k, v in cols.items()}
    for block, prefix, size in (("all", "all", gallery_size), ("held_out", "held", held_out_size)):
        higher, tied = data[f"{prefix}_higher"], data[f"{prefix}_tied"]
        keep = higher >= 0
        if keep.any() and (block == "all" or size >= 2):
            metrics[block] = metrics_from_bounds(torch.from_numpy(higher[keep]), torch.from_numpy(tied[keep]), size)
            info(f"{'all' if block == 'all' else 'held-out'} patients: {format_metrics(metrics[block])}")
    stdout = out == "-"
    metrics_path = metrics_out if metrics_out is not None else (None if stdout else output_prefix(out) + ".metrics.json")
    scores, indices = torch.from_numpy(data["scores"]), torch.from_numpy(data["indices"])
    outputs = []
    with StagedFiles() as staged:
        if not stdout:
            with open(staged.tmp(out), "w") as fh:
                write_hits(fh, queries, gallery_ids, scores, indices, names)
            outputs.append(out)
        if metrics_path is not None and "all" in metrics:
            with open(staged.tmp(metrics_path), "w") as fh:
                json.dump(metrics, fh, indent=2)
                fh.write("\n")
            outputs.append(metrics_path)
    if stdout:
        write_hits(sys.stdout, queries, gallery_ids, scores, indices, names)
        sys.stdout.flush()
    info(f"merged {len(found)} parts: {len(queries)} queries")
    return {"metrics": metrics, "outputs": outputs, "queries": len(queries), "parts": len(found)}
