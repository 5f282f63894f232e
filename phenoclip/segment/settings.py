"""The settings of ``phenoclip segment train`` (the CLI builds one :class:`SegmentSettings`).

The bottom of the segment step: :mod:`phenoclip.segment.run` and the benchmark import it; it
imports no model code at module level (``validate`` loads the registries it checks against).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from phenoclip.errors import UsageError
from phenoclip.models.segmentation import DECODER_PRESETS, DECODERS
from phenoclip.objectives.segmentation import LOSSES

@dataclass
class FitSettings:
    """The training recipe, the same for every decoder (the benchmark's 'same budget')."""

    epochs: int = 40
    batch_size: int = 8
    lr: float = 1e-3
    encoder_lr_scale: float = 0.1      # pretrained encoders adjust rather than relearn
    weight_decay: float = 1e-4
    freeze_encoders: bool = False
    loss: str = "dice-ce"
    seed: int = 0
    warmup_fraction: float = 0.05
    #: share of training patients whose expression is blanked per step (modality dropout)
    gene_dropout: float = 0.0


@dataclass
class SegmentSettings:
    """Everything ``phenoclip segment train`` needs (the CLI builds one)."""

    images: str
    out: str
    checkpoint: str | None = None
    genes: str | None = None
    decoder: str = "fusion"
    preset: str | None = None          # default: the checkpoint's preset, else tiny
    init: str = "pretrained"           # or "random": the fusion decoder on re-initialised encoders
    image_skips: bool = True
    keep: str | None = None            # a file of sample IDs to restrict to
    test_fraction: float = 0.2
    val_fraction: float = 0.15
    overlays: int = 4
    fit: FitSettings = field(default_factory=FitSettings)
    #: continue the interrupted run of ``out`` (its ``.OUT.partial`` folder)
    resume: bool = False
    #: testing aid: stop (as a signal would) after this many optimizer steps
    stop_after_steps: int | None = None

    def fingerprint(self) -> dict:
        """What must not change between a run and its ``--resume``."""
        return {k: v for k, v in asdict(self).items() if k not in ("resume", "stop_after_steps", "overlays")}

    def validate(self) -> None:
        if self.decoder not in DECODERS:
            raise UsageError(f"unknown --decoder '{self.decoder}': use {', '.join(DECODERS)}")
        if self.decoder == "fusion" and not self.checkpoint:
            raise UsageError("--decoder fusion needs --checkpoint (a phenoclip pretrain folder)",
                             hint="or train --decoder unet / attention-unet on the images alone")
        if self.preset is not None and self.preset not in DECODER_PRESETS:
            raise UsageError(f"unknown --preset '{self.preset}': use {', '.join(DECODER_PRESETS)}")
        if self.init not in ("pretrained", "random"):
            raise UsageError(f"unknown --init '{self.init}': use pretrained or random")
        if self.fit.loss not in LOSSES:
            raise UsageError(f"unknown --loss '{self.fit.loss}': use {', '.join(LOSSES)}")
        if not 0 <= self.fit.gene_dropout < 1:
            raise UsageError("--gene-dropout must be in [0, 1)")
        if self.fit.epochs < 1 or self.fit.batch_size < 1:
            raise UsageError("--epochs and --batch-size must be at least 1")
        if not (0 < self.test_fraction < 1 and 0 < self.val_fraction < 1
                and self.test_fraction + self.val_fraction < 1):
            raise UsageError("--test-fraction and --val-fraction must be in (0, 1) and sum to less than 1")
