"""``phenoclip pretrain`` as a library function: stores in, checkpoint directory out.

Steps: open and join the stores -> resolve data shapes into the config -> patient-level
train/validation split (recorded in the checkpoint) -> data-dependent initialisation from the
training split -> train -> validation retrieval each epoch (Recall@1/5/10 and MRR for every
modality pair, on held-out patients).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from phenoclip.pretrain.settings import PretrainSettings
from phenoclip.data.batch import DOSAGE, PRESENT, VALUES
from phenoclip.data.multimodal import CohortStores, MultimodalDataset, collate, split_patients
from phenoclip.errors import InconsistentInputError, OutputError, UsageError
from phenoclip.eval.history_plot import plot_pretrain_history
from phenoclip.eval.retrieval import paired_retrieval
from phenoclip.models.masks import estimate_ld_blocks
from phenoclip.models.linear_path import LINEAR_PATH_MODALITIES, flat_input, mri_pool_factor
from phenoclip.models.phenotype import hpo_vocabulary
from phenoclip.ops.devices import module_device, resolve_device, to_device
from phenoclip.progress import info, warn
from phenoclip.store_read import open_store
from phenoclip.checkpoint_files import CONFIG_FILE, MODEL_FILE
from phenoclip.checkpoint_load import read_config, read_state
from phenoclip.checkpoint_save import write_data_stats
from phenoclip.train import distributed as dist_utils
from phenoclip.train.loop import LoopSettings, Preempted, train
from phenoclip.train.stop import StopFlag
from phenoclip.pretrain.readout import RIDGE, SPARSE, fit_gene_readout
from phenoclip.eval.eqtl_screen import screen_cohort
from phenoclip.pretrain.task import TABULAR_KEY, PretrainTask


def fixed_split(usable: list[str], val_samples: list[str], data: list[str]) -> tuple[list[str], list[str]]:
    """(train, validation) with the given validation patients; those absent from the stores are dropped."""
    held = set(val_samples)
    val = [s for s in usable if s in held]
    if len(val) < 2:
        raise InconsistentInputError(f"--val-samples names {len(val)} patient(s) of these stores; validation "
                                     "retrieval needs at least 2", data[0], "list sample IDs that are in the stores")
    return [s for s in usable if s not in held], val


def data_shapes(stores: CohortStores, modalities: list[str]) -> dict:
    """Per modality the shape facts encoders are built from (saved in config.json)."""
    out: dict = {}
    for m in modalities:
        ms = stores.by_modality[m]
        if m == "gene":
            out[m] = {"n_variants": ms.shapes[DOSAGE][0]}
        elif m == "expr":
            out[m] = {"n_genes": ms.shapes[VALUES][0]}
        elif m == "mri":
            c, *vol = ms.shapes["images"]
            out[m] = {"volume_shape": list(vol), "in_channels": c}
        elif m == "signal":
            c, t = ms.shapes["signals"]
            out[m] = {"n_channels": c, "length": t}
        elif m == "hpo":
            data = ms.meta["phenotypes"]
            used = np.concatenate([*data.terms, *data.excluded, np.zeros(0, np.int64)])
            out[m] = {"n_ontology_terms": len(data.ontology), "n_vocab": int(len(hpo_vocabulary(data.ontology, used)))}
    return out


def _initialisation(cfg: PretrainSettings, stores: CohortStores, train_ds: MultimodalDataset) -> dict:
    """Everything the task derives from data, computed on the training split only."""
    init: dict = {}
    needs = set(cfg.modalities) | ({"hpo"} if "ontology" in cfg.objectives else set())
    if "gene" in needs:
        ms = stores.by_modality["gene"]
        init["variant_pos"] = np.asarray(ms.meta["variants"]["pos"], dtype=np.int64)
        have = [s for s in train_ds.samples if s in ms.row]
        dos = _dosages(train_ds, have)
        rows = [ms.row[s] for s in have]
        called = dos >= 0
        init["dosage_means"] = np.where(called, dos, 0).sum(0) / np.maximum(called.sum(0), 1)
        if "mhm" in cfg.objectives:
            # paper 000 masks haplotype blocks: LD from the phased haplotypes when the store has
            # them (r2 between alleles on one chromosome), else from dosages (composite LD)
            if ms.meta.get("phased"):
                with open_store(ms.path) as s:
                    haps = s.read("haplotypes", sorted(rows))   # (S, 2, V), -1 missing
                init["ld_blocks"] = estimate_ld_blocks(haps.reshape(-1, haps.shape[-1]).astype(np.float32))
                init["ld_source"] = f"the phased haplotypes of {len(rows)} training patients"
            else:
                init["ld_blocks"] = estimate_ld_blocks(dos)
                init["ld_source"] = f"the dosages of {len(rows)} training patients (the store is not phased)"
    if "hpo" in needs:
        data = stores.by_modality["hpo"].meta["phenotypes"]
        used = np.concatenate([*data.terms, *data.excluded, np.zeros(0, np.int64)])
        init["phenotypes"] = data
        init["hpo_vocab"] = hpo_vocabulary(data.ontology, used)
    if cfg.linear_path > 0:
        init["linear_inputs"] = _linear_inputs(cfg, train_ds)
    if cfg.tabular_modality:
        m = cfg.tabular_modality
        key = TABULAR_KEY[m]
        # read only the corrupted modality (beside CLIP a whole item would load every MRI volume and
        # recording too), scaled with the training split's own expression statistics
        stats = (train_ds.expr_mean, train_ds.expr_std) if m == "expr" else None
        view = MultimodalDataset(stores, [m], train_ds.samples, expr_stats=stats)
        items = [view[i][m] for i in range(len(view))]
        init["tabular_train"] = torch.stack([it[key] for it in items if bool(it[PRESENT])]).numpy()
    return init


@torch.no_grad()
def _linear_inputs(cfg: PretrainSettings, train_ds: MultimodalDataset, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Per modality with a linear path, the raw input rows of the training patients having it.

    Read through the dataset and :func:`~phenoclip.models.linear_path.flat_input`, so the
    principal axes see the data exactly as the model does (expression scaled, MRI pooled).
    """
    mods = [m for m in cfg.modalities if m in LINEAR_PATH_MODALITIES]
    rows: dict[str, list[np.ndarray]] = {m: [] for m in mods}
    for start in range(0, len(train_ds), batch_size):
        batch = collate([train_ds[i] for i in range(start, min(len(train_ds), start + batch_size))])
        for m in mods:
            pool = mri_pool_factor(cfg.data_shapes[m]["volume_shape"]) if m == "mri" else 1
            x = flat_input(m, batch[m], pool)[batch[m][PRESENT]]
            rows[m].append(x.double().numpy())
    return {m: np.concatenate(r) for m, r in rows.items()}


