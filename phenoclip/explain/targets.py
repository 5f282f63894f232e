"""What an attribution explains: one scalar per individual as a function of one modality's input.

``contrastive`` (ContIG, section "feature explanations"): a fixed reference batch of other
individuals, with their embeddings of both modalities, is held; the individual is added to it
and the symmetric InfoNCE loss of that batch (:func:`~phenoclip.objectives.contrastive.clip_pair_loss`,
the pretraining loss) is the output. Only the individual's embedding of the explained modality
depends on the input; their embedding of the other modality and all reference embeddings are
fixed. A positive attribution means the feature *raises* the loss, i.e. pulls the individual
away from their own other-modality embedding; the ranking uses absolute values.

``model`` (a ``phenoclip finetune`` model): the head's output for the individual, the logit of
a class (binary: the positive class, i.e. the log-odds; multiclass: the predicted class unless
one is named) or the predicted value, with the other modalities' embeddings fixed.

The terms of the loss that do not depend on the input are computed once per individual
(:meth:`ContrastiveTarget.constants`), so the forward pass captum repeats ``n x steps`` times
costs ``O(reference size x E)`` per row, not ``O(reference size^2)``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from phenoclip.data.batch import PRESENT
from phenoclip.data.multimodal import CohortStores, MultimodalDataset, collate
from phenoclip.errors import InconsistentInputError, UsageError
from phenoclip.pretrained import embed_samples
from phenoclip.explain.attribution import DenseEncoder
from phenoclip.progress import info, warn


class ContrastiveTarget(nn.Module):
    """``(x, partner, keep, col_lse, partner_lse, const) -> (n,)`` the batch's contrastive loss.

    Parameters
    ----------
    encoder:
        The explained modality as a dense function (:class:`DenseEncoder`).
    ref_self, ref_other:
        ``(M, E)`` L2-normalised embeddings of the reference candidates in the explained
        modality and in the other one (rows aligned by individual).
    scale:
        The model's inverse temperature, ``exp(logit_scale)`` clamped as in training.

    Per-row inputs (made by :meth:`constants`): ``partner (n, E)`` the individual's
    other-modality embedding; ``keep (n, M)`` 1 for the candidates in the individual's
    reference batch (``K`` of them; never the individual itself), 0 otherwise.
    """

    def __init__(self, encoder: DenseEncoder, ref_self: Tensor, ref_other: Tensor, scale: float):
        super().__init__()
        if ref_self.shape != ref_other.shape or ref_self.dim() != 2:
            raise ValueError(f"reference embeddings must be two (M, E) of one shape, got {tuple(ref_self.shape)} "
                             f"and {tuple(ref_other.shape)}")
        self.encoder = encoder
        self.register_buffer("ref_self", ref_self.detach().float())
        self.register_buffer("ref_other", ref_other.detach().float())
        self.scale = float(scale)

    @torch.no_grad()
    def constants(self, partner: Tensor, keep: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The row-aligned extra arguments of :meth:`forward` for individuals with ``partner`` and ``keep``.

        Returns ``(partner, keep, col_lse (n, M), partner_lse (n,), const (n,))``:
        ``col_lse[r, k]`` is the log-sum-exp over the kept references ``j`` of the logits
        ``s a_j . b_k``; ``partner_lse[r]`` the same over ``s a_j . p_r``; ``const[r]`` the
        sum of every loss term that does not involve the individual's input.
        """
        s, a, b = self.scale, self.ref_self, self.ref_other
        keep = keep.float()
        partner = partner.float()
        masked = torch.where(keep[:, :, None] > 0, 0.0, -torch.inf)                        # (n, M(j), 1)
        sab = s * a @ b.T                                                                    # (M(j), M(k))
        col_lse = torch.logsumexp(sab[None] + masked, dim=1)                                 # (n, M(k)) over rows j
        row_lse = torch.logsumexp(sab[None] + masked.transpose(1, 2), dim=2)                 # (n, M(j)) over cols k
        sap = s * partner @ a.T                                                              # (n, M): a_j . p_r
        partner_lse = torch.logsumexp(sap + masked[..., 0], dim=1)
        diag = torch.diagonal(sab)                                                           # a_k . b_k
        # reference rows (a_k against the batch's b: the partner and the kept b_j), target b_k;
        # plus the -s a_k . b_k of the reference columns
        ref_rows = -diag + torch.logaddexp(sap, row_lse)
        const = ((ref_rows - diag) * keep).sum(1)
        col_lse = torch.where(keep > 0, col_lse, torch.zeros_like(col_lse))
        return partner, keep, col_lse, partner_lse, const

    def forward(self, x: Tensor, *extra: Tensor) -> Tensor:
        return self.head(self.encoder.raw(x), *extra)

    def head(self, raw: Tensor, partner: Tensor, keep: Tensor, col_lse: Tensor, partner_lse: Tensor,
             const: Tensor) -> Tensor:
        """The loss as a function of the individual's un-normalised embedding ``raw (n, E)``."""
        z = nn.functional.normalize(raw, dim=-1)
        s = self.scale
        zp = s * (z * partner).sum(-1)                                                       # (n,)
        zb = s * z @ self.ref_other.T                                                        # (n, M)
        row0 = -zp + torch.logsumexp(torch.cat([zp[:, None], zb.masked_fill(keep <= 0, -torch.inf)], 1), 1)
        col0 = -zp + torch.logaddexp(zp, partner_lse)
        cols = (torch.logaddexp(zb, col_lse) * keep).sum(1)
        size = keep.sum(1) + 1.0
        return (row0 + col0 + cols + const) / (2.0 * size)


