"""What ``phenoclip finetune`` is told (:class:`FinetuneSettings`) and the small helpers its outputs share.

The bottom of the finetune step: :mod:`phenoclip.finetune.experiment` (the experiment) and
:mod:`phenoclip.finetune.run` (the step) both import it, and it imports neither.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from phenoclip.errors import UsageError
from phenoclip.models.finetune import FUSIONS
from phenoclip.train import workdir
from phenoclip.finetune.heads import MODES, HeadSettings
from phenoclip.finetune.labels import TaskLabels

#: what each fit is held against: the same architecture at random initialisation, and logistic
#: regression / elastic net on the standardised raw features of the same modalities and patients
#: (a recording's amplitude spectra, not its time-domain samples); for a head over signals alone,
#: also logistic regression on the principal components of those spectra at their own scale, the
#: strongest classic model of a recording measured at few labels; for a head over genotypes alone with an
#: expression store among the data, also logistic regression on the SNPs an eQTL screen keeps
#: (phenoclip.eval.eqtl_screen), the strongest classic model of genotypes on the sample cohort
#: (docs/experiments.md)
BASELINES = ("scratch", "logistic", "elasticnet", "spectral", "eqtl")
#: ``--baseline auto``: these, and ``spectral`` for a head over signals alone, ``eqtl`` for one over
#: genotypes alone beside an expression store
DEFAULT_BASELINES = ("scratch", "logistic")
#: rows of metrics.tsv written by the classic baselines (the ``model`` column)
RAW_MODELS = {"logistic": "logistic_raw", "elasticnet": "elasticnet_raw", "spectral": "spectral_pcs",
              "eqtl": "eqtl_snps"}


@dataclass
class FinetuneSettings:
    """Everything ``phenoclip finetune`` needs (the CLI builds one)."""

    checkpoint: str
    data: list[str]
    labels: str
    out: str
    mode: str = "linear"
    fractions: list[float] = field(default_factory=lambda: [0.02, 0.05, 0.1, 0.2, 0.5, 1.0])
    repeats: int = 3
    task: str = "auto"
    positive: str | None = None
    test_fraction: float = 0.2
    seed: int = 0
    #: "auto" (DEFAULT_BASELINES, with spectral for a head over signals alone and eqtl for one over genotypes
    #: alone beside an expression store), a comma-separated subset of
    #: BASELINES, or "none"
    baseline: str = "auto"
    #: concat | mean | stack, or auto: stack for a class label over two or more modalities, else concat
    fusion: str = "auto"
    modalities: list[str] | None = None
    head: HeadSettings = field(default_factory=HeadSettings)
    #: continue the interrupted --mode full run of ``out`` (its ``.OUT.partial`` folder)
    resume: bool = False
    #: testing aid: stop (as a signal would) after this many optimizer steps of one fit
    stop_after_steps: int | None = None

    @property
    def work(self) -> Path:
        """Where ``--mode full`` keeps its fits' checkpoints until the output folder is written."""
        return workdir.work_folder(self.out)

    def fingerprint(self) -> dict:
        """What must not change between a run and its ``--resume``."""
        return {k: v for k, v in asdict(self).items() if k not in ("resume", "stop_after_steps")}

    @property
    def baselines(self) -> list[str]:
        names = [b.strip() for b in self.baseline.split(",") if b.strip()]
        return [] if names == ["none"] else names

    def baselines_for(self, modalities: list[str], signal_path: bool, expression: bool = False) -> list[str]:
        """``--baseline`` for a head over ``modalities``: ``auto`` is :data:`DEFAULT_BASELINES`, and ``spectral``
        too for a head over signals alone whose checkpoint has a signal linear path (``signal_path``),
        ``eqtl`` for a head over genotypes alone when an expression store is among the data
        (``expression``), so that a head stands beside its modality's strongest classic model without
        asking."""
        if self.baselines != ["auto"]:
            return self.baselines
        return [*DEFAULT_BASELINES, *(["spectral"] if modalities == ["signal"] and signal_path else []),
                *(["eqtl"] if modalities == ["gene"] and expression else [])]

    def validate(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"unknown --mode '{self.mode}': use {' or '.join(MODES)}")
        for b in [] if self.baselines == ["auto"] else self.baselines:
            if b not in BASELINES:
                raise UsageError(f"unknown --baseline '{b}': use auto, a comma-separated list of "
                                 f"{', '.join(BASELINES)}, or none")
        if self.fusion not in ("auto", *FUSIONS):
            raise UsageError(f"unknown --fusion '{self.fusion}': use auto, {', '.join(FUSIONS)}")
        if self.repeats < 1:
            raise UsageError("--repeats must be at least 1")
        if not self.data:
            raise UsageError("give at least one --data STORE")
        if self.resume and self.mode != "full":
            raise UsageError("--resume continues an interrupted --mode full run; --mode linear has nothing to resume")


def describe_labels(labels: TaskLabels) -> dict:
    return {"source": labels.source, "column": labels.column, "task": labels.task, "classes": labels.classes}


def write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, default=_json_default))


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)
