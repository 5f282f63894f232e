"""Join the named terms of several objectives into the one scalar the optimiser steps on."""

from __future__ import annotations

import math
from typing import Iterable, Mapping

import torch
from torch import nn


class WeightedSum(nn.Module):
    """``total = sum(weight[name] * terms[name])`` over the weighted names present in ``terms``.

    Parameters
    ----------
    weights : ``{term name: weight >= 0}``, e.g. ``{"clip": 1.0, "ontology": 0.5, "mvm": 1.0}``.
        A weight of 0 keeps a term logged but out of the total.
    known_terms : the names the configured objectives can return; when given, a weight for any
        other name (a typo in a config file) is a ``ValueError`` here rather than a silently
        unweighted term later.

    forward(terms: ``{name: () tensor}``) -> ``(total () tensor, logged {name: float})``: ``logged``
    holds every term (weighted or not, e.g. ``temperature``) and the total under ``"loss"``, moved
    to the host in one transfer. A weighted name missing from ``terms`` (an objective not run on
    this batch) adds nothing; with none present the total is a 0 that needs no backward.
    """

    def __init__(self, weights: Mapping[str, float], known_terms: Iterable[str] | None = None) -> None:
        super().__init__()
        bad = {k: w for k, w in weights.items() if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0)}
        if bad:
            raise ValueError(f"loss weights must be finite numbers >= 0, got {bad}")
        if known_terms is not None:
            known = set(known_terms)
            unknown = sorted(set(weights) - known)
            if unknown:
                raise ValueError(f"unknown loss term(s) {unknown}; known: {sorted(known)}")
        if "loss" in weights:
            raise ValueError("'loss' is the name of the total, not a term")
        self.weights = {k: float(w) for k, w in weights.items()}

    def forward(self, terms: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        if "loss" in terms:
            raise ValueError("a term may not be called 'loss': that is the name of the total")
        bad = [k for k, v in terms.items() if not (torch.is_tensor(v) and v.numel() == 1)]
        if bad:
            raise ValueError(f"terms must be scalar tensors: {bad}")
        used = [(self.weights[k], terms[k]) for k in self.weights if k in terms]
        if used:
            total = sum(w * t.reshape(()) for w, t in used)
        else:
            device = next(iter(terms.values())).device if terms else None
            total = torch.zeros((), device=device)
        names = [*terms, "loss"]
        values = torch.stack([v.detach().reshape(()).float() for v in [*terms.values(), total]])
        return total, dict(zip(names, values.cpu().tolist()))
