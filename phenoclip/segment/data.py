"""``phenoclip segment``: the data side shared by ``segment train``, ``segment predict`` and the benchmark.

* :class:`SegmentData` opens the volumes store (and the expression store), checks that masks
  exist and match their images, and reads one patient at a time: image ``(C, D, H, W)``
  float32, mask ``(1, D, H, W)`` float32 in {0, 1} (any nonzero label is lesion), expression
  ``(G,)`` standardised with the statistics the model's gene encoder was trained with.
* :func:`three_way_split`: the patient-level train / validation / test split, seeded.
* :func:`lesion_metrics`: Dice and the 95th-percentile Hausdorff distance (monai), in mm on the
  store's grid.
* :func:`write_metrics`: ``metrics.tsv``.

Model building, training and ``segment train`` as a library function (``run_segment_train``)
are in :mod:`phenoclip.segment.run`; scoring patients in
:mod:`phenoclip.segment.inference`; prediction, the original-space NIfTI output and the
PNG overlays in :mod:`phenoclip.segment.predict`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from phenoclip.data.batch import IMAGES, MASKS, VALUES
from phenoclip.data.multimodal import CohortStores, MultimodalDataset
from phenoclip.errors import InconsistentInputError, MalformedInputError
from phenoclip.progress import warn
from phenoclip.store_read import open_store

#: the checkpoint kind written into config.json (``segment predict`` checks it)
KIND = "segment"


class SegmentData:
    """The volumes store (``--images``) and optionally the expression store (``--genes``) of a cohort."""

    def __init__(self, images: str | os.PathLike, genes: str | os.PathLike | None = None):
        self.images_path, self.genes_path = os.fspath(images), os.fspath(genes) if genes else None
        with open_store(self.images_path, expect="volumes") as s:
            self.has_masks = "masks" in s
            if self.has_masks and s["masks"].shape != s["images"].shape[:1] + (1,) + s["images"].shape[2:]:
                raise InconsistentInputError(
                    f"masks are {'x'.join(map(str, s['masks'].shape[1:]))} but images are "
                    f"{'x'.join(map(str, s['images'].shape[1:]))}: every mask must lie on its image's grid",
                    self.images_path, "re-run phenoclip preprocess mri with the mask column in the manifest")
            self.mask_present = (s["mask_present"][...].astype(bool) if "mask_present" in s
                                 else np.full(len(s.samples), self.has_masks))
            self.spacing = tuple(float(x) for x in np.asarray(s.attrs.get("spacing", (1.0, 1.0, 1.0))))
            self.command = str(s.attrs.get("command", ""))
        if self.genes_path:
            open_store(self.genes_path, expect="expression").close()
        self.stores = CohortStores([self.images_path] + ([self.genes_path] if self.genes_path else []))
        self.mri = self.stores.by_modality["mri"]
        self.expr = self.stores.by_modality.get("expr")
        self.grid = tuple(int(x) for x in self.mri.shapes[IMAGES][1:])
        self.in_channels = int(self.mri.shapes[IMAGES][0])
        self._ds = MultimodalDataset(self.stores, ["mri"], [])
        #: per-gene (mean, std) the gene encoder was trained with; set before reading expression
        self.expr_stats: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def samples(self) -> list[str]:
        """The patients of the volumes store, in store order."""
        return list(self.mri.samples)

    def with_masks(self) -> list[str]:
        return [s for s, ok in zip(self.mri.samples, self.mask_present) if ok] if self.has_masks else []

    def has_genes(self, sample: str) -> bool:
        return self.expr is not None and sample in self.expr.row

    def image(self, sample: str) -> np.ndarray:
        return self._ds.read_row(self.mri, "images", IMAGES, self.mri.row[sample]).astype(np.float32)

    def mask(self, sample: str) -> np.ndarray:
        """``(1, D, H, W)`` float32 in {0, 1}."""
        return (self._ds.read_row(self.mri, "masks", MASKS, self.mri.row[sample]) > 0).astype(np.float32)

    def values(self, sample: str) -> np.ndarray | None:
        """Standardised expression ``(G,)`` or None when the patient has none."""
        if not self.has_genes(sample):
            return None
        if self.expr_stats is None:
            raise ValueError("set expr_stats (the gene encoder's scaling) before reading expression")
        raw = self._ds.read_row(self.expr, "values", VALUES, self.expr.row[sample]).astype(np.float32)
        return ((raw - self.expr_stats[0]) / self.expr_stats[1]).astype(np.float32)

    def require_masks(self) -> list[str]:
        """Patients with a ground-truth mask; none at all is a malformed input for training (exit 4)."""
        if not self.with_masks():
            raise MalformedInputError("no masks: preprocess mri with a mask column in the manifest",
                                      self.images_path)
        return self.with_masks()

    def restrict_to_genes(self, samples: Sequence[str]) -> list[str]:
        """The patients of ``samples`` with expression; none is inconsistent input (exit 5)."""
        kept = [s for s in samples if self.has_genes(s)]
        if not kept:
            raise InconsistentInputError(f"none of the {len(samples)} patients of {self.images_path} is in the "
                                         "expression store", self.genes_path, "give the same cohort's stores")
        if len(kept) < len(samples):
            warn(f"{len(samples) - len(kept)} of {len(samples)} patients have no expression in {self.genes_path} "
                 "and are left out")
        return kept


def three_way_split(samples: Sequence[str], test_fraction: float, val_fraction: float, seed: int,
                    prefer_test: Sequence[str] = ()) -> dict[str, list[str]]:
    """``{"train", "validation", "test"}`` patient lists (store order), reproducible from ``seed``.

    The test split takes ``prefer_test`` patients first (the pretraining run's held-out ones, so
    the test images were never seen by the encoders), then random others; validation is drawn
    at random from the rest.
    """
    samples = list(samples)
    rng = np.random.default_rng(seed)
    n_test = max(1, int(round(test_fraction * len(samples))))
    n_val = max(1, int(round(val_fraction * len(samples))))
    if len(samples) - n_test - n_val < 2:
        raise InconsistentInputError(f"{len(samples)} patients with masks are too few to split into train, "
                                     "validation and test", hint="segmentation needs at least 4 patients")
    preferred = set(prefer_test)
    first = rng.permutation([s for s in samples if s in preferred]).tolist()
    rest = rng.permutation([s for s in samples if s not in preferred]).tolist()
    order = first + rest
    test = set(order[:n_test])
    remaining = [s for s in samples if s not in test]
    val = set(rng.permutation(remaining)[:n_val].tolist())
    return {"train": [s for s in samples if s not in test and s not in val],
            "validation": [s for s in samples if s in val], "test": [s for s in samples if s in test]}


def lesion_metrics(predicted: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Dice and HD95 (mm) of two binary volumes ``(D, H, W)`` (monai ``DiceMetric``, ``HausdorffDistanceMetric``).

    Both empty: Dice 1, HD95 0. One empty: Dice 0 and HD95 the volume's diagonal in mm (the
    distance is undefined; the largest possible one keeps means finite and penalises a miss).
    """
    # imported here: monai takes seconds to import; only scoring needs it, not reading the data (SegmentData)
    from monai.metrics import DiceMetric, HausdorffDistanceMetric

    p = torch.as_tensor(np.asarray(predicted) > 0, dtype=torch.float32)[None, None]
    t = torch.as_tensor(np.asarray(truth) > 0, dtype=torch.float32)[None, None]
    dice = float(DiceMetric(include_background=True, reduction="none", ignore_empty=False)(p, t)[0, 0])
    n_pred, n_true = int(p.sum()), int(t.sum())
    if n_pred == 0 and n_true == 0:
        hd = 0.0
    elif n_pred == 0 or n_true == 0:
        hd = float(np.linalg.norm(np.asarray(p.shape[2:]) * np.asarray(spacing)))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hd = float(HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")(
                p, t, spacing=list(spacing))[0, 0])
    return {"dice": dice, "hd95_mm": hd, "truth_voxels": n_true, "predicted_voxels": n_pred}


