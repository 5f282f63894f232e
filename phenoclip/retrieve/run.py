"""``phenoclip retrieve``: cross-modal (and zero-shot phenotype) retrieval with a pretrained model.

Every patient of the query store is embedded with the checkpoint's encoder of that store's
modality and compared (cosine) with every item of the gallery: the patients of another store,
or, with the gallery ``hpo``, the terms of the hpo encoder's vocabulary. Outputs:

``OUT`` (hits.tsv)
    ``query  rank  hit  score`` (+ ``name`` for HPO terms), ``k`` rows per query, rank 1 best,
    score = cosine similarity with 6 significant digits; ties keep the gallery's order.
``OUT.metrics.json`` (``hits.tsv`` -> ``hits.metrics.json``)
    When query and gallery share patient IDs, Recall@1/5/10, MRR, ``n_queries``,
    ``gallery_size`` and ``chance@1`` in two blocks: ``all`` (every query whose patient is in the
    gallery, against the whole gallery) and ``held_out`` (only the checkpoint's validation
    patients having both modalities, as query and as gallery: the set pretraining validated on,
    one direction; omitted under 2 patients). With ``--map``, a ``map`` block (silhouettes).
``OUT.diseases.tsv`` (with ``--diseases``)
    ``query  rank  disease_id  disease_name  score  n_terms``.
``--embeddings-out`` (schema ``embeddings`` v1)
    ``samples`` = query patients then gallery patients not among them; ``embeddings/<name>``
    float32 (N, E) (zero rows where absent), ``present/<name>`` bool (N,), ``<name>`` the
    modality, or ``query`` / ``gallery`` when both sides are one modality (two cohorts); with
    the ``hpo`` gallery, ``terms/ids``, ``terms/names`` and ``terms/embeddings`` (V, E). Root
    attributes ``checkpoint`` (absolute path), ``embed_dim``, ``query_store``, ``gallery_store``.
``--pheno-out`` (plink2 ``--pheno``)
    ``#FID  IID  EMB_PC1 ..``: top principal components of the query embeddings, FID = IID.
``--map``
    PNG of held-out patients from every given modality (:mod:`phenoclip.eval.embedding_map`).

Every output is written to a temporary name first and renamed only once all are written: a
failure leaves none of them behind.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from phenoclip.data.multimodal import CohortStores
from phenoclip.errors import InconsistentInputError, UsageError, require_readable
from phenoclip.pretrained import Pretrained, embed_samples, expr_stats, load_pretrained
from phenoclip.eval.embedding_map import plot_map, points_from, read_label_column
from phenoclip.eval.retrieval import format_metrics
from phenoclip.eval.topk import topk_chunked
from phenoclip.eval.zero_shot import disease_gallery, resolve_ontology, term_gallery
from phenoclip.io.hpoa import read_hpoa
from phenoclip.retrieve.outputs import (HPO_GALLERY, Side, check_outputs, output_prefix, write_embeddings,
                                             write_hits, write_pheno)
from phenoclip.retrieve.metrics import held_out_metrics, retrieval_metrics
from phenoclip.retrieve.parts import part_slice, write_run_part
from phenoclip.parts import check_part, part_path
from phenoclip.progress import info, warn
from phenoclip.staging import StagedFiles


def _open_side(pre: Pretrained, path: str) -> tuple[CohortStores, str]:
    stores = CohortStores([path])
    modality = stores.modalities[0]
    pre.require(modality)
    return stores, modality


def _embed(pre: Pretrained, stores: CohortStores, modality: str, path: str, samples: Sequence[str] | None = None,
           label: str = "") -> Side:
    samples = list(stores.by_modality[modality].samples if samples is None else samples)
    stats = expr_stats(pre, stores) if modality == "expr" else None
    emb, present = embed_samples(pre.model, stores, modality, samples, stats, label=label or f"embedding {modality}")
    keep = np.flatnonzero(present)
    return Side(path, modality, [samples[i] for i in keep], emb[keep], stores)


def _map(pre: Pretrained, png: str, label_table: tuple[dict[str, str], str, str], sides: list[Side],
         extra: Sequence[str], seed: int) -> dict:
    labels, column, label_path = label_table
    val = pre.validation_samples
    if not val:
        warn(f"{pre.path}: no validation split recorded; the map shows every patient")
    keep = set(val)
    sources: list[Side] = []
    seen = set()
    for side in sides:
        if os.path.realpath(side.path) not in seen:
            seen.add(os.path.realpath(side.path))
            sources.append(side)
    for p in extra:
        if os.path.realpath(p) in seen:
            continue
        seen.add(os.path.realpath(p))
        stores, modality = _open_side(pre, p)
        samples = [s for s in stores.by_modality[modality].samples if not keep or s in keep]
        sources.append(_embed(pre, stores, modality, p, samples, label=f"embedding {modality} (map)"))
    counts: dict[str, int] = {}
    for s in sources:
        counts[s.modality] = counts.get(s.modality, 0) + 1
    named = [(side.modality if counts[side.modality] == 1 else f"{side.modality} ({os.path.basename(side.path)})",
              side.samples, side.embeddings) for side in sources]
    points = points_from(named, labels, keep or None)
    if len(points.samples) < 3:
        raise InconsistentInputError(f"only {len(points.samples)} held-out patient embedding(s) have a "
                                     f"'{column}' label; a map needs at least 3", label_path,
                                     "check that the sample IDs match")
    result = plot_map(points, png, title=f"held-out patients of {Path(pre.path).name} by {column}", seed=seed,
                      label_name=column)
    result.update({"label_column": column, "labels": label_path})
    return result


def run_retrieve(checkpoint: str | os.PathLike, query: str | os.PathLike, gallery: str | os.PathLike,
                 out: str | os.PathLike, k: int = 10, *, metrics_out: str | os.PathLike | None = None,
                 embeddings_out: str | os.PathLike | None = None, pheno_out: str | os.PathLike | None = None,
                 pcs: int = 10, diseases: str | os.PathLike | None = None, ontology: str | os.PathLike | None = None,
                 map_out: str | os.PathLike | None = None, labels: str | None = None,
                 data: Sequence[str | os.PathLike] = (), seed: int = 0, part: int | None = None,
                 num_parts: int | None = None) -> dict:
    """Retrieve the top-``k`` gallery items for every query patient and write the outputs above.

    Parameters
    ----------
    checkpoint:
        A ``phenoclip pretrain`` directory.
    query, gallery:
        Stores; ``gallery`` may be the word ``hpo`` (the hpo encoder's vocabulary terms).
    out:
        hits TSV, or ``-`` for stdout (then the metrics JSON is written only to ``metrics_out``).
    diseases:
        A ``phenotype.hpoa`` (or ``bundled``) to rank diseases too; ``hpo`` gallery only.
    ontology:
        ``hp.obo`` or phenotypes store naming the hpo encoder's terms (default: see
        :func:`phenoclip.eval.zero_shot.resolve_ontology`).
    map_out, labels, data:
        A PNG map of held-out patients, the ``FILE[:COLUMN]`` labels colouring it, extra stores.
    part, num_parts:
        Only part ``part`` of ``num_parts`` of the queries, written to ``OUT.partK.h5`` for
        ``retrieve merge`` (:mod:`phenoclip.retrieve.parts`); hits and metrics only.

    Returns
    -------
    dict
        ``metrics`` (what the metrics JSON holds) and ``outputs`` (the files written).
    """
    out, query = os.fspath(out), os.fspath(query)
    gallery = os.fspath(gallery)
    zero_shot = gallery == HPO_GALLERY
    if k < 1:
        raise UsageError(f"--k must be at least 1, got {k}")
    if pcs < 1:
        raise UsageError(f"--pcs must be at least 1, got {pcs}")
    if diseases is not None and not zero_shot:
        raise UsageError("--diseases ranks diseases by HPO terms: use it with --gallery hpo")
    if ontology is not None and not zero_shot:
        raise UsageError("--ontology names HPO terms: use it with --gallery hpo")
    if (map_out is None) != (labels is None):
        raise UsageError("--map and --labels go together (the labels colour the map)")
    if data and map_out is None:
        raise UsageError("--data adds modalities to the --map; give --map too")
    stdout = out == "-"
    prefix = None if stdout else output_prefix(out)
    if stdout and diseases is not None:
        raise UsageError("--diseases writes OUT.diseases.tsv: give a file name to --out")
    check_part(part, num_parts)
    if part is not None:
        given = [name for name, v in (("--out -", stdout), ("--diseases", diseases), ("--embeddings-out", embeddings_out),
                                      ("--pheno-out", pheno_out), ("--map", map_out), ("--metrics-out", metrics_out))
                 if v]
        if given:
            raise UsageError(f"{given[0]} is not written by a --part (parts hold hits and rank bounds; "
                             "'retrieve merge' writes the hits and metrics)", hint="run it once without --part")
    metrics_path = os.fspath(metrics_out) if metrics_out is not None else (None if stdout else prefix + ".metrics.json")
    if part is not None:
        out, metrics_path = part_path(prefix, part), None
    paths = {"--out": None if stdout else out, "--metrics-out": metrics_path,
             "--embeddings-out": None if embeddings_out is None else os.fspath(embeddings_out),
             "--pheno-out": None if pheno_out is None else os.fspath(pheno_out),
             "--map": None if map_out is None else os.fspath(map_out),
             "OUT.diseases.tsv": None if diseases is None else prefix + ".diseases.tsv"}
    inputs = [query] + ([] if zero_shot else [gallery]) + [os.fspath(d) for d in data]
    check_outputs(paths, inputs)
    for p in inputs:  # every input checked before minutes of embedding
        require_readable(p, "store")
    label_table = None
    if labels is not None:
        label_table = read_label_column(labels)
    if diseases is not None and os.fspath(diseases) != "bundled":
        require_readable(diseases, "disease annotation file")
    if ontology is not None:
        require_readable(ontology, "ontology file")

    pre = load_pretrained(checkpoint)
    q_stores, q_mod = _open_side(pre, query)
    terms = None
    if zero_shot:
        pre.require(HPO_GALLERY)
        enc = pre.model.encoders[HPO_GALLERY]
        onto = resolve_ontology(int(enc.lookup.shape[0]), ontology, pre.config, Path(pre.path))
        terms = term_gallery(pre.model, onto)
        gallery_size, g_desc = len(terms.ids), f"{len(terms.ids)} HPO terms of the hpo encoder's vocabulary"
    else:
        g_stores, g_mod = _open_side(pre, gallery)
        gallery_size = len(g_stores.by_modality[g_mod].samples)
        g_desc = f"{g_mod}, {gallery_size} patients of {gallery}"
    if k > gallery_size:
        raise UsageError(f"--k {k} is larger than the gallery ({g_desc})", hint=f"use --k {gallery_size} or less")

    all_queries = list(q_stores.by_modality[q_mod].samples)
    mine = all_queries if part is None else all_queries[part_slice(len(all_queries), part, num_parts)]
    q = _embed(pre, q_stores, q_mod, query, samples=mine, label=f"embedding query ({q_mod})")
    if zero_shot:
        g_side, g_ids, g_emb, names = None, terms.ids, terms.embeddings, terms.names
    else:
        same = os.path.realpath(gallery) == os.path.realpath(query) and part is None
        g_side = q if same else _embed(pre, g_stores, g_mod, gallery, label=f"embedding gallery ({g_mod})")
        g_ids, g_emb, names = g_side.samples, g_side.embeddings, None
    info(f"retrieve: {len(q.samples)} {q_mod} queries from {query} against {g_desc}, top {k}")
    scores, indices = topk_chunked(torch.from_numpy(q.embeddings), torch.from_numpy(g_emb), k)

    metrics: dict = {"checkpoint": str(Path(pre.path).resolve()), "query": os.path.abspath(query),
                     "query_modality": q_mod, "gallery": HPO_GALLERY if zero_shot else os.path.abspath(gallery),
                     "gallery_modality": HPO_GALLERY if zero_shot else g_mod, "k": k}
    if part is not None:
        return write_run_part(pre, out, q, all_queries, g_ids, g_emb, names, scores, indices, metrics, zero_shot,
                              query, gallery, ontology, part, num_parts)
    if not zero_shot:
        m_all = retrieval_metrics(q.samples, q.embeddings, g_ids, g_emb)
        if m_all is None:
            info("query and gallery share no patient IDs: no Recall@K")
        else:
            metrics["all"] = m_all
            info(f"all patients: {format_metrics(m_all)}")
            m_val = held_out_metrics(q, g_side, pre.validation_samples)
            if m_val is not None:
                metrics["held_out"] = m_val
                info(f"held-out patients: {format_metrics(m_val)}")

    outputs = []
    with StagedFiles() as staged:
        if not stdout:
            with open(staged.tmp(out), "w") as fh:
                write_hits(fh, q.samples, g_ids, scores, indices, names)
            outputs.append(out)
        if diseases is not None:
            dg = disease_gallery(terms, read_hpoa(diseases))
            kd = min(k, len(dg.ids))
            ds, di = topk_chunked(torch.from_numpy(q.embeddings), torch.from_numpy(dg.embeddings), kd)
            with open(staged.tmp(paths["OUT.diseases.tsv"]), "w") as fh:
                fh.write("query\trank\tdisease_id\tdisease_name\tscore\tn_terms\n")
                for qid, srow, irow in zip(q.samples, ds.tolist(), di.tolist()):
                    for r, (s, j) in enumerate(zip(srow, irow), start=1):
                        fh.write(f"{qid}\t{r}\t{dg.ids[j]}\t{dg.names[j]}\t{s:.6g}\t{dg.n_terms[j]}\n")
            metrics["diseases"] = {"file": os.fspath(diseases), "scored": len(dg.ids)}
            outputs.append(paths["OUT.diseases.tsv"])
        if embeddings_out is not None:
            write_embeddings(staged.tmp(os.fspath(embeddings_out)), pre, q, g_side, terms)
            outputs.append(os.fspath(embeddings_out))
        if pheno_out is not None:
            metrics["pheno"] = write_pheno(staged.tmp(os.fspath(pheno_out)), q, pcs, seed)
            outputs.append(os.fspath(pheno_out))
        if map_out is not None:
            sides = [q] + ([g_side] if g_side is not None else [])
            metrics["map"] = _map(pre, staged.tmp(os.fspath(map_out), ".png"), label_table, sides,
                                  [os.fspath(d) for d in data], seed)
            metrics["map"]["file"] = os.fspath(map_out)
            m = metrics["map"]
            info(f"map: {m['n_points']} embeddings of {m['n_patients']} held-out patients; silhouette by "
                 f"{m['label_column']} {_num(m['silhouette_label'])}, by modality {_num(m['silhouette_modality'])}")
            outputs.append(os.fspath(map_out))
        has_metrics = any(key in metrics for key in ("all", "map", "pheno", "diseases"))
        if metrics_path is not None and has_metrics:
            with open(staged.tmp(metrics_path), "w") as fh:
                json.dump(metrics, fh, indent=2)
                fh.write("\n")
            outputs.append(metrics_path)
    if stdout:  # after the files: a reader that stops early (| head) must not undo them
        write_hits(sys.stdout, q.samples, g_ids, scores, indices, names)
        sys.stdout.flush()
    return {"metrics": metrics, "outputs": outputs}


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"