@torch.no_grad()
def embed(model, dataset: MultimodalDataset, modality: str, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings (N, E), present (N,)) of ``dataset``'s patients for one modality."""
    model.eval()
    device = module_device(model)
    embs, present = [], []
    for start in range(0, len(dataset), batch_size):
        batch = to_device(collate([dataset[i] for i in range(start, min(len(dataset), start + batch_size))]), device)
        embs.append(model.encode(modality, batch[modality]).cpu())
        present.append(batch[modality][PRESENT].cpu())
    return torch.cat(embs).numpy(), torch.cat(present).numpy()


def _dosages(dataset: MultimodalDataset, samples: list[str]) -> np.ndarray:
    """``(len(samples), V)`` float32 dosages (missing calls < 0) of those patients of ``dataset``'s stores."""
    ms = dataset.stores.by_modality["gene"]
    out = np.empty((len(samples), ms.shapes[DOSAGE][0]), np.float32)
    for j, s in enumerate(samples):
        out[j] = dataset.read_row(ms, "dosage", DOSAGE, ms.row[s])
    return out


def fit_readout(model, train_ds: MultimodalDataset, modalities: list[str], seed: int, log=info) -> dict[str, float]:
    """Fit ``model``'s genotype read-out on the training patients (:mod:`phenoclip.pretrain.readout`);
    returns the figures logged with the last epoch. Only the dosages that enter the fit are read."""
    teacher = {m: embed(model, train_ds, m) for m in modalities if m != "gene"}
    present = train_ds.stores.present("gene", train_ds.samples)
    n_variants = model.readouts["gene"].n_features
    fit = fit_gene_readout(lambda rows: _dosages(train_ds, [train_ds.samples[i] for i in rows]), n_variants,
                           present, teacher, seed)
    if fit is None:
        log("gene read-out not fitted: too few training patients have genotypes and another modality")
        return {}
    readout = model.readouts["gene"]
    readout.set_fit(fit.mean, fit.scale, fit.weight, fit.bias, fit.alpha)
    how = ("screened by their association with the teacher" if fit.method == RIDGE else
           "kept by its L1 penalty, chosen over the screened ridge by cross-validation")
    log(f"gene read-out: {fit.method} from {fit.variants} of {n_variants} variants ({how}) to the consensus of "
        f"{', '.join(teacher)} on {fit.patients} training patients (alpha {fit.alpha:.3g})")
    out = {"gene_readout/alpha": fit.alpha, "gene_readout/patients": float(fit.patients),
           "gene_readout/variants": float(fit.variants), "gene_readout/sparse": float(fit.method == SPARSE)}
    if readout.n_patients:
        out.update(keep_gene_choice(readout, fit, train_ds, log))
    return out


