"""Ontology alignment, masked modelling, WeightedSum and the registry (numbers, not only shapes)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from phenoclip.io.ontology import Ontology
from phenoclip.objectives import (OBJECTIVES, MaskedReconstructionLoss, MaskedTokenLoss, OntologyAlignmentLoss,
                                  WeightedSum, ancestor_distance_matrix, hierarchy_targets)
from phenoclip.objectives.ontology import patient_targets

# root(0) -> A(1) -> A1(2) -> A11(3);  root -> B(4) -> B1(5)
PARENTS = [[], [0], [1], [2], [0], [4]]


def _dag() -> Ontology:
    indptr = [0]
    for ps in PARENTS:
        indptr.append(indptr[-1] + len(ps))
    return Ontology([f"HP:{i:07d}" for i in range(6)], ["root", "A", "A1", "A11", "B", "B1"], indptr,
                    [p for ps in PARENTS for p in ps])


def _targets(decay: float = 0.5) -> torch.Tensor:
    return hierarchy_targets(ancestor_distance_matrix(_dag(), range(6)), decay)


def test_hierarchy_targets_weigh_ancestors_by_distance():
    w = _targets(0.5)
    torch.testing.assert_close(w[3], torch.tensor([0.125, 0.25, 0.5, 1.0, 0.0, 0.0]))  # A11: self and ancestors
    torch.testing.assert_close(w[1], torch.tensor([0.5, 1.0, 0.0, 0.0, 0.0, 0.0]))  # descendants weigh 0
    torch.testing.assert_close(_targets(0.0), torch.eye(6))
    with pytest.raises(ValueError):
        hierarchy_targets([[0, -1], [1, 0]], decay=1.5)
    with pytest.raises(ValueError):
        hierarchy_targets([[1, -1], [1, 0]])


def test_patient_targets_take_the_largest_weight_and_normalise():
    q = patient_targets(torch.tensor([[2, 3, -1], [-1, -1, -1]]), _targets(0.5))
    expected = torch.tensor([0.25, 0.5, 1.0, 1.0, 0.0, 0.0])  # root reached from both: max, not sum
    torch.testing.assert_close(q[0], expected / expected.sum())
    assert torch.all(q[1] == 0)


def test_ontology_loss_hand_value_and_skipped_patients():
    # two orthonormal terms, no hierarchy, temperature 1: -log softmax([1, 0])[0]
    loss = OntologyAlignmentLoss(temperature=1.0, targets=torch.eye(2))
    out = loss(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[0], [-1]]), torch.eye(2))
    assert out["ontology"].item() == pytest.approx(math.log(1 + math.exp(-1)))
    assert out["ontology/patients"].item() == 1.0
    none = loss(torch.zeros(2, 2, requires_grad=True), torch.full((2, 1), -1), torch.eye(2))
    assert none["ontology"].item() == 0.0 and not torch.isnan(none["ontology"])
    with pytest.raises(ValueError):
        loss(torch.eye(2), torch.tensor([[2], [0]]), torch.eye(2))


def test_optimised_patients_sit_nearest_own_term_then_ancestor_then_unrelated():
    torch.manual_seed(0)
    terms_emb = torch.linalg.qr(torch.randn(8, 6))[0].T  # (6, 8) orthonormal term embeddings
    free = nn.Parameter(torch.randn(3, 8))
    terms = torch.tensor([[3, -1], [5, -1], [-1, -1]])  # A11, B1, none
    loss_fn = OntologyAlignmentLoss(temperature=0.1, targets=_targets(0.5))
    opt = torch.optim.Adam([free], lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        loss_fn(F.normalize(free, dim=1), terms, terms_emb)["ontology"].backward()
        opt.step()
    assert torch.all(free.grad[2] == 0)  # no terms: untouched
    cos = F.normalize(free.detach(), dim=1) @ terms_emb.T  # (3, 6)
    a, b = cos[0], cos[1]
    assert a[3] > a[2] > a[1] > a[0] > max(a[4], a[5])  # own > parent > grandparent > root > unrelated
    assert b[5] > b[4] > b[0] > max(b[1], b[2], b[3])


def test_ontology_gradcheck():
    torch.manual_seed(1)
    p = F.normalize(torch.randn(3, 4, dtype=torch.float64), dim=1).requires_grad_()
    t = F.normalize(torch.randn(6, 4, dtype=torch.float64), dim=1).requires_grad_()
    terms = torch.tensor([[3, 5], [1, -1], [-1, -1]])
    loss = OntologyAlignmentLoss(temperature=0.5, targets=_targets(0.5).double())
    assert torch.autograd.gradcheck(lambda p, t: loss(p, terms, t)["ontology"], (p, t))


# ---------------------------------------------------------------- masked modelling

def test_masked_reconstruction_hand_values():
    pred = torch.zeros(1, 3, 3, requires_grad=True)
    target = torch.tensor([[[1.0, 2.0, 3.0], [5.0, 5.0, 5.0], [0.0, 0.0, 6.0]]])
    mask = torch.tensor([[True, False, True]])
    raw = MaskedReconstructionLoss(norm_pix=False)(pred, target, mask)["mvm"]
    assert raw.item() == pytest.approx(((1 + 4 + 9) / 3 + 36 / 3) / 2)  # unmasked patch 1 ignored
    normed = MaskedReconstructionLoss(norm_pix=True, eps=0.0)(pred, target, mask)["mvm"]
    # patch 0 -> [-1, 0, 1] (unbiased var 1); patch 2 -> (x - 2) / sqrt(12) = [-1, -1, 2] / sqrt(3)
    assert normed.item() == pytest.approx(((1 + 0 + 1) / 3 + (1 + 1 + 4) / 3 / 3) / 2)
    raw.backward()
    assert torch.all(pred.grad[0, 1] == 0)


def test_masked_losses_with_nothing_masked_are_zero():
    pred = torch.randn(2, 4, 3, requires_grad=True)
    out = MaskedReconstructionLoss()(pred, torch.randn(2, 4, 3), torch.zeros(2, 4, dtype=torch.bool))
    out["mvm"].backward()
    assert out["mvm"].item() == 0.0 and torch.all(pred.grad == 0)
    logits = torch.randn(2, 4, 3, requires_grad=True)
    out = MaskedTokenLoss()(logits, torch.full((2, 4), -1), torch.ones(2, 4, dtype=torch.bool))
    out["mhm"].backward()
    assert out["mhm"].item() == 0.0 and out["mhm/accuracy"].item() == 0.0 and torch.all(logits.grad == 0)


def test_masked_token_loss_hand_value():
    logits = torch.log(torch.tensor([[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4], [0.5, 0.25, 0.25]]]))
    targets = torch.tensor([[0, 1, -1, 2]])
    mask = torch.tensor([[True, True, True, False]])  # token 2: missing genotype; token 3: not masked
    out = MaskedTokenLoss()(logits, targets, mask)
    assert out["mhm"].item() == pytest.approx(-(math.log(0.7) + math.log(0.1)) / 2, rel=1e-6)
    assert out["mhm/accuracy"].item() == pytest.approx(0.5)
    as_float = MaskedTokenLoss()(logits, targets.float(), mask)  # the batch's dosage is float32 with -1 missing
    assert as_float["mhm"].item() == out["mhm"].item()
    with pytest.raises(ValueError):
        MaskedTokenLoss()(logits, targets[:, :3], mask[:, :3])


# ---------------------------------------------------------------- combining terms

def test_weighted_sum_totals_and_logs_every_term():
    terms = {"clip": torch.tensor(2.0, requires_grad=True), "mvm": torch.tensor(3.0, requires_grad=True),
             "temperature": torch.tensor(0.07)}
    total, logged = WeightedSum({"clip": 1.0, "mvm": 0.5, "ontology": 2.0})(terms)
    assert total.item() == pytest.approx(3.5)
    assert logged == pytest.approx({"clip": 2.0, "mvm": 3.0, "temperature": 0.07, "loss": 3.5})
    assert all(isinstance(v, float) for v in logged.values())
    total.backward()
    assert terms["mvm"].grad.item() == 0.5


def test_weighted_sum_validates():
    with pytest.raises(ValueError, match="clp"):
        WeightedSum({"clp": 1.0}, known_terms=["clip", "clip/gene-mri", "temperature"])
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError):
            WeightedSum({"clip": bad})
    with pytest.raises(ValueError):
        WeightedSum({"clip": 1.0})({"clip": torch.ones(2)})
    total, logged = WeightedSum({"clip": 1.0})({"temperature": torch.tensor(0.1)})
    assert total.item() == 0.0 and logged["loss"] == 0.0


def test_registry_is_explicit():
    assert set(OBJECTIVES) == {"clip", "ontology", "scarf", "vime", "byol", "mvm", "mhm"}
    assert all(issubclass(cls, nn.Module) and cls.__doc__ for cls in OBJECTIVES.values())
    assert OBJECTIVES["mvm"] is MaskedReconstructionLoss and OBJECTIVES["mhm"] is MaskedTokenLoss
