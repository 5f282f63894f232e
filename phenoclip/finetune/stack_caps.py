"""Caps on the stacked probe's block weights, measured on patients pretraining did not fit.

The stacked probe (:mod:`phenoclip.eval.stacking`) weights each modality by its out-of-fold
predictions on the labelled patients, who are usually the pretraining run's training patients;
a block whose encoder memorised them looks far better there than on new patients.
:mod:`phenoclip.eval.generalisation` measures, without labels, how much of each modality's
cross-modal agreement survives on the pretraining run's validation patients, and the stack's
weight for a block is capped by that share.

Those validation patients are often the held-out patients a fine-tuning run is scored on. So that
no held-out score depends on its own patient's inputs, the validation patients are split in two
halves and a held-out patient of one half is scored by a stack whose caps come from the other
half (cross-fitting); the model that is saved for later use takes its caps from all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from phenoclip.data.multimodal import CohortStores
from phenoclip.eval.generalisation import MIN_UNSEEN, REPEATS, block_shares
from phenoclip.pretrained import Pretrained, embed_samples
from phenoclip.progress import info

#: at most this many validation patients are read (a random subset beyond it): the MRRs need an
#: N x N similarity matrix per pair, and 2,000 patients measure a share well (400 did on 2,000 patients)
MAX_UNSEEN = 2000


@dataclass
class StackCaps:
    """Per-block weight caps (in the order of the stacked modalities) and how they were measured."""

    deploy: list[float]
    #: (validation patients, caps measured without them): a held-out patient among them is scored with these
    crossfit: list[tuple[set[str], list[float]]] = field(default_factory=list)
    record: dict = field(default_factory=dict)


def _caps(shares: dict[str, float], modalities: Sequence[str]) -> list[float]:
    values = np.array([shares[m] for m in modalities])
    return (values / values.max()).tolist()


def measure_stack_caps(pre: Pretrained, stores: CohortStores, modalities: Sequence[str],
                       stats: tuple[np.ndarray, np.ndarray] | None, seed: int) -> StackCaps | None:
    """Caps for stacking ``modalities`` with ``pre``'s encoders, from its validation patients in
    ``stores`` (every encoder the stores feed is a partner); None, with a log line, when fewer
    than 2 x :data:`~phenoclip.eval.generalisation.MIN_UNSEEN` of them, or fewer than
    ``MIN_UNSEEN`` of its training patients, are there."""
    here = set(stores.samples)
    unseen = [s for s in pre.validation_samples if s in here]
    if len(unseen) < 2 * MIN_UNSEEN:
        info(f"stack: {len(unseen)} of the pretraining run's validation patients are in the stores (need "
             f"{2 * MIN_UNSEEN}); block weights are not capped")
        return None
    partners = [m for m in pre.modalities if m in stores.by_modality]
    rng = np.random.default_rng(seed)
    if len(unseen) > MAX_UNSEEN:  # a held-out patient left out here is scored with caps measured without it
        unseen = [unseen[i] for i in np.sort(rng.choice(len(unseen), size=MAX_UNSEEN, replace=False))]
    train = [s for s in pre.train_samples if s in here]
    if len(train) < MIN_UNSEEN:  # nothing to hold the validation patients' agreement against
        info(f"stack: {len(train)} of the pretraining run's training patients are in the stores (need "
             f"{MIN_UNSEEN}); block weights are not capped")
        return None
    train = [train[i] for i in np.sort(rng.choice(len(train), size=min(len(train), REPEATS * len(unseen)),
                                                  replace=False))]

    def embed(ids: list[str]) -> dict:
        # the blocks the stack reads: a modality's read-out where it has one (models.readout)
        return {m: embed_samples(pre.model, stores, m, ids, stats if m == "expr" else None,
                                 label=f"stack caps: embedding {m}", readout=True) for m in partners}

    train_emb, unseen_emb = embed(train), embed(unseen)

    def rows(ids: list[str]) -> dict:
        pos = [unseen.index(s) for s in ids]
        return {m: (e[pos], p[pos]) for m, (e, p) in unseen_emb.items()}

    full = block_shares(train_emb, unseen_emb, seed)
    order = rng.permutation(len(unseen))
    halves = [[unseen[i] for i in order[: len(unseen) // 2]], [unseen[i] for i in order[len(unseen) // 2:]]]
    crossfit = []
    for members, other in ((halves[0], halves[1]), (halves[1], halves[0])):
        crossfit.append((set(members), _caps(block_shares(train_emb, rows(other), seed)["shares"], modalities)))
    caps = _caps(full["shares"], modalities)
    info("stack: block weight caps " + ", ".join(f"{m} {c:.2f}" for m, c in zip(modalities, caps))
         + f" (cross-modal agreement kept on {len(unseen)} patients pretraining did not fit)")
    record = {"caps": dict(zip(modalities, caps)), "n_validation_patients": len(unseen),
              "pairs": full["pairs"], "held_out_scores": "cross-fitted over two halves of the validation patients"}
    return StackCaps(caps, crossfit, record)


def crossfit_scores(stack: StackCaps, test_samples: Sequence[str],
                    fit_and_score: Callable[[list[float]], np.ndarray]) -> np.ndarray:
    """Scores of ``test_samples`` where each patient's caps were measured without it:
    ``fit_and_score(caps)`` fits a stack with ``caps`` and scores every test patient; a patient in
    one half of the validation patients takes the stack capped from the other half, any other
    patient the stack capped from all of them (its own inputs were never read)."""
    out, covered = None, np.zeros(len(test_samples), bool)
    for members, caps in stack.crossfit:
        take = np.array([s in members for s in test_samples], dtype=bool)
        if not take.any():
            continue
        scores = fit_and_score(caps)
        out = np.array(scores, copy=True) if out is None else out
        out[take] = scores[take]
        covered |= take
    if out is None or not covered.all():
        scores = fit_and_score(stack.deploy)
        out = np.array(scores, copy=True) if out is None else out
        out[~covered] = scores[~covered]
    return out
