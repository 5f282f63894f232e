"""Pretrained models as feature extractors: load a checkpoint, embed the patients of stores.

Shared by ``finetune``, ``retrieve`` (and later ``explain`` and ``segment``): each needs the
multimodal model of a pretraining checkpoint, the same model at random initialisation as a
baseline, and per-patient embeddings of one modality's store scaled exactly as in training.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from phenoclip.data.batch import PRESENT
from phenoclip.data.multimodal import CohortStores, MultimodalDataset, collate
from phenoclip.errors import InconsistentInputError
from phenoclip.models.multimodal import MultimodalModel, build_model
from phenoclip.models.readout import fits_gene_readout
from phenoclip.progress import track, warn
from phenoclip.checkpoint_load import build_checked, load_weights, read_config, read_data_stats, read_state

#: ``config.json`` key naming what wrote a checkpoint; pretraining checkpoints predate it
KIND_KEY = "kind"


@dataclass
class Pretrained:
    """A pretraining checkpoint opened for use: model (eval mode), config, state, scaling stats."""

    path: Path
    config: dict
    state: dict
    model: MultimodalModel
    data_stats: dict[str, np.ndarray]

    @property
    def modalities(self) -> list[str]:
        return self.model.modalities

    @property
    def train_samples(self) -> list[str]:
        return list(self.state.get("split", {}).get("train", []))

    @property
    def validation_samples(self) -> list[str]:
        return list(self.state.get("split", {}).get("validation", []))

    def honest_gene_block(self, samples: Sequence[str], block: np.ndarray) -> np.ndarray:
        """``block`` (the gene probe's ``(N, E + S)`` columns of ``samples``, read-out first) with each
        training patient's in-sample read-out replaced by its cross-fitted one where the checkpoint keeps
        it (:class:`~phenoclip.models.readout.GenotypeReadout`): how a new patient looks to the read-out."""
        out = np.array(block, dtype=np.float64, copy=True)
        readout = self.model.readouts["gene"] if self.model.has_readout("gene") else None
        if readout is None or not readout.n_patients:
            return out
        values, kept = readout.crossfit.cpu().numpy(), readout.crossfit_set.cpu().numpy() > 0
        if len(self.train_samples) != len(kept):  # a split the buffers do not describe: nothing replaced
            return out
        row = {s: i for i, s in enumerate(self.train_samples)}
        for j, s in enumerate(samples):
            i = row.get(s)
            if i is not None and kept[i]:
                out[j, :values.shape[1]] = values[i]
        return out

    def require(self, modality: str) -> None:
        """One clear line (exit 5) when the checkpoint has no encoder for ``modality``."""
        if modality not in self.model.encoders:
            raise InconsistentInputError(
                f"the checkpoint has no '{modality}' encoder (it has {', '.join(self.modalities)})", self.path,
                "pretrain with that modality, or pass a store of one it has")


def checkpoint_kind(config: dict) -> str:
    """'pretrain', 'finetune' or 'segment': what wrote the checkpoint of ``config``."""
    return config.get(KIND_KEY, "pretrain")


def read_config_of_kind(directory: str | os.PathLike, kind: str) -> dict:
    """``config.json`` of a checkpoint written by ``phenoclip KIND``; another kind is refused (exit 5)."""
    config = read_config(directory)
    found = checkpoint_kind(config)
    if found != kind:
        raise InconsistentInputError(f"this is a {found} checkpoint, not a {kind} one", directory,
                                     f"give the --out folder of phenoclip {kind}")
    return config


def model_from_pretrain_config(config: dict) -> MultimodalModel:
    """The multimodal model of a pretraining ``config.json`` (weights not loaded)."""
    shapes = config["data_shapes"]
    mods = list(config["modalities"])
    if "ontology" in config.get("objectives", []) and "hpo" not in mods:
        mods.append("hpo")  # term embeddings exist even when hpo was not a contrastive modality
    # a checkpoint written before the read-out existed has no "gene_readout" and no read-out weights
    readout = fits_gene_readout(config.get("gene_readout", False), config.get("objectives", []), config["modalities"])
    return build_model({m: shapes[m] for m in mods}, config.get("preset", "tiny"), config.get("architectures") or {},
                       embed_dim=config.get("embed_dim"), linear_components=int(config.get("linear_path", 0)),
                       readouts=readout,
                       # written before the read-out kept cross-fitted values: no buffers for them
                       readout_patients=int(shapes.get("n_train", 0)) if readout and config.get("gene_probe_choice") else 0)


def load_pretrained(directory: str | os.PathLike) -> Pretrained:
    """Open a ``phenoclip pretrain`` checkpoint; other kinds of checkpoint are refused (exit 5)."""
    directory = Path(directory)
    config = read_config_of_kind(directory, "pretrain")
    if "data_shapes" not in config or "modalities" not in config:
        raise InconsistentInputError("config.json does not describe a phenoclip model", directory)
    model = build_checked(directory, lambda: model_from_pretrain_config(config), "a pretrained model")
    load_weights(directory, model, prefix="model.")
    model.eval()
    return Pretrained(directory, config, read_state(directory), model, read_data_stats(directory))


def random_init_like(pre: Pretrained, seed: int, stores: CohortStores | None = None) -> MultimodalModel:
    """The same architecture with fresh random parameters: the 'scratch' baseline.

    It starts where pretraining started, not from less: buffers (variant positions, imputation
    means, the linear paths' principal axes, the HPO vocabulary) are copied from the checkpoint,
    as they describe the data (not the genotype read-out, fitted to the pretrained embeddings),
    and with a phenotype store among ``stores`` the HPO term table gets pretraining's
    ontology-graph initialisation (a fresh draw of it), not a plain random one.
    """
    torch.manual_seed(seed)
    model = model_from_pretrain_config(pre.config)
    params = {n for n, _ in model.named_parameters()}
    # a read-out was fitted to the pretrained embeddings: learned from them, not data, so not copied
    # (unfitted, the scratch model's probe reads its encoder)
    buffers = {k: v for k, v in pre.model.state_dict().items() if k not in params and not k.startswith("readouts.")}
    model.load_state_dict(buffers, strict=False)
    if stores is not None and "hpo" in model.encoders and "hpo" in stores.by_modality:
        hpo = model.encoders["hpo"]
        ontology = stores.by_modality["hpo"].meta["phenotypes"].ontology
        if len(ontology) == hpo.lookup.shape[0]:  # the checkpoint's ontology (same release)
            hpo.init_from_ontology(ontology, hpo.vocab_terms.numpy(), generator=torch.Generator().manual_seed(seed))
    model.eval()
    return model


def expr_stats(pre: Pretrained, stores: CohortStores) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-gene (mean, std) the checkpoint's expression encoder was trained with.

    From ``data_stats.safetensors`` when the checkpoint has it; for older checkpoints from the
    training split's patients in ``stores`` (the same cohort), else from all of the store's
    patients, with a warning.
    """
    if "expr" not in stores.by_modality:
        return None
    if "expr_mean" in pre.data_stats:
        return pre.data_stats["expr_mean"], pre.data_stats["expr_std"]
    ms = stores.by_modality["expr"]
    rows = [ms.row[s] for s in pre.train_samples if s in ms.row]
    if not rows:
        warn(f"{pre.path}: no expression scaling saved and none of its training patients are in {ms.path}; "
             "scaling with this store's own patients")
        rows = list(range(len(ms.samples)))
    ds = MultimodalDataset(stores, [], [])
    values = np.stack([ds.read_row(ms, "values", "values", r) for r in rows]).astype(np.float64)
    return values.mean(axis=0).astype(np.float32), np.maximum(values.std(axis=0), 1e-6).astype(np.float32)


@torch.no_grad()
def embed_samples(model: MultimodalModel, stores: CohortStores, modality: str, samples: Sequence[str],
                  stats: tuple[np.ndarray, np.ndarray] | None = None, batch_size: int = 64,
                  label: str | None = None, readout: bool = False,
                  components: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings (N, E) float32, present (N,) bool) of ``samples`` for one modality.

    Patients the modality's store lacks get a zero row and ``present`` False. ``readout``: what a
    linear probe reads (the modality's fitted read-out where there is one, see
    :meth:`~phenoclip.models.multimodal.MultimodalModel.probe_embedding`) instead of the encoder;
    with ``components`` too, the block ``finetune --mode linear`` reads (``(N, E + k)`` where the
    probe reads principal-component scores, :meth:`~phenoclip.models.multimodal.MultimodalModel.probe_features`).
    """
    model.eval()
    ds = MultimodalDataset(stores, [modality], samples, expr_stats=stats)
    embs, present = [], []
    starts = range(0, len(ds), batch_size)
    for start in track(starts, label or f"embedding {modality}", total=len(starts)):
        batch = collate([ds[i] for i in range(start, min(len(ds), start + batch_size))])
        if readout and components:
            z = model.probe_features(modality, batch[modality])
        else:
            z = model.probe_embedding(modality, batch[modality]) if readout else model.encode(modality, batch[modality])
        ok = batch[modality][PRESENT]
        embs.append(torch.where(ok[:, None], z, torch.zeros_like(z)))
        present.append(ok)
    if not embs:
        width = model.probe_width(modality, components) if readout else model.embed_dim
        return np.zeros((0, width), np.float32), np.zeros(0, bool)
    return torch.cat(embs).numpy().astype(np.float32), torch.cat(present).numpy().astype(bool)
