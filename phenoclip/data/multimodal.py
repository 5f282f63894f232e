"""Torch datasets over phenoclip stores, joined on sample ID, with per-modality presence masks.

:class:`CohortStores` opens the stores a user names, tells which modality each holds (from its
schema), and joins them: the cohort is the union of their samples, in first-seen order. A
patient missing from a store has that modality absent (``PRESENT`` False, zero-filled row), as
ContIG handles individuals with missing modalities.

Small stores (the sample cohort, anything under ``max_memory_bytes``) are read into memory once,
so the training loop never waits on HDF5 decompression; larger ones are read one sample at a
time, opening the file lazily in each worker (h5py handles must not cross a fork).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from phenoclip.data.batch import (DOSAGE, IMAGES, MASKS, PRESENT, SAMPLE_IDS, SIGNALS, TERMS,
                                  VALUES)
from phenoclip.errors import InconsistentInputError, MalformedInputError, UsageError
from phenoclip.preprocess.phenotypes import read_phenotype_store
from phenoclip.store_read import open_store
from phenoclip.store_schema import SCHEMA_MODALITY

#: per modality: store dataset name -> batch key
_FIELDS = {
    "gene": {"dosage": DOSAGE},
    "expr": {"values": VALUES},
    "mri": {"images": IMAGES},
    "signal": {"signals": SIGNALS},
}


@dataclass
class ModalityStore:
    """One store and what it provides."""

    modality: str
    path: str
    samples: list[str]
    row: dict[str, int]
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    cache: dict[str, np.ndarray] | None = None


def _check_finite(ms: ModalityStore, name: str, values: np.ndarray, rows: np.ndarray) -> None:
    """Refuse NaN and infinity in a float dataset (a model would turn them into NaN scores),
    naming the first sample that has one."""
    if values.dtype.kind != "f":
        return
    bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if bad.any():
        sample = ms.samples[int(rows[np.argmax(bad)])]
        raise MalformedInputError(f"{name} of sample '{sample}' holds NaN or infinite values "
                                  f"({int(bad.sum())} sample(s) affected)", ms.path,
                                  "re-create the store with phenoclip preprocess, which refuses them")


class CohortStores:
    """The stores of one cohort, keyed by modality, and the joined sample list."""

    def __init__(self, paths: Sequence[str | os.PathLike], max_memory_bytes: int = 2 << 30):
        self.by_modality: dict[str, ModalityStore] = {}
        order: dict[str, None] = {}
        for p in paths:
            p = os.fspath(p)
            with open_store(p) as s:
                modality = SCHEMA_MODALITY.get(s.schema)
                if modality is None:
                    raise InconsistentInputError(f"a {s.schema} store is not a training input", p,
                                                 "give stores written by phenoclip preprocess")
                if modality in self.by_modality:
                    raise UsageError(f"two stores provide '{modality}': {self.by_modality[modality].path} and {p}")
                ms = ModalityStore(modality, p, s.samples, {x: i for i, x in enumerate(s.samples)})
                self._describe(ms, s)
                if self._nbytes(s, ms) <= max_memory_bytes:
                    ms.cache = self._load_all(s, ms)
                self.by_modality[modality] = ms
                for x in s.samples:
                    order.setdefault(x, None)
        self.samples: list[str] = list(order)

    @staticmethod
    def _describe(ms: ModalityStore, s) -> None:
        if ms.modality == "hpo":
            data = read_phenotype_store(ms.path)
            ms.meta["phenotypes"] = data
            ms.shapes[TERMS] = (max((len(t) for t in data.terms), default=0),)
            return
        for name, key in _FIELDS[ms.modality].items():
            ms.shapes[key] = tuple(s[name].shape[1:])
        if ms.modality == "gene":
            ms.meta["variants"] = {k: (s.strings(f"variants/{k}") if k in ("chrom", "id", "ref", "alt")
                                       else s[f"variants/{k}"][...]) for k in ("chrom", "pos", "id", "ref", "alt")}
            ms.meta["phased"] = bool(s.attrs.get("phased", False)) and "haplotypes" in s
        elif ms.modality == "expr":
            ms.meta["genes"] = s.strings("genes")
        elif ms.modality == "mri":
            ms.meta["has_masks"] = "masks" in s
        elif ms.modality == "signal":
            ms.meta["channels"] = s.strings("channels")
            ms.meta["sampling_rate"] = float(s.attrs["sampling_rate"])

    @staticmethod
    def _nbytes(s, ms: ModalityStore) -> int:
        if ms.modality == "hpo":
            return 0
        return sum(int(np.prod(s[name].shape)) * s[name].dtype.itemsize for name in _FIELDS[ms.modality])

    @staticmethod
    def _load_all(s, ms: ModalityStore) -> dict[str, np.ndarray]:
        if ms.modality == "hpo":
            return {}
        out = {key: s[name][...] for name, key in _FIELDS[ms.modality].items()}
        for name, key in _FIELDS[ms.modality].items():
            _check_finite(ms, name, out[key], np.arange(len(out[key])))
        if ms.modality == "mri" and "masks" in s:
            out[MASKS] = s["masks"][...]
        return out

    @property
    def modalities(self) -> list[str]:
        return list(self.by_modality)

    def present(self, modality: str, samples: Sequence[str] | None = None) -> np.ndarray:
        """(n,) bool: which of ``samples`` (default: all) the modality's store holds."""
        ms = self.by_modality[modality]
        return np.array([x in ms.row for x in (samples or self.samples)], dtype=bool)

    def require(self, modalities: Sequence[str]) -> None:
        """Check every named modality has a store and that the stores share patients."""
        for m in modalities:
            if m not in self.by_modality:
                given = ", ".join(f"{ms.modality} ({os.path.basename(ms.path)})" for ms in self.by_modality.values())
                raise InconsistentInputError(f"modality '{m}' was named but no --data store provides it; "
                                             f"stores given: {given or 'none'}")
        if len(modalities) >= 2:
            sets = [set(self.by_modality[m].samples) for m in modalities]
            counts = {}
            for x in self.samples:
                k = sum(x in s for s in sets)
                counts[k] = counts.get(k, 0) + 1
            if sum(v for k, v in counts.items() if k >= 2) == 0:
                names = ", ".join(self.by_modality[m].path for m in modalities)
                raise InconsistentInputError(f"the stores share no patients ({names})",
                                             hint="check that sample IDs match across files")