class ModelTarget(nn.Module):
    """``(x, others, present, index) -> (n,)``: a fine-tuned head's output with one modality's input varied.

    Parameters
    ----------
    encoder:
        The explained modality as a dense function of the fine-tuned model's encoders.
    finetune:
        The :class:`~phenoclip.models.finetune.FinetuneModel`.
    position:
        Index of the explained modality in ``finetune.modalities``.

    Per-row inputs: ``others (n, M, W)`` every modality's block (the explained one's row is
    ignored; block ``j`` fills its first ``finetune.widths[j]`` columns, ``W`` the widest),
    ``present (n, M)`` 1 where the individual has the modality, ``index (n,)`` the output column
    (class) to explain (0 for regression).
    """

    def __init__(self, encoder: DenseEncoder, finetune: nn.Module, position: int):
        super().__init__()
        self.encoder, self.finetune, self.position = encoder, finetune, position

    def outputs(self, raw: Tensor, others: Tensor, present: Tensor) -> Tensor:
        """``(n, n_outputs)``: the head's logits (or value) from the un-normalised embedding ``raw``."""
        z = self.encoder.embed(raw)
        slot = torch.zeros_like(present)
        slot[:, self.position] = 1.0
        if z.shape[1] < others.shape[2]:
            z = nn.functional.pad(z, (0, others.shape[2] - z.shape[1]))
        embs = others * (present * (1 - slot))[..., None] + z[:, None, :] * slot[..., None]  # (n, M, W)
        if self.finetune.fusion in ("concat", "stack"):
            feats = torch.cat([embs[:, j, :w] for j, w in enumerate(self.finetune.widths)], dim=1)
        else:
            feats = embs.sum(1) / (present * (1 - slot) + slot).sum(1, keepdim=True).clamp(min=1.0)
        return self.finetune.head_output(feats)

    def head(self, raw: Tensor, others: Tensor, present: Tensor, index: Tensor) -> Tensor:
        return self.outputs(raw, others, present).gather(1, index.long()[:, None]).squeeze(1)

    def forward(self, x: Tensor, *extra: Tensor) -> Tensor:
        return self.head(self.encoder.raw(x), *extra)


# ----------------------------------------------------------------------------- building them for a run

#: the reference batch of --target contrastive when --reference-size is not given (capped at the
#: individuals that have both modalities, less one)
DEFAULT_REFERENCE_SIZE = 256


