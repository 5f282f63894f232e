"""Typed, saved configuration per stage.

Precedence: dataclass defaults < ``--config FILE.toml`` < options given on the command line.
The resolved configuration is written into every checkpoint (``config.json``) and is enough to
rebuild the model. The CLI's namespace never reaches library code: it builds one of these.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from phenoclip.data.batch import MODALITIES
from phenoclip.errors import InputMissingError, MalformedInputError, UsageError
from phenoclip.progress import warn

#: objective -> what it needs (checked by :meth:`PretrainSettings.validate`)
OBJECTIVES = ("clip", "ontology", "mvm", "mhm", "scarf", "vime", "byol")
TABULAR_OBJECTIVES = ("scarf", "vime", "byol")
PRESETS = ("tiny", "small", "paper")


def default_objectives(modalities: list[str]) -> list[str]:
    """What a run given no ``--objective`` trains: CLIP, with SCARF on expression beside it when
    expression is one of two or more modalities.

    SCARF beside CLIP keeps what tells expression profiles apart, not only what expression shares
    with the other modalities. On the sample cohort (9 pretraining seeds, the baselines suite's
    held-out patients) it lifted the expression probe at 10 % of labels and the fused probe above
    MOFA+ there, with retrieval at least as good (docs/experiments.md, "SCARF on expression beside CLIP").
    """
    if len(modalities) >= 2 and "expr" in modalities:
        return ["clip", "scarf"]
    return ["clip"]


@dataclass
class PretrainSettings:
    """Everything ``phenoclip pretrain`` needs; ``data_shapes`` is filled from the stores."""

    modalities: list[str]
    data: list[str]
    #: None: :func:`default_objectives` of ``modalities``
    objectives: list[str] | None = None
    weights: dict[str, float] = field(default_factory=dict)
    preset: str = "tiny"
    architectures: dict[str, str] = field(default_factory=dict)
    embed_dim: int | None = None
    epochs: int = 100
    batch_size: int = 32
    lr: float = 2e-3
    # strong decay: contrastive pretraining on a few hundred patients overfits otherwise
    # (held-out retrieval on the sample cohort: 3.55x chance at 0.5 against 2.3x at 0.05)
    weight_decay: float = 0.5
    val_fraction: float = 0.2
    #: fixed validation patients (--val-samples FILE) instead of a random val_fraction split, so that
    #: models trained on different modality sets are scored on the same held-out patients
    val_samples: list[str] | None = None
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    mvm_mask_rate: float = 0.5
    mhm_mask_rate: float = 0.3
    scarf_rate: float = 0.6
    vime_rate: float = 0.3
    byol_tau: float = 0.99
    ontology_temperature: float = 0.1
    augment: bool = True
    #: principal components of each modality's raw input in its linear path (0: no linear path;
    #: see phenoclip.models.linear_path). Without it, on the sample cohort (3 seeds) the MRI
    #: embeddings probed disease at chance (AUROC 0.48-0.58 against 0.58-0.76 for a logistic
    #: regression on the voxels) and expr-mri / mri-hpo retrieval stayed below PCA + CCA; with 128
    #: components every modality's probe and every pair's retrieval is at or above those baselines
    linear_path: int = 128
    #: after the last epoch, fit the genotype read-out (a ridge map of the dosages to the other
    #: modalities' embeddings; phenoclip.models.readout) that finetune's linear probes read for gene.
    #: On 2,000 simulated patients it lifted the gene probe from 0.70 to 0.77-0.78 AUROC at every
    #: label fraction (docs/experiments.md, "a genotype read-out distilled from the other modalities")
    gene_readout: bool = True
    #: the read-out also keeps the training patients' cross-fitted values and the eQTL screen's SNPs, so a
    #: gene probe can choose honestly between them (models.readout); False for checkpoints from before
    gene_probe_choice: bool = True
    data_shapes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.objectives is None:
            self.objectives = default_objectives(self.modalities)

    def _token_gene_encoder(self) -> None:
        """mhm masks variant tokens: a preset whose default gene encoder is the dosage MLP (tiny)
        switches to the variant transformer (said in the log); an explicit MLP is refused."""
        # imported here: models.presets.PRESETS (the preset objects) would clash with this module's PRESETS (names)
        from phenoclip.models.presets import PRESETS

        chosen = self.architectures.get("gene")
        if chosen is None and PRESETS[self.preset].default_arch["gene"] == "mlp":
            self.architectures = {**self.architectures, "gene": "transformer"}
            warn(f"mhm masks variant tokens: the gene encoder is the variant transformer, not the {self.preset} "
                 "preset's dosage MLP (--arch gene=mamba for the Mamba encoder)")
        elif chosen == "mlp":
            raise UsageError("the mhm objective masks variant tokens and the gene=mlp encoder has none",
                             hint="use --arch gene=transformer or gene=mamba, or drop mhm")

    def validate(self) -> "PretrainSettings":
        """Reject impossible combinations with one clear line each (exit 2)."""
        if not self.modalities:
            raise UsageError("--modalities is empty")
        for m in self.modalities:
            if m not in MODALITIES:
                raise UsageError(f"unknown modality '{m}': use {', '.join(MODALITIES)}")
        if len(set(self.modalities)) != len(self.modalities):
            raise UsageError("a modality is named twice in --modalities")
        for o in self.objectives:
            if o not in OBJECTIVES:
                raise UsageError(f"unknown objective '{o}': use {', '.join(OBJECTIVES)}")
        if self.preset not in PRESETS:
            raise UsageError(f"unknown preset '{self.preset}': use {', '.join(PRESETS)}")
        if "clip" in self.objectives and len(self.modalities) < 2:
            raise UsageError("the clip objective needs at least two --modalities",
                             hint="for one tabular modality use --objective scarf, vime or byol")
        tab = [o for o in self.objectives if o in TABULAR_OBJECTIVES]
        if tab and len(self.modalities) != 1:
            if tab != ["scarf"] or "clip" not in self.objectives or "expr" not in self.modalities:
                raise UsageError(f"--objective {tab[0]} pretrains one tabular modality: give exactly one in "
                                 "--modalities", hint="beside clip only scarf runs, on expr: --objective clip,scarf")
        elif tab and self.modalities[0] not in ("expr", "gene"):
            raise UsageError(f"--objective {tab[0]} needs a tabular modality (expr or gene), not '{self.modalities[0]}'")
        if "mvm" in self.objectives and "mri" not in self.modalities:
            raise UsageError("the mvm (masked volume modelling) objective needs mri in --modalities")
        if "mhm" in self.objectives and "gene" not in self.modalities:
            raise UsageError("the mhm (masked haplotype modelling) objective needs gene in --modalities")
        if "mhm" in self.objectives:
            self._token_gene_encoder()
        for name, w in self.weights.items():
            if name not in self.objectives:
                raise UsageError(f"a weight is given for '{name}', which is not among --objective")
            if w < 0:
                raise UsageError(f"weight of '{name}' must be >= 0")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1")
        if self.linear_path < 0:
            raise UsageError("--linear-path must be >= 0 (0 turns the linear path off)")
        if not 0 < self.val_fraction < 1:
            raise UsageError("--val-fraction must be between 0 and 1")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise UsageError(f"--device must be auto, cpu or cuda, got '{self.device}'")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PretrainSettings":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    # the fields whose change makes a checkpoint a different model or a different run
    IDENTITY_FIELDS = ("modalities", "objectives", "preset", "architectures", "embed_dim", "batch_size", "lr",
                       "weight_decay", "val_fraction", "val_samples", "seed", "weights", "mvm_mask_rate", "mhm_mask_rate",
                       "scarf_rate", "vime_rate", "byol_tau", "ontology_temperature", "augment", "linear_path",
                       "gene_readout", "gene_probe_choice", "data_shapes")

    @property
    def tabular_modality(self) -> str | None:
        """The modality the tabular objectives (scarf, vime, byol) corrupt: the run's one modality, or
        expression when SCARF runs beside CLIP (``--objective clip,scarf``); None without them."""
        if not any(o in TABULAR_OBJECTIVES for o in self.objectives):
            return None
        return self.modalities[0] if len(self.modalities) == 1 else "expr"

    @property
    def fits_gene_readout(self) -> bool:
        """Whether this run ends by fitting the genotype read-out (:func:`~phenoclip.models.readout.fits_gene_readout`)."""
        # imported here: the settings stay torch-free for `phenoclip --help`
        from phenoclip.models.readout import fits_gene_readout

        return fits_gene_readout(self.gene_readout, self.objectives, self.modalities)


def read_toml(path: str | os.PathLike, section: str) -> dict:
    """The ``[section]`` table of a TOML file (or its top level when there is no such table)."""
    # imported here: only --config reads TOML, and on Python 3.10 that needs tomli, which is not a dependency
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    p = os.fspath(path)
    if not os.path.exists(p):
        raise InputMissingError("config file does not exist", p)
    try:
        with open(p, "rb") as fh:
            doc = tomllib.load(fh)
    except tomllib.TOMLDecodeError as e:
        raise MalformedInputError(f"not valid TOML ({e})", p) from None
    return doc.get(section, doc)


def read_sample_ids(path: str | os.PathLike, option: str) -> list[str]:
    """Sample IDs, one a line (blank lines and ``#`` comments skipped); a missing or empty file is an input error."""
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise InputMissingError(f"{option} file does not exist", p)
    with open(p) as fh:
        ids = [line.strip() for line in fh if line.strip() and not line.startswith("#")]
    if not ids:
        raise MalformedInputError(f"{option} file lists no sample IDs", p, "write one sample ID a line")
    return ids


def merge(defaults_from_file: dict, cli: dict) -> dict:
    """CLI values that were given (not None) win over the file's."""
    out = dict(defaults_from_file)
    out.update({k: v for k, v in cli.items() if v is not None})
    return out
