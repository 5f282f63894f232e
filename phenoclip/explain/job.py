"""A prepared ``phenoclip explain`` run (:class:`Job`) and its attribution loop.

:meth:`Job.write` attributes the individuals batch by batch and writes each batch's rows into
the attributions store (layout in :mod:`phenoclip.explain.run`) as soon as they exist;
:func:`write_features` adds what the attributed features are (variant table, gene names or
volume geometry). :func:`phenoclip.explain.run.prepare` builds the job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from phenoclip.data.multimodal import CohortStores
from phenoclip.preprocess.mri import row_info
from phenoclip.explain.attribution import DenseEncoder, MethodSettings, attribute_batch
from phenoclip.explain.inputs import input_rows
from phenoclip.progress import Progress
from phenoclip.store_read import open_store
from phenoclip.store_write import create_store


@dataclass
class Job:
    """A prepared run: what the attribution loop needs, and what identifies its numbers."""

    stores: CohortStores
    modality: str
    shape: tuple[int, ...]
    stats: tuple[np.ndarray, np.ndarray] | None
    dense: DenseEncoder
    column_mean: torch.Tensor | None                  # (1, V) imputation of missing dosages
    baseline: torch.Tensor                            # (1, *F)
    baseline_samples: torch.Tensor | None             # (m, *F) for GradientShap
    scorer: nn.Module                                 # (x, *extra) -> (n,)
    extras: Callable[[list[str], torch.Tensor], tuple]
    method: MethodSettings
    per_call: int
    individuals: list[str]
    candidates: list[str]                             # contrastive reference candidates
    identity: dict
    attrs: dict
    left_out: str = ""

    def write(self, path: str, ids: list[str], first: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Attribute ``ids`` batch by batch into a store at ``path``, writing rows as they are computed.

        Returns ``(|delta|, |F(x) - F(baseline)|)`` per individual.
        """
        n = len(ids)
        deltas, change = np.full(n, np.nan), np.full(n, np.nan)
        with create_store(path, "attributions", ids, attrs=self.attrs) as w:
            attr_ds = w.per_sample("attributions", shape=(n, *self.shape), dtype=np.float32)
            cols = {k: w.per_sample(k, shape=(n,), dtype=np.float32)
                    for k in ("delta", "target_value", "baseline_value")}
            w.per_sample("index", np.arange(first, first + n, dtype=np.int64))
            w.array("baseline", self.baseline.numpy().astype(np.float32))
            if self.candidates:
                w.array("reference_samples", list(self.candidates))
            write_features(w, self.stores, self.modality, ids)
            with Progress(f"explain {self.modality} ({self.method.method})", total=n, unit="individuals") as bar:
                for a in range(0, n, self.per_call):
                    rows = slice(a, min(n, a + self.per_call))
                    batch_ids = ids[rows]
                    x = torch.cat(list(input_rows(self.stores, self.modality, batch_ids, self.stats,
                                                  batch=len(batch_ids))))
                    x = self.dense.impute(x, self.column_mean)
                    extra = self.extras(batch_ids, x)
                    # noisy methods draw from torch's generator: one seed per batch of the whole run,
                    # so a part computes its batches exactly as an unsharded run does
                    torch.manual_seed(seed * 1_000_003 + (first + a) // self.per_call)
                    attr, delta = attribute_batch(self.scorer, x, self.baseline, extra, self.method,
                                                  self.baseline_samples)
                    with torch.no_grad():
                        value = self.scorer(x, *extra)
                        base_value = self.scorer(self.baseline.expand_as(x).contiguous(), *extra)
                    attr_ds[rows] = attr.numpy().astype(np.float32)
                    cols["delta"][rows] = delta.numpy()
                    cols["target_value"][rows] = value.numpy()
                    cols["baseline_value"][rows] = base_value.numpy()
                    deltas[rows] = delta.double().abs().numpy()
                    change[rows] = (value - base_value).double().abs().numpy()
                    bar.advance(len(batch_ids))
        return deltas, change


def write_features(w, stores: CohortStores, modality: str, ids: list[str]) -> None:
    """The feature description of an attributions store: variant table, gene names or volume geometry."""
    ms = stores.by_modality[modality]
    if modality == "gene":
        for k, v in ms.meta["variants"].items():
            w.array(f"variants/{k}", list(v) if k != "pos" else np.asarray(v, dtype=np.int64))
    elif modality == "expr":
        w.array("genes", list(ms.meta["genes"]))
    else:
        with open_store(ms.path) as src:
            infos = [row_info(src, ms.row[x]) for x in ids]
            if "spacing" in src:
                w.array("spacing", src["spacing"][...])
        for k, tail, dtype in (("affine", (4, 4), np.float64), ("original_affine", (4, 4), np.float64),
                               ("original_shape", (3,), np.int64)):
            w.per_sample(k, np.array([i[k] for i in infos], dtype=dtype).reshape(len(ids), *tail))
