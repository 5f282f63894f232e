"""Ontology alignment loss (paper 000's L_KG): patient embeddings against HPO term embeddings.

Each patient's embedding is scored (cosine / temperature) against the embeddings of the ``T``
terms in play, and the softmax over terms is fitted to a soft target: the patient's own terms
weigh most, their ancestors less the further up they sit, unrelated terms nothing. The
embedding is drawn towards its terms, somewhat towards their ancestors, and away from the rest.

Term indices here are rows of the ``(T, E)`` term-embedding table: the task maps the phenotype
store's ontology indices onto the terms in play before calling the loss.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def ancestor_distance_matrix(ontology, subset: Sequence[int]) -> np.ndarray:
    """int32 ``(T, T)`` directed ``is_a`` distances among ``subset``.

    ``D[i, j]`` is the shortest upward path length from ``subset[i]`` to its ancestor
    ``subset[j]`` (0 on the diagonal), and -1 where ``subset[j]`` is not an ancestor of
    ``subset[i]`` (descendants, siblings and unrelated terms). ``ontology`` is a
    :class:`phenoclip.io.ontology.Ontology` (anything with ``ancestor_distances(idx)``).
    The symmetric ``Ontology.distance_matrix`` cannot be used: it does not tell a parent from a child.
    """
    pos = {t: j for j, t in enumerate(subset)}
    out = np.full((len(subset), len(subset)), -1, dtype=np.int32)
    for i, t in enumerate(subset):
        for a, d in ontology.ancestor_distances(t).items():
            if a in pos:
                out[i, pos[a]] = d
    return out


def hierarchy_targets(distance_matrix, decay: float = 0.5) -> torch.Tensor:
    """float32 ``(T, T)`` target weights: ``W[i, j] = decay ** D[i, j]`` where ``D[i, j] >= 0``, else 0.

    ``distance_matrix`` is the directed ancestor distance of :func:`ancestor_distance_matrix`
    (-1 = not an ancestor). A term weighs 1 for itself, ``decay`` for a parent, ``decay**2`` for
    a grandparent; descendants and unrelated terms weigh 0 (a patient with "Seizure" is not
    evidence of any particular kind of seizure). ``decay`` in [0, 1]; 0 keeps only the terms themselves.
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    d = torch.as_tensor(np.asarray(distance_matrix), dtype=torch.float32)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"distance_matrix must be square (T, T), got {tuple(d.shape)}")
    if not torch.all(d.diagonal() == 0):
        raise ValueError("distance_matrix must have 0 on its diagonal (a term is at distance 0 from itself)")
    related = d >= 0
    # where() on both branches keeps 0 ** 0 = 1 on the diagonal and avoids decay ** -1 elsewhere
    return torch.where(related, torch.tensor(float(decay)) ** d.clamp(min=0), torch.zeros(()))


def patient_targets(terms: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Soft target distribution per patient.

    Parameters
    ----------
    terms : (B, K) long, rows of ``targets``, padded with -1.
    targets : (T, T) from :func:`hierarchy_targets`.

    Returns
    -------
    (B, T) rows summing to 1, or all 0 for a patient without terms. A term reached from several
    of the patient's terms takes the *largest* weight (not the sum): a shared ancestor of five
    annotated terms must not outweigh the terms themselves.
    """
    valid = terms >= 0
    rows = targets[terms.clamp(min=0)] * valid.unsqueeze(-1)  # (B, K, T), padding rows zeroed
    weights = rows.amax(dim=1) if terms.shape[1] else rows.new_zeros(terms.shape[0], targets.shape[1])
    return weights / weights.sum(dim=1, keepdim=True).clamp(min=1e-12)


class OntologyAlignmentLoss(nn.Module):
    """Soft-target cross-entropy of patient-vs-term similarities.

    Parameters
    ----------
    temperature : divides the cosine similarities before the softmax over terms.
    targets : optional fixed (T, T) :func:`hierarchy_targets` matrix kept as a buffer; otherwise
        pass one to ``forward`` (when the terms in play change from batch to batch).

    Returned terms
    --------------
    ``ontology``: mean over patients with at least one term (0, attached to the graph, when none
    has); ``ontology/patients``: how many patients entered (float, no grad).
    """

    def __init__(self, temperature: float = 0.1, targets: torch.Tensor | None = None) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        self.register_buffer("targets", None if targets is None else torch.as_tensor(targets).float(),
                             persistent=False)

    def forward(self, patients: torch.Tensor, terms: torch.Tensor, term_embeddings: torch.Tensor,
                targets: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Compute the loss.

        Parameters
        ----------
        patients : (B, E) L2-normalised patient embeddings.
        terms : (B, K) long, the patient's terms as rows of ``term_embeddings``, padded with -1.
        term_embeddings : (T, E) L2-normalised embeddings of the terms in play.
        targets : (T, T) from :func:`hierarchy_targets`; defaults to the one given at construction.
        """
        targets = self.targets if targets is None else targets
        if targets is None:
            raise ValueError("OntologyAlignmentLoss: no targets matrix given at construction or to forward")
        n_terms = term_embeddings.shape[0]
        if tuple(targets.shape) != (n_terms, n_terms):
            raise ValueError(f"targets {tuple(targets.shape)} do not match {n_terms} term embeddings")
        if terms.ndim != 2 or terms.shape[0] != patients.shape[0]:
            raise ValueError(f"terms must be (B={patients.shape[0]}, K), got {tuple(terms.shape)}")
        if terms.numel() and int(terms.max()) >= n_terms:
            raise ValueError(f"term index {int(terms.max())} out of range for {n_terms} term embeddings")

        q = patient_targets(terms, targets.to(patients))  # (B, T)
        keep = (terms >= 0).any(dim=1)  # patients without terms are skipped
        logits = patients @ term_embeddings.T / self.temperature  # (B, T)
        per_patient = -(q * F.log_softmax(logits, dim=1)).sum(dim=1)  # (B,)
        n = keep.sum()
        loss = torch.where(keep, per_patient, 0.0).sum() / n.clamp(min=1)
        return {"ontology": loss, "ontology/patients": n.detach().float()}
