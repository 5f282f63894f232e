"""Phenotype encoder: the batch's ``hpo`` sub-dict, ``TERMS (B, K)`` long ontology indices padded with -1.

:class:`HpoEncoder` embeds the HPO terms of the cohort (its *vocabulary*: the terms used plus
their ancestors) in a table initialised from the ontology graph, so that terms close in the
ontology start close in the embedding (:func:`ontology_init`). A patient is the mean of its
terms' embeddings through a small MLP; :meth:`HpoEncoder.term_embeddings` puts single terms
through the same MLP, so a patient with one term sits exactly on that term — the space an
ontology-alignment loss compares patients and terms in.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Iterable

import numpy as np
import torch
from torch import Tensor, nn

from phenoclip.data.batch import TERMS
from phenoclip.models.heads import (Encoder, check_dropout, check_positive, check_token_mask, json_config,
                                    mlp)

if TYPE_CHECKING:  # numpy-only modules; imported for types
    from phenoclip.io.ontology import Ontology
    from phenoclip.preprocess.phenotypes import PhenotypeData


def hpo_vocabulary(ontology: "Ontology", used_terms: Iterable[int], include_ancestors: bool = True) -> np.ndarray:
    """Sorted int64 ontology indices of ``used_terms`` (and, by default, all their ancestors)."""
    used = {int(t) for t in used_terms}
    if any(t < 0 or t >= len(ontology) for t in used):
        raise ValueError(f"term indices must lie in [0, {len(ontology)})")
    if include_ancestors:
        for t in list(used):
            used |= ontology.ancestors(t)
    return np.asarray(sorted(used), dtype=np.int64)


def _topological_order(ontology: "Ontology") -> list[int]:
    """Terms with every parent before its children (Kahn)."""
    n_parents = np.diff(ontology.parents_indptr).astype(np.int64)
    queue = deque(np.flatnonzero(n_parents == 0).tolist())
    order = []
    while queue:
        t = queue.popleft()
        order.append(t)
        for c in ontology.children(t):
            n_parents[c] -= 1
            if n_parents[c] == 0:
                queue.append(c)
    return order


def nearest_vocabulary_term(ontology: "Ontology", vocab: np.ndarray) -> np.ndarray:
    """int64 ``(n_terms,)``: for every ontology term, the vocabulary row of itself or of its nearest
    ``is_a`` ancestor in the vocabulary (-1 when none is): how a term the cohort never used is read."""
    row = np.full(len(ontology), -1, dtype=np.int64)
    row[vocab] = np.arange(len(vocab))
    dist = np.where(row >= 0, 0, np.iinfo(np.int64).max)
    out = row.copy()
    for t in _topological_order(ontology):
        if row[t] >= 0:
            continue
        for p in ontology.parents(t):
            if out[p] >= 0 and dist[p] + 1 < dist[t]:
                dist[t], out[t] = dist[p] + 1, out[p]
    return out


def ontology_init(ontology: "Ontology", vocab: np.ndarray, width: int,
                  generator: torch.Generator | None = None) -> Tensor:
    """Unit vectors ``(len(vocab), width)`` in which shared ancestry means high cosine similarity.

    Each term ``a`` draws a fixed random vector ``r_a ~ N(0, I / width)``; term ``t`` starts at the
    normalised ``sum over a in {t} + ancestors(t) of (1 + depth(a)) * r_a``. Two terms share the
    vectors of their common ancestors, so a term and its parent start close (cosine about
    ``sqrt(share of the term's squared weight that the parent's lineage holds)``), while unrelated
    terms share only the shallow ancestors near the root, which the depth weight makes small.
    """
    vocab = np.asarray(vocab, dtype=np.int64)
    if len(vocab) == 0:
        raise ValueError("the vocabulary is empty")
    lineages = [ontology.ancestor_distances(int(t)) for t in vocab]          # each includes the term itself
    needed = np.asarray(sorted(set().union(*lineages)), dtype=np.int64)
    col = {a: j for j, a in enumerate(needed.tolist())}
    rows = torch.as_tensor(np.repeat(np.arange(len(vocab)), [len(lin) for lin in lineages]))
    cols = torch.as_tensor(np.fromiter((col[a] for lin in lineages for a in lin), dtype=np.int64))
    weight = torch.as_tensor(1.0 + np.maximum(ontology.depth[needed], 0), dtype=torch.float64)
    r = torch.randn(len(needed), width, generator=generator, dtype=torch.float64) / width ** 0.5
    out = torch.zeros(len(vocab), width, dtype=torch.float64).index_add_(0, rows, (weight[:, None] * r)[cols])
    return (out / out.norm(dim=1, keepdim=True).clamp_min(1e-12)).float()


class HpoEncoder(Encoder):
    """Patient HPO terms ``(B, K)`` -> ``(B, W)``: mean of term embeddings -> ``Linear-GELU-Linear``.

    Parameters
    ----------
    n_ontology_terms:
        Terms in the phenotype store's ontology (``TERMS`` index into it).
    n_vocab:
        Rows of the embedding table (see :func:`hpo_vocabulary`).
    width, hidden, dropout:
        Embedding size and the MLP's hidden size.

    Build it with :meth:`from_phenotypes`, or construct and call :meth:`init_from_ontology`
    (the vocabulary and the term -> row lookup are buffers, saved in the state dict). A term
    outside the vocabulary is read as its nearest vocabulary ancestor. A token is a term slot:
    a masked term is replaced by a learned mask embedding; ``forward_tokens`` gives each slot's
    term through the MLP (zeros at padding), ``n_tokens`` is None (it is the batch's ``K``).
    """

    supports_token_mask = True

    def __init__(self, n_ontology_terms: int, n_vocab: int, width: int = 64, hidden: int = 128, dropout: float = 0.0):
        super().__init__()
        check_positive(n_ontology_terms=n_ontology_terms, n_vocab=n_vocab, width=width, hidden=hidden)
        if n_vocab > n_ontology_terms:
            raise ValueError(f"n_vocab {n_vocab} exceeds the {n_ontology_terms} ontology terms")
        check_dropout(dropout)
        self.config = json_config(n_ontology_terms=n_ontology_terms, n_vocab=n_vocab, width=width, hidden=hidden,
                                  dropout=dropout)
        self.width, self.n_tokens = width, None
        self.table = nn.Parameter(torch.randn(n_vocab, width) / width ** 0.5)
        self.mask_embedding = nn.Parameter(torch.randn(width) / width ** 0.5)
        self.mlp = mlp([width, hidden, width], dropout=dropout, activation=nn.GELU)
        # until init_from_ontology: the first n_vocab ontology terms, the others unknown
        self.register_buffer("vocab_terms", torch.arange(n_vocab, dtype=torch.int64))
        lookup = torch.full((n_ontology_terms,), -1, dtype=torch.int64)
        lookup[:n_vocab] = torch.arange(n_vocab)
        self.register_buffer("lookup", lookup)

    @classmethod
    def from_phenotypes(cls, data: "PhenotypeData", width: int = 64, hidden: int = 128, dropout: float = 0.0,
                        include_ancestors: bool = True, generator: torch.Generator | None = None) -> "HpoEncoder":
        """An encoder over the observed and excluded terms of a phenotype store (+ ancestors), graph-initialised."""
        used = np.concatenate([*data.terms, *data.excluded, np.zeros(0, np.int64)])
        vocab = hpo_vocabulary(data.ontology, used, include_ancestors)
        if len(vocab) == 0:
            raise ValueError("the phenotype store has no terms to build a vocabulary from")
        enc = cls(len(data.ontology), len(vocab), width=width, hidden=hidden, dropout=dropout)
        enc.init_from_ontology(data.ontology, vocab, generator=generator)
        return enc

    @torch.no_grad()
    def init_from_ontology(self, ontology: "Ontology", vocab: np.ndarray,
                           generator: torch.Generator | None = None) -> None:
        """Set the vocabulary, the term -> row lookup and the graph-based table (:func:`ontology_init`)."""
        vocab = np.asarray(vocab, dtype=np.int64)
        if len(ontology) != self.lookup.shape[0] or vocab.shape != (self.table.shape[0],):
            raise ValueError(f"expected an ontology of {self.lookup.shape[0]} terms and {self.table.shape[0]} "
                             f"vocabulary terms, got {len(ontology)} and {vocab.shape}")
        self.vocab_terms.copy_(torch.as_tensor(vocab))
        self.lookup.copy_(torch.as_tensor(nearest_vocabulary_term(ontology, vocab)))
        self.table.copy_(ontology_init(ontology, vocab, self.table.shape[1], generator))

    def _rows(self, terms: Tensor) -> Tensor:
        rows = self.lookup[terms.clamp(min=0)]
        if ((rows < 0) & (terms >= 0)).any():
            bad = terms[(rows < 0) & (terms >= 0)][0].item()
            raise ValueError(f"ontology term index {bad} has no ancestor in the encoder's vocabulary")
        return rows

    def term_embeddings(self, indices: Tensor | None = None) -> Tensor:
        """``(K, W)``: terms (ontology indices; default the whole vocabulary, in ``vocab_terms`` order)
        as one-term patients, i.e. the table rows through the MLP."""
        emb = self.table if indices is None else self.table[self._rows(indices)]
        return self.mlp(emb)

    def forward_features(self, inputs: dict, token_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(pooled (B, W), per-term tokens (B, K, W))``; a patient without terms pools to ``mlp(0)``."""
        terms = inputs[TERMS]
        if terms.dim() != 2:
            raise ValueError(f"'{TERMS}' must be (B, K), got {tuple(terms.shape)}")
        valid = terms >= 0
        emb = self.table[self._rows(terms).clamp(min=0)]                              # (B, K, W)
        if check_token_mask(token_mask, *terms.shape) is not None:
            emb = torch.where(token_mask[..., None], self.mask_embedding, emb)
        w = valid[..., None].to(emb.dtype)
        mean = (emb * w).sum(1) / w.sum(1).clamp_min(1.0)
        return self.mlp(mean), self.mlp(emb) * w