def keep_gene_choice(readout, fit, train_ds: MultimodalDataset, log=info) -> dict[str, float]:
    """Store what a gene probe needs to choose honestly (:mod:`phenoclip.eval.gene_probe`): the training
    patients' cross-fitted read-outs and the SNPs the eQTL screen of their genotypes and expression
    keeps (no labels read; none without an expression store). Returns the figures logged."""
    if fit.crossfit is not None:
        readout.set_crossfit(fit.rows, fit.crossfit)
    snps = screen_cohort(train_ds.stores, train_ds.samples)
    readout.set_eqtl(snps)
    if readout.has_choice:
        log(f"gene probe choice: cross-fitted read-outs of {len(fit.rows)} training patients and {len(snps)} "
            "eQTL-screened SNPs kept")
    else:
        log("gene probe choice not available: " + ("too few patients to cross-fit the read-out" if fit.crossfit is None
                                                   else "no expression gene's strongest SNP passes the eQTL screen"))
    return {"gene_readout/eqtl_snps": float(len(snps)),
            "gene_readout/crossfit": float(0 if fit.crossfit is None else len(fit.rows))}


def validation_retrieval(model, dataset: MultimodalDataset, modalities: list[str]) -> dict[str, float]:
    """Recall@1/5/10 and MRR on held-out patients for every modality pair (patients having both)."""
    embs = {m: embed(model, dataset, m) for m in modalities}
    out: dict[str, float] = {}
    ratios = []
    for i, a in enumerate(modalities):
        for b in modalities[i + 1:]:
            both = embs[a][1] & embs[b][1]
            if both.sum() < 2:
                continue
            r = paired_retrieval(torch.from_numpy(embs[a][0][both]), torch.from_numpy(embs[b][0][both]))
            for k in ("R@1", "R@5", "MRR", "chance@1"):
                out[f"val/{a}-{b}/{k}"] = r[k]
            ratios.append(r["R@1"] / r["chance@1"])
    if ratios:  # the headline: held-out Recall@1 in multiples of chance, averaged over pairs
        out["val/R@1_x_chance"] = float(np.mean(ratios))
        out["val/min_R@1_x_chance"] = float(np.min(ratios))
    return out


def _check_resume(out: Path, cfg: PretrainSettings) -> None:
    prev = PretrainSettings.from_dict({"gene_readout": False, "gene_probe_choice": False, **read_config(out)})
    for name in PretrainSettings.IDENTITY_FIELDS:
        a, b = getattr(prev, name), getattr(cfg, name)
        if a != b:
            raise InconsistentInputError(f"--resume on a checkpoint of another configuration: {name} was {a!r}, "
                                         f"now {b!r}", out, "resume with the same options or choose a new --out")


#: fewer training patients cannot train: contrastive losses need negatives within a batch and
#: normalisation layers need more than one value per channel
MIN_TRAIN_PATIENTS = 8


def run_pretrain(cfg: PretrainSettings, out: str | os.PathLike, resume: bool = False, log=info,
                 stop_after_steps: int | None = None) -> dict:
    """Pretrain and write the checkpoint directory ``out``; return the final state summary.

    A stop signal (SIGTERM, SIGUSR1) is recorded from here on, during the setup too: training then
    stops after its first step with a checkpoint (exit 75) instead of dying with nothing saved.
    """
    with StopFlag():
        return _run_pretrain(cfg, out, resume, log, stop_after_steps)


