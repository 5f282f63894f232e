"""Cross-modal contrastive loss (paper 000's L_MMCL) with ContIG's handling of missing modalities.

For every pair of modalities ``(a, b)`` the loss is CLIP's symmetric InfoNCE over the patients
present in *both* ``a`` and ``b``: a patient's ``a`` embedding must pick out its own ``b``
embedding among the other patients' and vice versa. A patient missing ``b`` leaves only the
pairs that involve ``b`` (ContIG's "individuals with missing modalities are omitted"), so every
patient with at least two modalities contributes.

Under torch.distributed the embeddings and presence masks of all ranks are gathered first and
every rank computes the loss over the global batch (gradient convention:
:mod:`phenoclip.objectives.distributed`).
"""

from __future__ import annotations

import itertools
import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from phenoclip.data.batch import MODALITIES
from phenoclip.objectives.distributed import all_gather, all_gather_with_grad

#: open_clip's bound on the learnable logit scale: exp(logit_scale) <= 100
MAX_LOGIT_SCALE = math.log(100.0)


def _order(name: str) -> tuple[int, str]:
    """Canonical modality order (batch.MODALITIES first) so term names never depend on dict order."""
    return (MODALITIES.index(name) if name in MODALITIES else len(MODALITIES), name)


def clip_pair_loss(za: torch.Tensor, zb: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE between row-aligned embeddings.

    Parameters
    ----------
    za, zb : (N, E) L2-normalised embeddings; row i of both belongs to the same patient.
    scale : () inverse temperature (already exponentiated and clamped).

    Returns
    -------
    () mean of the a->b and b->a cross-entropies over the N rows.
    """
    logits = scale * za @ zb.T  # (N, N): row i = patient i's a against every patient's b
    labels = torch.arange(za.shape[0], device=za.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class ClipLoss(nn.Module):
    """Pairwise CLIP loss over every pair of modalities, restricted to the patients they share.

    Parameters
    ----------
    modalities : the modalities to pair; ``None`` pairs every modality given to ``forward``.
        Listing them makes a missing embedding an error rather than a silently skipped pair.
    max_scale : upper bound on ``exp(logit_scale)`` (CLIP's 100).
    gather : gather embeddings over torch.distributed ranks before the loss (ignored when not
        distributed). Switch off only to train each rank on its local batch.

    Returned terms
    --------------
    ``clip/<a>-<b>`` for each pair with >= 2 common patients (global batch), in the order of
    :data:`phenoclip.data.batch.MODALITIES`; ``clip``: the mean over those pairs (0, still
    attached to the graph, when no pair qualifies); ``temperature``: ``1 / scale``, detached.
    A pair with fewer than two common patients has no negatives, so it has no term at all.
    """

    def __init__(self, modalities: Sequence[str] | None = None, max_scale: float = 100.0,
                 gather: bool = True) -> None:
        super().__init__()
        if modalities is not None:
            modalities = list(modalities)
            if len(set(modalities)) != len(modalities) or len(modalities) < 2:
                raise ValueError(f"ClipLoss needs at least two distinct modalities, got {modalities}")
        if not max_scale > 0:
            raise ValueError(f"max_scale must be positive, got {max_scale}")
        self.modalities = None if modalities is None else sorted(modalities, key=_order)
        self.max_scale = float(max_scale)
        self.gather = gather

    def forward(self, embeddings: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor],
                logit_scale: torch.Tensor) -> dict[str, torch.Tensor]:
        """Compute the pair terms.

        Parameters
        ----------
        embeddings : ``{modality: (B, E)}`` L2-normalised, rows aligned by patient across modalities
            (absent rows may hold anything finite: they are never used).
        present : ``{modality: (B,)}`` bool, True where the patient has that modality.
        logit_scale : () log of the inverse temperature (a learnable parameter of the model).
        """
        names = self.modalities or sorted(embeddings, key=_order)
        missing = [m for m in names if m not in embeddings or m not in present]
        if missing:
            raise ValueError(f"ClipLoss: no embedding or presence mask for {missing}")
        if len(names) < 2:
            raise ValueError(f"ClipLoss needs at least two modalities, got {names}")
        shapes = {tuple(embeddings[m].shape) for m in names}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise ValueError(f"ClipLoss: embeddings must all be (B, E) of one shape, got {shapes}")
        batch = next(iter(shapes))[0]
        if any(tuple(present[m].shape) != (batch,) for m in names):
            raise ValueError(f"ClipLoss: presence masks must be ({batch},)")

        # One (B, M, E) tensor and one (B, M) mask: two collectives per step however many modalities.
        z = torch.stack([embeddings[m] for m in names], dim=1)
        mask = torch.stack([present[m].bool() for m in names], dim=1)
        if self.gather:
            z, mask = all_gather_with_grad(z), all_gather(mask)

        scale = logit_scale.exp().clamp(max=self.max_scale)
        terms: dict[str, torch.Tensor] = {}
        for i, j in itertools.combinations(range(len(names)), 2):
            rows = (mask[:, i] & mask[:, j]).nonzero().squeeze(1)
            if rows.numel() < 2:
                continue
            terms[f"clip/{names[i]}-{names[j]}"] = clip_pair_loss(z[rows, i], z[rows, j], scale)
        if terms:
            total = torch.stack(list(terms.values())).mean()
        else:
            # Zero that still reaches every input, so backward() and DDP's unused-parameter check hold.
            total = z.sum() * 0.0 + scale * 0.0
        return {**terms, "clip": total, "temperature": scale.detach().reciprocal()}