def summarise(rows: list[dict]) -> dict[str, float]:
    """Mean and SD of each metric over patients.

    Also ``n_empty`` (patients with a lesion whose prediction is empty: their HD95 is the volume
    diagonal, which the mean includes) and ``hd95_mm_nonempty_mean`` (HD95 over the patients
    where truth and prediction both have voxels), so a mean HD95 made of misses can be told apart.
    """
    out: dict[str, float] = {"n": len(rows)}
    for key in ("dice", "hd95_mm", "truth_voxels", "predicted_voxels"):
        v = np.array([r[key] for r in rows], dtype=np.float64)
        out[f"{key}_mean"] = float(v.mean()) if len(v) else float("nan")
        out[f"{key}_sd"] = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
    both = [r["hd95_mm"] for r in rows if r["truth_voxels"] > 0 and r["predicted_voxels"] > 0]
    out["n_empty"] = sum(1 for r in rows if r["truth_voxels"] > 0 and r["predicted_voxels"] == 0)
    out["n_hd95_nonempty"] = len(both)
    out["hd95_mm_nonempty_mean"] = float(np.mean(both)) if both else float("nan")
    return out


def describe(summary: dict, what: str) -> str:
    """One line of a :func:`summarise` result: Dice, HD95, and the empty predictions inside HD95."""
    text = (f"Dice {summary['dice_mean']:.3f} ± {summary['dice_sd']:.3f}, HD95 {summary['hd95_mm_mean']:.2f} mm "
            f"over {summary['n']} {what}")
    if summary.get("n_empty"):
        text += (f"; {summary['n_empty']} prediction(s) empty where there is a lesion (HD95 counted as the volume "
                 f"diagonal); HD95 over the {summary['n_hd95_nonempty']} non-empty: "
                 f"{summary['hd95_mm_nonempty_mean']:.2f} mm")
    return text


def write_metrics(path: Path, rows: list[dict]) -> None:
    """``metrics.tsv``: one row per patient (with its ``split`` when rows carry one), then a ``mean``
    row (over the ``test`` rows when there are any: the held-out patients)."""
    cols = ["sample", "dice", "hd95_mm", "truth_voxels", "predicted_voxels"]
    split = any("split" in r for r in rows)
    held_out = [r for r in rows if r.get("split") == "test"]
    s = summarise(held_out or rows)
    mean = {"sample": "mean", "split": "test" if held_out else "all", **{c: s[f"{c}_mean"] for c in cols[1:]}}
    if split:
        cols.append("split")
    lines = ["\t".join(cols)]
    for r in [*rows, mean]:
        lines.append("\t".join(str(r.get(c, "new")) if c in ("sample", "split") else f"{float(r[c]):.6g}"
                               for c in cols))
    path.write_text("\n".join(lines) + "\n")
