"""The cohort and the pretrained model that the learning suites (ssl, classify, retrieve, ablation) share.

``--cohort DIR`` is either a folder of preprocessed stores (``*.h5``; each store's schema says
which modality it holds, a ``labels.tsv`` beside them gives the classes) or a folder laid out like
``phenoclip simulate``'s output (preprocessed here, once). Without ``--cohort`` a cohort of
``--patients`` patients is simulated with the sample cohort's settings. Everything is cached under
``report/work/`` so that the suites of one ``benchmark --suite all`` run pretrain the shared model once.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from phenoclip_bench import BenchContext
from phenoclip_bench.real_data import DATASETS, write_cohort
from phenoclip.data.simulate import SimulationSettings, simulate_cohort
from phenoclip.errors import InconsistentInputError
from phenoclip.preprocess.cohort import preprocess_cohort
from phenoclip.pretrain.run import run_pretrain
from phenoclip.pretrain.settings import PretrainSettings
from phenoclip.progress import info
from phenoclip.store_read import open_store
from phenoclip.store_schema import SCHEMA_MODALITY

#: the modalities of a full cohort, in the order the CLI lists them
MODALITIES = ["gene", "expr", "mri", "signal", "hpo"]
#: patients simulated when neither --cohort nor --patients is given
DEFAULT_PATIENTS = 200
#: objectives of the shared multimodal model (paper 000: contrastive pairs plus ontology alignment)
FULL_OBJECTIVES = ["clip", "ontology"]
#: pretraining epochs of the shared model, with and without --quick
PRETRAIN_EPOCHS = {"quick": 60, "full": 150}


@dataclass
class BenchCohort:
    """Stores by modality name, the labels file (``sample`` + ``disease`` ...), the truth file if simulated."""

    stores: dict[str, Path]
    labels: Path | None
    truth: Path | None
    description: str

    def data(self, modalities: list[str] | None = None) -> list[str]:
        """Store paths for ``--data``: of ``modalities`` (default all), plus hpo when it exists (ontology)."""
        names = list(self.stores) if modalities is None else [m for m in modalities if m in self.stores]
        return [str(self.stores[m]) for m in names]

    def data_args(self, modalities: list[str] | None = None) -> str:
        return " ".join(f"--data {p}" for p in self.data(modalities))


def _stores_in(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.glob("*.h5")):
        try:
            with open_store(path) as store:
                modality = SCHEMA_MODALITY.get(store.schema)
        except Exception:
            continue  # not a store (or not one of ours): other files may sit beside the stores
        if modality and modality not in found:
            found[modality] = path
    return found


def simulate_into(folder: Path, config, what: str = "") -> Path:
    """``folder/cohort``: a fresh ``phenoclip simulate`` cohort of ``config`` (a SimulationSettings)."""
    cohort = folder / "cohort"
    shutil.rmtree(cohort, ignore_errors=True)
    info(f"simulating {config.patients} patients (seed {config.seed}{', ' + what if what else ''})")
    simulate_cohort(cohort, config)
    return cohort


def check_cohort(cohort: Path) -> dict[str, Path]:
    """The stores of a ``--cohort`` folder of stores, or ``{}`` for a simulated-layout folder.

    Anything else raises :class:`InconsistentInputError` (exit 5) with what to do; ``phenoclip
    benchmark`` calls it before any suite runs, so a wrong ``--cohort`` is one line, not a report of
    failed suites.
    """
    if not cohort.is_dir():
        raise InconsistentInputError("--cohort is not a folder", cohort,
                                     "give a folder of phenoclip stores or of phenoclip simulate output")
    stores = _stores_in(cohort)
    if len(stores) >= 2 or (stores and (cohort / "labels.tsv").exists()):
        return stores
    if not (cohort / "labels.tsv").exists():
        raise InconsistentInputError("--cohort holds neither two phenoclip stores (or one with a labels.tsv) nor "
                                     "a simulated cohort (labels.tsv)", cohort, "run phenoclip preprocess first")
    return {}


def bench_cohort(ctx: BenchContext) -> BenchCohort:
    """The cohort of this benchmark run (see the module docstring); preprocessed once per report folder."""
    cached = ctx.work / "cohort_stores"
    if ctx.cohort is not None and str(ctx.cohort) in DATASETS:
        folder = ctx.work / f"real_{ctx.cohort}"
        if not (folder / "expr.h5").exists():
            write_cohort(str(ctx.cohort), folder)
        return BenchCohort(_stores_in(folder), folder / "labels.tsv", None, DATASETS[str(ctx.cohort)])
    if ctx.cohort is not None:
        cohort = Path(ctx.cohort)
        stores = check_cohort(cohort)
        if stores:
            labels = cohort / "labels.tsv"
            truth = cohort / "truth.json"
            return BenchCohort(stores, labels if labels.exists() else None, truth if truth.exists() else None,
                               f"the stores in {cohort}")
        raw, description = cohort, f"cohort {cohort}"
    else:
        patients = ctx.patients or DEFAULT_PATIENTS
        raw, description = ctx.work / "cohort", f"{patients} patients simulated with seed {ctx.seed}"
        if not (raw / "truth.json").exists():
            simulate_into(ctx.work, SimulationSettings(patients=patients, seed=ctx.seed))
    done = cached / "done.json"
    if not done.exists():
        shutil.rmtree(cached, ignore_errors=True)
        info(f"preprocessing {raw} into {cached}")
        preprocess_cohort(raw, cached)
        done.write_text(json.dumps({"source": str(raw)}))
    stores = _stores_in(cached)
    truth = raw / "truth.json"
    return BenchCohort(stores, raw / "labels.tsv", truth if truth.exists() else None, description)


def pretrain_command(cohort: BenchCohort, modalities: list[str], objectives: list[str], epochs: int, seed: int,
                     out: Path, preset: str = "tiny") -> str:
    """The ``phenoclip pretrain`` command line equivalent to :func:`pretrained` (for the report)."""
    needed = modalities + (["hpo"] if "ontology" in objectives and "hpo" not in modalities else [])
    return (f"phenoclip pretrain --modalities {','.join(modalities)} {cohort.data_args(needed)} "
            f"--objective {','.join(objectives)} --preset {preset} --epochs {epochs} --seed {seed} --out {out}")


def pretrained(ctx: BenchContext, cohort: BenchCohort, modalities: list[str] | None = None,
               objectives: list[str] | None = None, epochs: int | None = None, preset: str = "tiny",
               **overrides) -> tuple[Path, str]:
    """A checkpoint pretrained on ``cohort`` (cached by its settings); returns (folder, equivalent command).

    Defaults: every modality of the cohort, :data:`FULL_OBJECTIVES` (ontology only with an hpo store),
    :data:`PRETRAIN_EPOCHS`. ``overrides`` go to :class:`~phenoclip.pretrain.settings.PretrainSettings`.
    """
    modalities = [m for m in (modalities or MODALITIES) if m in cohort.stores]
    if objectives is None:
        objectives = [o for o in FULL_OBJECTIVES if o != "ontology" or "hpo" in cohort.stores]
    epochs = epochs or PRETRAIN_EPOCHS["quick" if ctx.quick else "full"]
    key = json.dumps([modalities, objectives, epochs, preset, ctx.seed, sorted(overrides.items()),
                      cohort.data(None), ctx.device], default=str)
    out = ctx.work / f"pretrain_{hashlib.sha1(key.encode()).hexdigest()[:10]}"
    command = pretrain_command(cohort, modalities, objectives, epochs, ctx.seed, out, preset)
    for k, v in overrides.items():
        if k == "architectures":  # the CLI spells it --arch MODALITY=ARCH, repeated
            command += "".join(f" --arch {m}={a}" for m, a in v.items())
        elif k == "val_samples":  # the CLI reads them from a file
            ids = out.parent / f"{out.name}.val_samples.txt"
            ids.write_text("\n".join(v) + "\n")
            command += f" --val-samples {ids}"
        elif isinstance(v, bool):  # typer's --flag/--no-flag pairs
            command += f" --{'' if v else 'no-'}{k.replace('_', '-')}"
        else:
            command += f" --{k.replace('_', '-')} {v}"
    if (out / "done.json").exists():
        return out, command
    shutil.rmtree(out, ignore_errors=True)
    needed = modalities + (["hpo"] if "ontology" in objectives and "hpo" not in modalities else [])
    cfg = PretrainSettings(modalities=modalities, data=cohort.data(needed), objectives=objectives, epochs=epochs,
                         preset=preset, seed=ctx.seed, device=ctx.device, **overrides)
    info(f"pretraining {','.join(modalities)} ({','.join(objectives)}, {epochs} epochs)")
    run_pretrain(cfg, out, log=lambda line: None)
    (out / "done.json").write_text(key)
    return out, command
