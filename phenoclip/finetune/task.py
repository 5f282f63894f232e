"""Full fine-tuning as a task of the one training loop (:mod:`phenoclip.train.loop`).

``finetune --mode full`` trains encoders and head together. Going through the loop gives it
what pretraining has: exact ``--resume`` after a stop anywhere, SIGTERM/SIGUSR1 checkpoints
(exit 75) and exact data parallelism under torchrun. For the last two, every random draw of a
step (dropout) comes from per-patient streams keyed by a number drawn from the checkpointed
``generators`` (:mod:`phenoclip.ops.draws`), and batch norm takes global statistics under DDP
(the loop's wrapper), so N processes with batch B train like one with batch N x B.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from phenoclip.data.batch import SAMPLE_IDS
from phenoclip.models.finetune import FinetuneModel
from phenoclip.models.heads import freeze_attention_key_bias, freeze_bias_before_batch_norm
from phenoclip.ops.draws import RowDraws, drawing, row_dropout

#: the encoders learn at this fraction of the head's rate: fine-tuning adjusts rather than
#: overwrites the pretrained features
ENCODER_LR_SCALE = 0.1


class FinetuneTask(nn.Module):
    """Cross-entropy (class labels) or mean squared error (standardised values) of ``ft`` on a batch.

    ``targets`` maps each training patient's ID to its class index or value (already
    standardised with ``ft.target_mean``/``ft.target_scale`` for a regression).
    """

    def __init__(self, ft: FinetuneModel, targets: dict[str, float], classification: bool, seed: int):
        super().__init__()
        self.ft = ft
        self.targets = dict(targets)
        self.classification = classification
        self.generators = {"task": torch.Generator().manual_seed(seed + 1)}
        row_dropout(self)
        freeze_bias_before_batch_norm(self)  # zero gradient in exact arithmetic; frozen, ranks agree bit for bit
        freeze_attention_key_bias(self)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """The head at ``lr``, the encoders at ``lr * ENCODER_LR_SCALE``; weight decay on both."""
        head = [p for name, p in self.ft.named_parameters() if not name.startswith("model.") and p.requires_grad]
        encoders = [p for p in self.ft.model.parameters() if p.requires_grad]
        return [{"params": head, "lr": lr, "weight_decay": weight_decay},
                {"params": encoders, "lr": lr * ENCODER_LR_SCALE, "weight_decay": weight_decay}]

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        step_key = int(torch.randint(0, 1 << 62, (1,), generator=self.generators["task"]))
        with drawing(RowDraws.for_batch(step_key, batch[SAMPLE_IDS])):
            features = self.ft.features(batch)
        # head_output de-standardises a regression's value; the loss is on standardised targets
        out = (self.ft.head_output(features) if self.ft.fusion == "stack"
               else self.ft.head((features - self.ft.feature_mean) / self.ft.feature_scale))
        y = torch.as_tensor(np.array([self.targets[s] for s in batch[SAMPLE_IDS]]), device=out.device)
        if self.classification:
            loss = nn.functional.cross_entropy(out, y.long())
        else:
            loss = nn.functional.mse_loss(out[:, 0], y.to(out.dtype))
        return loss, {"loss": float(loss.detach())}

    def after_step(self, progress: float, lr: float) -> None:
        pass
