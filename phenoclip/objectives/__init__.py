"""Self-supervised objectives: ``nn.Module`` losses whose ``forward`` returns ``{name: () tensor}``.

A task joins a model's outputs to these losses; :class:`WeightedSum` turns the named terms into
the scalar the loop steps on and the floats it logs. Term names are ``<objective>`` for the value
to weight and ``<objective>/<part>`` for its parts (``clip/gene-mri``, ``vime/recon``).

Helpers that are not losses: :class:`ScarfCorruption`, :class:`VimeMasking` (data corruptions),
:class:`EmaUpdater` (BYOL's target network), :func:`hierarchy_targets` and
:func:`ancestor_distance_matrix` (ontology targets), :mod:`.distributed` (gradient-preserving
all_gather).
"""

from phenoclip.objectives.combine import WeightedSum
from phenoclip.objectives.contrastive import ClipLoss
from phenoclip.objectives.masked import MaskedReconstructionLoss, MaskedTokenLoss
from phenoclip.objectives.ontology import OntologyAlignmentLoss, ancestor_distance_matrix, hierarchy_targets
from phenoclip.objectives.tabular import (ByolLoss, EmaUpdater, ScarfCorruption, ScarfLoss, VimeLoss, VimeMasking,
                                          info_nce)

#: Name (as in configs and ``--objectives``) -> loss class. Explicit, no lookup by substring.
OBJECTIVES = {
    "clip": ClipLoss,                    # cross-modal CLIP loss over every pair of modalities (ContIG-style)
    "ontology": OntologyAlignmentLoss,   # patient embeddings against HPO term embeddings and their ancestors
    "scarf": ScarfLoss,                  # InfoNCE between a row and its SCARF-corrupted view
    "vime": VimeLoss,                    # VIME mask estimation + feature reconstruction
    "byol": ByolLoss,                    # BYOL normalised-MSE between online predictions and target projections
    "mvm": MaskedReconstructionLoss,     # masked volume modelling: MAE-style MSE on masked patches
    "mhm": MaskedTokenLoss,              # masked haplotype / dosage modelling: cross-entropy on masked tokens
}

__all__ = [
    "OBJECTIVES", "WeightedSum", "ClipLoss", "OntologyAlignmentLoss", "hierarchy_targets",
    "ancestor_distance_matrix", "ScarfCorruption", "ScarfLoss", "info_nce", "VimeMasking", "VimeLoss",
    "ByolLoss", "EmaUpdater", "MaskedReconstructionLoss", "MaskedTokenLoss",
]