class MultimodalDataset(Dataset):
    """Per-patient dicts of tensors for ``modalities``; :func:`collate` makes the batch dict.

    Expression values are standardised per gene with the statistics of ``stats_samples`` (the
    training split), so held-out patients never leak into the normalisation.
    """

    def __init__(self, stores: CohortStores, modalities: Sequence[str], samples: Sequence[str],
                 stats_samples: Sequence[str] | None = None,
                 expr_stats: tuple[np.ndarray, np.ndarray] | None = None):
        self.stores = stores
        self.modalities = list(modalities)
        self.samples = list(samples)
        self._handles: dict[str, object] = {}
        self.expr_mean = self.expr_std = None
        if "expr" in self.modalities:
            # given statistics (from a checkpoint) win: a model sees data scaled as in training
            self.expr_mean, self.expr_std = expr_stats if expr_stats is not None \
                else self._expr_stats(stats_samples or samples)

    def _expr_stats(self, samples: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        ms = self.stores.by_modality["expr"]
        rows = [ms.row[x] for x in samples if x in ms.row]
        values = np.stack([self.read_row(ms, "values", VALUES, r) for r in rows])
        return values.mean(axis=0), np.maximum(values.std(axis=0), 1e-6)

    def read_row(self, ms: ModalityStore, name: str, key: str, row: int) -> np.ndarray:
        """Row ``row`` of store dataset ``name`` (from the in-memory cache when the store is small)."""
        if ms.cache is not None:
            return ms.cache[key][row]
        h = self._handles.get(ms.path)
        if h is None:  # opened lazily per process: h5py handles must not be shared across a fork
            h = self._handles[ms.path] = open_store(ms.path)
        out = h[name][row]
        _check_finite(ms, name, out[None], np.array([row]))
        return out

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        sample = self.samples[i]
        item: dict = {SAMPLE_IDS: sample}
        for m in self.modalities:
            ms = self.stores.by_modality[m]
            row = ms.row.get(sample)
            item[m] = self._item(m, ms, row)
        return item

    def _item(self, m: str, ms: ModalityStore, row: int | None) -> dict:
        present = row is not None
        out: dict = {PRESENT: torch.tensor(present)}
        if m == "hpo":
            terms = ms.meta["phenotypes"].terms[row] if present else np.zeros(0, np.int64)
            width = max(1, ms.shapes[TERMS][0])
            padded = np.full(width, -1, dtype=np.int64)
            padded[: len(terms)] = terms
            out[TERMS] = torch.from_numpy(padded)
            return out
        for name, key in _FIELDS[m].items():
            shape = ms.shapes[key]
            if not present:
                out[key] = torch.zeros(shape, dtype=torch.float32)
                continue
            arr = self.read_row(ms, name, key, row).astype(np.float32)
            if m == "expr":
                arr = (arr - self.expr_mean) / self.expr_std
            out[key] = torch.from_numpy(np.ascontiguousarray(arr))
        if m == "mri" and ms.meta.get("has_masks") and ms.cache is not None:
            out[MASKS] = torch.from_numpy(ms.cache[MASKS][row].astype(np.float32)) if present \
                else torch.zeros(ms.shapes[IMAGES], dtype=torch.float32)
        return out


def collate(items: list[dict]) -> dict:
    """Stack per-patient dicts into the batch dict of :mod:`phenoclip.data.batch`."""
    batch: dict = {SAMPLE_IDS: [it[SAMPLE_IDS] for it in items]}
    for key in items[0]:
        if key == SAMPLE_IDS:
            continue
        batch[key] = {k: torch.stack([it[key][k] for it in items]) for k in items[0][key]}
    return batch


def split_patients(samples: Sequence[str], fraction: float, seed: int,
                   stratify: Sequence | None = None) -> tuple[list[str], list[str]]:
    """A patient-level (train, held-out) split, reproducible from ``seed``; stratified when labels are given."""
    if not 0 < fraction < 1:
        raise UsageError(f"split fraction must be between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    samples = list(samples)
    groups: dict = {}
    for i, s in enumerate(samples):
        groups.setdefault(None if stratify is None else stratify[i], []).append(s)
    held: set[str] = set()
    for members in groups.values():
        n = int(round(len(members) * fraction))
        held.update(rng.permutation(members)[:n].tolist())
    return [s for s in samples if s not in held], [s for s in samples if s in held]