def reference_candidates(pool: list[str], individuals: list[str], size: int, seed: int, path: str,
                         modality: str, ref_modality: str) -> list[str]:
    """The reference candidates: ``size`` (+1 when an explained individual is among them) from ``pool`` by seed."""
    explained = set(individuals)
    need = size + (1 if any(x in explained for x in pool) else 0)
    if len(pool) < need:
        raise InconsistentInputError(
            f"{len(pool)} individuals have both {modality} (--data) and {ref_modality} (this store): too few for a "
            f"reference batch of --reference-size {size} (needs {need}, the batch never holds the individual "
            "explained)", path, f"lower --reference-size to at most {max(0, len(pool) - 1)}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pool))[:need]
    return [pool[i] for i in order]


def contrastive_target(s, stores: CohortStores, model: nn.Module, dense: DenseEncoder, modality: str,
                       ref_modality: str, individuals: list[str], stats):
    """``(scorer, reference candidates, extras(ids, x))`` of the contrastive target for settings ``s``."""
    pool = [x for x in stores.samples if stores.present(modality, [x])[0] and stores.present(ref_modality, [x])[0]]
    if s.reference_size is None:
        # the default fits the cohort it meets: a batch of all other individuals when fewer exist
        s.reference_size = min(DEFAULT_REFERENCE_SIZE, max(1, len(pool) - 1))
        if s.reference_size < DEFAULT_REFERENCE_SIZE:
            info(f"reference batch: {s.reference_size} individuals (the default {DEFAULT_REFERENCE_SIZE} capped: "
                 f"{len(pool)} have both {modality} and {ref_modality})")
    candidates = reference_candidates(pool, individuals, s.reference_size, s.seed, s.reference, modality,
                                      ref_modality)
    ref_self, _ = embed_samples(model, stores, modality, candidates, stats, label=f"reference {modality}")
    ref_other, _ = embed_samples(model, stores, ref_modality, candidates, stats, label=f"reference {ref_modality}")
    scale = float(model.logit_scale.detach().exp().clamp(max=100.0))
    scorer = ContrastiveTarget(dense, torch.from_numpy(ref_self), torch.from_numpy(ref_other), scale).eval()
    position = {x: i for i, x in enumerate(candidates)}
    size = s.reference_size

    def extras(ids: list[str], x: torch.Tensor) -> tuple:
        with torch.no_grad():
            ds = MultimodalDataset(stores, [ref_modality], ids, expr_stats=stats)
            partner = model.encode(ref_modality, collate([ds[i] for i in range(len(ds))])[ref_modality])
        keep = torch.ones(len(ids), len(candidates))
        for r, x_id in enumerate(ids):
            drop = position.get(x_id, size)        # the individual itself, else the spare candidate
            if drop < len(candidates):
                keep[r, drop] = 0.0
        return scorer.constants(partner, keep)

    return scorer, candidates, extras


def model_target(s, stores: CohortStores, ft: nn.Module, config: dict, dense: DenseEncoder, modality: str, stats):
    """``(scorer, extras(ids, x), description of the explained output)`` of a fine-tuned model for settings ``s``."""
    mods = list(ft.modalities)
    scorer = ModelTarget(dense, ft, mods.index(modality)).eval()
    classes = list(config.get("classes") or [])
    task = config.get("task", "regression")
    if task == "regression":
        fixed, desc = 0, "predicted value"
    elif s.class_name is not None:
        if s.class_name not in classes:
            raise UsageError(f"--class '{s.class_name}' is not a class of the model ({', '.join(classes)})")
        fixed, desc = classes.index(s.class_name), f"logit of class {s.class_name}"
    elif len(classes) == 2:
        fixed, desc = 1, f"log-odds of class {classes[1]}"
    else:
        fixed, desc = None, "logit of the predicted class"
    absent = [m for m in mods if m != modality and m not in stores.by_modality]
    if absent:
        warn(f"no --with store for {', '.join(absent)}: held absent, as finetune predict does")

    def extras(ids: list[str], x: torch.Tensor) -> tuple:
        n = len(ids)
        others = torch.zeros(n, len(mods), max(ft.widths))
        present = torch.zeros(n, len(mods))
        with torch.no_grad():
            for j, m in enumerate(mods):
                if m == modality:
                    present[:, j] = 1.0
                elif m in stores.by_modality:
                    ds = MultimodalDataset(stores, [m], ids, expr_stats=stats)
                    sub = collate([ds[i] for i in range(n)])[m]
                    others[:, j, :ft.widths[j]] = ft.embedding(m, sub)
                    present[:, j] = sub[PRESENT].float()
            if fixed is None:
                index = scorer.outputs(dense.raw(x), others, present).argmax(1)
            else:
                index = torch.full((n,), fixed, dtype=torch.long)
        return others, present, index

    return scorer, extras, desc