def _run_pretrain(cfg: PretrainSettings, out: str | os.PathLike, resume: bool, log, stop_after_steps: int | None) -> dict:
    cfg.validate()
    device = resolve_device(cfg.device)
    device = dist_utils.init_from_env(device)
    if device == "cpu" and cfg.preset == "paper":
        # measured on 2 cores with the sample cohort: about 0.2 samples/s at batch 4, and more than
        # 24 GB of RAM at batch 32 (the process is killed without a word of its own)
        warn("the paper preset is sized for GPUs: on a CPU it trains at well under 1 sample/s and needs "
             "tens of GB of RAM at the default batch size; use --device cuda, or --preset tiny|small")
    out = Path(out)
    if resume and not (out / CONFIG_FILE).exists():
        raise InconsistentInputError("--resume but no checkpoint here yet", out, "run once without --resume")
    if not resume and (out / MODEL_FILE).exists():
        raise UsageError(f"{out} already holds a checkpoint", hint="add --resume to continue it, or pick a new --out")
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)

    stores = CohortStores(cfg.data)
    needed = list(cfg.modalities) + (["hpo"] if "ontology" in cfg.objectives and "hpo" not in cfg.modalities else [])
    stores.require(needed)
    cfg.data_shapes = data_shapes(stores, needed)
    usable = [s for s in stores.samples if any(stores.present(m, [s])[0] for m in cfg.modalities)]
    if cfg.val_samples:
        train_ids, val_ids = fixed_split(usable, cfg.val_samples, cfg.data)
    else:
        train_ids, val_ids = split_patients(usable, cfg.val_fraction, cfg.seed)
    if len(train_ids) < MIN_TRAIN_PATIENTS:
        raise InconsistentInputError(
            f"{len(usable)} patient(s) have the named modalities, {len(train_ids)} of them for training after "
            f"the validation split; pretraining needs at least {MIN_TRAIN_PATIENTS} training patients",
            ", ".join(cfg.data), "add patients, or lower --val-fraction")
    train_ds = MultimodalDataset(stores, needed, train_ids)
    val_ds = MultimodalDataset(stores, needed, val_ids, stats_samples=train_ids)
    cfg.data_shapes["n_train"] = len(train_ds)
    if cfg.tabular_modality and len(cfg.modalities) > 1:
        # SCARF beside CLIP draws its replacement values from the training patients that have expression
        cfg.data_shapes["n_tabular_train"] = int(np.sum(stores.present(cfg.tabular_modality, train_ids)))
    if resume:
        if "gene_readout" not in read_config(out):
            cfg.gene_readout = False  # written before the read-out existed: no weights for one
        if "gene_probe_choice" not in read_config(out):
            cfg.gene_probe_choice = False  # written before the read-out kept cross-fitted values
        _check_resume(out, cfg)
    init = None if resume else _initialisation(cfg, stores, train_ds)
    if init and "ld_blocks" in init:
        log(f"mhm: {int(init['ld_blocks'].max()) + 1 if len(init['ld_blocks']) else 0} haplotype blocks estimated "
            f"from {init['ld_source']}")
    task = PretrainTask(cfg, init=init)
    settings = LoopSettings(epochs=cfg.epochs, batch_size=min(cfg.batch_size, len(train_ds)), lr=cfg.lr,
                            weight_decay=cfg.weight_decay, seed=cfg.seed, stop_after_steps=stop_after_steps,
                            device=device)
    clip_modalities = [m for m in cfg.modalities]

    def on_epoch_end(epoch: int, logged: dict) -> dict:
        if len(clip_modalities) < 2:
            return {}
        extra = validation_retrieval(task.model, val_ds, clip_modalities)
        if cfg.fits_gene_readout and epoch + 1 >= cfg.epochs:
            # before the loop's last save, so the final checkpoint holds it (every rank fits the
            # same read-out from the same training patients: sklearn's ridge is deterministic)
            extra.update(fit_readout(task.model, train_ds, clip_modalities, cfg.seed, log))
        return extra

    state = {"split": {"train": train_ids, "validation": val_ids}, "modalities": cfg.modalities,
             "world_size": dist_utils.world_size(), "device": device}
    if init and "ld_source" in init:
        state["mhm_blocks_from"] = init["ld_source"]
    if resume:
        state["init_validation"] = read_state(out).get("init_validation", {})
    elif len(clip_modalities) >= 2:
        # the same model at random initialisation: the baseline every learning claim is held against
        state["init_validation"] = validation_retrieval(task.model, val_ds, clip_modalities)

    try:
        result = train(task, train_ds, settings, out, config=cfg.to_dict(), state=state, resume=resume,
                       on_epoch_end=on_epoch_end, log=log)
    except Preempted:
        _write_stats(out, train_ds)
        dist_utils.shutdown()  # every rank got here at the same step (the stop is decided together)
        raise
    _write_stats(out, train_ds)
    if dist_utils.rank() == 0:
        _plot_history(Path(out), result.get("history", []), log)
    dist_utils.shutdown()
    return result


def _plot_history(out: Path, history: list[dict], log: Callable[[str], None]) -> None:
    """``history.png`` beside ``state.json``: losses and held-out retrieval per epoch (a plot
    failure is logged, never a failed pretraining: the checkpoint is already whole)."""
    if not history:
        return
    try:
        plot_pretrain_history(history, out / "history.png", read_state(out).get("init_validation"),
                              title=f"pretraining {out.name}")
    except (OutputError, ValueError) as e:
        log(f"history.png not written: {e}")


def _write_stats(out: Path, train_ds: MultimodalDataset) -> None:
    """Expression scaling of the training split, for finetune/retrieve on other cohorts (rank 0)."""
    if train_ds.expr_mean is not None and dist_utils.rank() == 0 and out.is_dir():
        write_data_stats(out, {"expr_mean": train_ds.expr_mean, "expr_std": train_ds.expr_std})
