"""Segmentation loss: Dice + binary cross-entropy on single-channel lesion logits.

A thin wrapper over monai's ``DiceCELoss(sigmoid=True)`` that returns the named terms
(``dice``, ``ce``, ``loss``) the training loop logs; ``loss`` equals monai's total exactly
(tested). Lesions are a fraction of a percent of the voxels: cross-entropy alone learns "no
lesion anywhere", the Dice term is what makes the foreground count.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

LOSSES = ("dice-ce",)


@dataclass
class SegmentationTerms:
    loss: Tensor
    dice: Tensor
    ce: Tensor


class DiceCE(nn.Module):
    """``(logits (B, 1, D, H, W), target (B, 1, D, H, W) in {0, 1}) -> SegmentationTerms``.

    Parameters
    ----------
    lambda_dice, lambda_ce:
        Weights of the two terms.
    batch_dice:
        Pool the Dice term over the batch (monai's ``batch=True``) rather than per volume.
    smooth:
        monai's ``smooth_nr``/``smooth_dr`` (an empty truth and prediction score Dice 1).
    """

    def __init__(self, lambda_dice: float = 1.0, lambda_ce: float = 1.0, batch_dice: bool = False,
                 smooth: float = 1e-5):
        super().__init__()
        # imported here: only segmentation users pay for monai
        from monai.losses import DiceCELoss

        if lambda_dice < 0 or lambda_ce < 0:
            raise ValueError(f"loss weights must be >= 0, got {lambda_dice} and {lambda_ce}")
        self.reference = DiceCELoss(sigmoid=True, batch=batch_dice, lambda_dice=lambda_dice, lambda_ce=lambda_ce,
                                    smooth_nr=smooth, smooth_dr=smooth)
        self.lambda_dice, self.lambda_ce = lambda_dice, lambda_ce

    def forward(self, logits: Tensor, target: Tensor) -> SegmentationTerms:
        if logits.shape != target.shape or logits.shape[1] != 1:
            raise ValueError(f"logits and target must both be (B, 1, D, H, W), got {tuple(logits.shape)} "
                             f"and {tuple(target.shape)}")
        target = target.to(logits.dtype)
        dice = self.reference.dice(logits, target)
        ce = self.reference.bce(logits, target)
        return SegmentationTerms(self.lambda_dice * dice + self.lambda_ce * ce, dice, ce)


def build_loss(name: str) -> DiceCE:
    if name not in LOSSES:
        raise ValueError(f"unknown loss '{name}' (known: {', '.join(LOSSES)})")
    return DiceCE()
