"""What an explain run reads: the checkpoint, the stores' individuals and inputs, the baseline.

Inputs are in the encoder's input space (see :data:`INPUT_SPACE`): ALT dosages (missing calls
imputed with the training mean, as the dosage MLP does), expression standardised with the
checkpoint's statistics, z-scored volumes on the preprocessed grid.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from phenoclip.data.multimodal import CohortStores, MultimodalDataset, collate
from phenoclip.errors import InconsistentInputError, UsageError
from phenoclip.finetune.predict import load_finetuned
from phenoclip.io.tables import read_id_list
from phenoclip.pretrained import Pretrained, checkpoint_kind, load_pretrained
from phenoclip.explain.attribution import INPUT_KEY, DenseEncoder
from phenoclip.progress import warn
from phenoclip.store_read import open_store
from phenoclip.store_schema import SCHEMA_MODALITY
from phenoclip.checkpoint_load import read_config, read_data_stats, read_state

#: rows (individuals x steps) of one forward/backward pass are sized to about this many bytes
AUTO_BATCH_BYTES = 256 << 20
#: rows of a --baseline store that GradientShap draws its baselines from
BASELINE_SAMPLES = 64
INPUT_SPACE = {"gene": "ALT dosage 0/1/2, missing calls imputed with the training mean",
               "expr": "expression standardised per gene with the checkpoint's training statistics",
               "mri": "z-scored intensities on the preprocessed RAS grid"}


def open_checkpoint(path: str | os.PathLike) -> tuple[str, Pretrained, object | None, dict]:
    """``(kind, pretrained view, fine-tuned model or None, fine-tune config)`` of a checkpoint folder."""
    kind = checkpoint_kind(read_config(path))
    if kind == "pretrain":
        return kind, load_pretrained(path), None, {}
    if kind == "finetune":
        ft, config = load_finetuned(path)
        pre = Pretrained(Path(path), config["pretrain_config"], read_state(path), ft.model,
                         read_data_stats(path))
        for p in ft.parameters():
            p.requires_grad_(False)
        return kind, pre, ft, config
    raise InconsistentInputError(f"explain reads pretrain or finetune checkpoints, not a {kind} one", path)


def store_modality(path: str) -> str:
    """The modality a store provides (from its schema); exit 5 for a store that is no model input."""
    with open_store(path) as s:
        m = SCHEMA_MODALITY.get(s.schema)
    if m is None:
        raise InconsistentInputError(f"a {s.schema} store holds no model input", path,
                                     "give a store written by phenoclip preprocess")
    return m


def select_individuals(stores: CohortStores, modality: str, samples: str | None, data: str) -> list[str]:
    """The ``--data`` store's individuals (store order), restricted to ``--samples`` (a file or a comma list)."""
    ms = stores.by_modality[modality]
    if samples is None:
        return list(ms.samples)
    if os.path.exists(samples):
        wanted = read_id_list(samples)
    else:
        wanted = [x.strip() for x in samples.split(",") if x.strip()]
    unknown = [x for x in wanted if x not in ms.row]
    if unknown:
        raise InconsistentInputError(f"{len(unknown)} of the {len(wanted)} --samples are not in this store "
                                     f"(first: {unknown[0]})", data)
    keep = set(wanted)
    return [x for x in ms.samples if x in keep]


def input_rows(stores: CohortStores, modality: str, samples: list[str], stats, batch: int = 64):
    """Dense input rows of ``samples`` in blocks (torch float32, missing dosages still -1)."""
    ds = MultimodalDataset(stores, [modality], samples, expr_stats=stats)
    key = INPUT_KEY[modality]
    for a in range(0, len(ds), batch):
        yield collate([ds[i] for i in range(a, min(len(ds), a + batch))])[modality][key]


def input_mean(stores: CohortStores, modality: str, samples: list[str], stats) -> torch.Tensor:
    """``(1, *F)`` mean input over ``samples`` (dosages: over called genotypes; 1 where none is)."""
    total = count = None
    for x in input_rows(stores, modality, samples, stats):
        x = x.double()
        ok = (x >= 0).double() if modality == "gene" else torch.ones_like(x)
        part, n = (x * ok).sum(0), ok.sum(0)
        total, count = (part, n) if total is None else (total + part, count + n)
    mean = torch.where(count > 0, total / count.clamp(min=1), torch.ones_like(total) if modality == "gene"
                       else torch.zeros_like(total))
    return mean.float()[None]


def train_samples_in(pre: Pretrained, stores: CohortStores, modality: str) -> list[str]:
    """The checkpoint's training individuals in the modality's store (all of them, with a warning, if none)."""
    ms = stores.by_modality[modality]
    train = [s for s in pre.train_samples if s in ms.row]
    if not train:
        warn(f"none of the checkpoint's training individuals are in {ms.path}: the mean input is taken over "
             "all of its individuals")
        train = list(ms.samples)
    return train


def baseline_from_store(path: str, modality: str, stores: CohortStores, stats, impute_mean: torch.Tensor | None,
                        seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean (1, *F), samples (m, *F))`` of a ``--baseline REF.h5`` store of the same modality and features."""
    ref_modality = store_modality(path)
    data_ms = stores.by_modality[modality]
    if ref_modality != modality:
        raise InconsistentInputError(f"the baseline store holds {ref_modality}, the --data store {modality}", path,
                                     "give a store of the same modality and features, zeros or mean")
    ref = CohortStores([path])
    ms = ref.by_modality[modality]
    key = INPUT_KEY[modality]
    if ms.shapes[key] != data_ms.shapes[key]:
        raise InconsistentInputError(f"baseline features have shape {'x'.join(map(str, ms.shapes[key]))}, "
                                     f"the --data store's {'x'.join(map(str, data_ms.shapes[key]))}", path,
                                     "give a store of the same features, zeros or mean")
    if modality == "gene" and list(ms.meta["variants"]["id"]) != list(data_ms.meta["variants"]["id"]):
        raise InconsistentInputError("baseline variants differ from the --data store's (same count, other IDs "
                                     "or order)", path)
    if modality == "expr" and ms.meta["genes"] != data_ms.meta["genes"]:
        raise InconsistentInputError("baseline genes differ from the --data store's", path)
    mean = input_mean(ref, modality, list(ms.samples), stats)
    rng = np.random.default_rng(seed)
    pick = sorted(rng.permutation(len(ms.samples))[:BASELINE_SAMPLES].tolist())
    rows = torch.cat(list(input_rows(ref, modality, [ms.samples[i] for i in pick], stats)))
    if modality == "gene":
        rows = torch.where(rows < 0, impute_mean if impute_mean is not None else mean, rows)
    return mean, rows


def resolve_baseline(spec: str, seed: int, stores: CohortStores, modality: str, shape: tuple[int, ...], stats,
                     column_mean: torch.Tensor | None, pre: Pretrained, train: list[str] | None):
    """``(baseline (1, *F), GradientShap samples or None, description)``."""
    if spec == "zeros":
        return torch.zeros((1, *shape)), None, "zeros"
    if spec == "mean":
        if modality == "gene" and column_mean is not None:
            return column_mean.clone(), None, "mean (training split)"
        train = train or train_samples_in(pre, stores, modality)
        return input_mean(stores, modality, train, stats), None, "mean (training split)"
    if not spec.endswith((".h5", ".hdf5")) and not os.path.exists(spec):
        raise UsageError(f"--baseline must be zeros, mean or a store (REF.h5), got '{spec}'")
    mean, samples = baseline_from_store(spec, modality, stores, stats, column_mean, seed)
    return mean, samples, (f"store {os.path.basename(spec)}: the mean input of its individuals (gradientshap: "
                           f"{samples.shape[0]} of them as baseline samples)")


def auto_internal_batch_size(dense: DenseEncoder, shape: tuple[int, ...]) -> int:
    """Rows per pass so that inputs, gradients and activations stay near :data:`AUTO_BATCH_BYTES`."""
    elems = int(np.prod(shape))
    per_row = elems * 4 * 8
    enc = dense.model_encoder
    tokens, width = getattr(enc, "n_tokens", 1), getattr(enc, "width", 64)
    depth = int(getattr(enc, "config", {}).get("depth", 1))
    per_row += tokens * width * 4 * 16 * depth
    if dense.variant_tokens:
        per_row += elems * 4 * 5 * 3          # hat weights over the dosage classes
    return int(min(512, max(8, AUTO_BATCH_BYTES // per_row)))
