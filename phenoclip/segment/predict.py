"""``phenoclip segment predict``: lesion masks in each patient's original space, with metrics and overlays.

For every patient of the volumes store: lesion probabilities on the preprocessed grid
(:func:`~phenoclip.segment.run.predict_probabilities`: sliding windows when the grid is
not the model's patch; the fusion model is position-aware, so shifted windows predict less well
than the single pass on the training grid, and a warning says so), thresholded at 0.5, mapped back onto the patient's own voxels with
:func:`phenoclip.preprocess.mri.to_original_space` (nearest neighbour for labels, trilinear for
probabilities) and written with the store's ``original_affine``:

    OUT/<sample>.nii.gz        uint8 labels (1 = lesion), the shape and affine of the input image
    OUT/<sample>_prob.nii.gz   float32 probabilities (with --probabilities)
    OUT/metrics.tsv            Dice and HD95 per patient with a ground-truth mask (on the grid), mean row
    OUT/overlays/<sample>.png  a few patients' slices: image, truth, prediction

The sform/qform codes are copied from the patient's original image when it can be found
(``--manifest``, else the manifest named in the store's recorded command, when it still exists).
The folder is assembled under a temporary name and renamed at the end.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from phenoclip.errors import InconsistentInputError, OutputError, UsageError
from phenoclip.eval.plots import new_figure, save_png
from phenoclip.io.nifti import write_label_volume
from phenoclip.io.tables import read_manifest
from phenoclip.pretrained import read_config_of_kind
from phenoclip.models.multimodal import build_model
from phenoclip.models.segmentation import build_segmenter
from phenoclip.preprocess.mri import row_info, to_original_space
from phenoclip.progress import info, track, warn
from phenoclip.staging import staged_folder
from phenoclip.store_read import open_store
from phenoclip.checkpoint_load import build_checked, load_weights, read_data_stats, split_of
from phenoclip.segment.data import KIND, SegmentData, describe, lesion_metrics, summarise, write_metrics
from phenoclip.segment.inference import predict_probabilities


def load_segmenter(directory: str | os.PathLike) -> tuple[torch.nn.Module, dict, tuple | None]:
    """(model in eval mode, config.json, expression (mean, std) or None) of a ``segment train`` folder."""
    config = read_config_of_kind(directory, KIND)
    def build() -> torch.nn.Module:
        encoders = {}
        if config["decoder"] == "fusion":
            pc = config["pretrain_config"]
            shapes = pc["data_shapes"]
            mm = build_model({m: shapes[m] for m in config["encoders"]}, pc.get("preset", "tiny"),
                             pc.get("architectures") or {}, embed_dim=pc.get("embed_dim"))
            encoders = dict(mm.encoders)
        return build_segmenter(config["decoder"], config["decoder_config"], encoders, use_genes=config["genes"])

    model = build_checked(directory, build, "a segmentation model")
    load_weights(directory, model)
    model.eval()
    stats = read_data_stats(directory)
    return model, config, (stats["expr_mean"], stats["expr_std"]) if "expr_mean" in stats else None


def original_images(data: SegmentData, manifest: str | None) -> dict[str, str]:
    """sample -> the original image path, from ``manifest`` or the store's recorded ``--manifest``."""
    if manifest is None:
        words = shlex.split(data.command) if data.command else []
        given = [words[i + 1] for i, w in enumerate(words[:-1]) if w == "--manifest"]
        if not given or not os.path.isfile(given[0]):
            return {}
        manifest = given[0]
        try:
            entries = read_manifest(manifest, ["image"])
        except Exception:  # a recorded manifest that moved or changed: codes default, no error
            return {}
    else:
        entries = read_manifest(manifest, ["image"])
    return {e.sample: e.paths["image"] for e in entries}


def file_name(sample: str) -> str:
    """A sample ID as a file name (characters other than letters, digits, ``._-`` become ``_``)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", sample)
    return "_" + name if name.startswith(".") else name


def write_probability_volume(path: Path, prob: np.ndarray, affine: np.ndarray, like: str | None = None) -> None:
    """float32 NIfTI of probabilities in [0, 1], atomically, with ``like``'s sform/qform codes."""
    img = nib.Nifti1Image(np.asarray(prob, dtype=np.float32), np.asarray(affine, dtype=np.float64))
    codes = (1, 1)
    if like is not None:
        ref = nib.load(like).header
        codes = (int(ref["sform_code"]) or 1, int(ref["qform_code"]) or 1)
    img.set_sform(affine, code=codes[0])
    img.set_qform(affine, code=codes[1])
    img.header.set_xyzt_units("mm")
    img.header.set_slope_inter(1.0, 0.0)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}.nii.gz"
    try:
        nib.save(img, str(tmp))
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write the probability map ({e.strerror or e})", path) from None


def run_segment_predict(model_dir: str | os.PathLike, images: str, out: str, genes: str | None = None,
                        probabilities: bool = False, manifest: str | None = None, overlays: int = 4,
                        batch_size: int = 4) -> dict:
    """Write the masks (and probabilities, metrics, overlays) of every patient of ``images`` into ``out``."""
    model, config, stats = load_segmenter(model_dir)
    if config["genes"] and not genes:
        raise UsageError(f"{model_dir} was trained with genes: give --genes EXPR.h5")
    if genes and not config["genes"]:
        warn(f"{model_dir} was trained without genes: --genes is ignored")
    data = SegmentData(images, genes if config["genes"] else None)
    if data.in_channels != config["in_channels"]:
        raise InconsistentInputError(f"the store has {data.in_channels} image channel(s), the model "
                                     f"{config['in_channels']}", images)
    samples = data.samples
    if config["genes"]:
        data.expr_stats = stats
        n_genes = model.gene_encoder.tokens.n_genes
        if data.expr.shapes["values"][0] != n_genes:
            raise InconsistentInputError(f"the expression store has {data.expr.shapes['values'][0]} genes, the "
                                         f"model {n_genes}", genes, "preprocess expression as for training")
        lacking = [s for s in samples if not data.has_genes(s)]
        if len(lacking) == len(samples):
            raise InconsistentInputError(f"none of the {len(samples)} patients of {images} is in the expression "
                                         "store", genes, "give the same cohort's stores")
        if lacking:
            warn(f"{len(lacking)} patient(s) have no expression in {genes}: predicted with every gene at its "
                 "training mean")
    patch = tuple(model.patch_shape)
    if data.grid != patch:
        hint = (" (its ViT and gene-informed location are position-aware: windows that see the head shifted predict "
                f"less well than one pass; preprocess with --shape {','.join(map(str, patch))} for the trained "
                "behaviour)" if config["decoder"] == "fusion" else "")
        warn(f"{images}: grid {'x'.join(map(str, data.grid))} differs from the model's "
             f"{'x'.join(map(str, patch))} training patch: sliding-window inference{hint}")
    spacing = config.get("grid_spacing")
    if spacing and not np.allclose(spacing, data.spacing, atol=1e-3):
        warn(f"{images} has {data.spacing} mm voxels, the model was trained on {tuple(spacing)} mm")
    like = original_images(data, manifest)
    with staged_folder(out) as tmp:
        rows = _predict_into(model, data, samples, tmp, like, probabilities, bool(config["genes"]), batch_size)

        split = split_of(model_dir)
        for r in rows:
            r["split"] = split.get(r["sample"], "new")
        figures = []
        if rows:
            write_metrics(tmp / "metrics.tsv", rows)
            figures = write_overlays(model, data, rows, tmp / "overlays", bool(config["genes"]), overlays)
    result = {"patients": len(samples), "with_truth": len(rows), "figures": figures}
    if rows:
        # the model's own training and validation patients score high: report the held-out ones
        held_out = [r for r in rows if r["split"] == "test"]
        result["all"] = summarise(rows)
        if held_out:
            result["test"] = summarise(held_out)
            info(f"{describe(result['test'], 'held-out test patients of the model')} (all {len(rows)} with a "
                 f"mask, training ones included: Dice {result['all']['dice_mean']:.3f}; metrics.tsv has a split "
                 "column)")
        else:
            seen = sum(r["split"] != "new" for r in rows)
            info(describe(result["all"], "patients with a mask" + (f", {seen} of them the model's training or "
                                                                    "validation patients" if seen else "")))
    return result


def _predict_into(model, data: SegmentData, samples: list[str], folder: Path, like: dict[str, str],
                  probabilities: bool, genes: bool, batch_size: int) -> list[dict]:
    truth = set(data.with_masks())
    n_genes = model.gene_encoder.tokens.n_genes if genes else 0
    rows, names = [], set()
    with open_store(data.images_path) as store:
        chunks = [samples[i:i + batch_size] for i in range(0, len(samples), batch_size)]
        for ids in track(chunks, "segmenting", unit="batches"):
            x = torch.from_numpy(np.stack([data.image(s) for s in ids]))
            v = None
            if genes:
                v = torch.from_numpy(np.stack([data.values(s) if data.has_genes(s) else np.zeros(n_genes, np.float32)
                                               for s in ids]))
            prob = predict_probabilities(model, x, v).numpy()
            for i, s in enumerate(ids):
                name = file_name(s)
                if name in names:
                    raise InconsistentInputError(f"two sample IDs give the file name '{name}'", data.images_path)
                names.add(name)
                info_row = row_info(store, data.mri.row[s])
                ref = like.get(s) if like.get(s) and os.path.isfile(like[s]) else None
                labels = to_original_space((prob[i] > 0.5).astype(np.uint8), info_row, order=0)
                write_label_volume(folder / f"{name}.nii.gz", labels, info_row["original_affine"], like=ref)
                if probabilities:
                    p = np.clip(to_original_space(prob[i].astype(np.float32), info_row, order=1), 0.0, 1.0)
                    write_probability_volume(folder / f"{name}_prob.nii.gz", p, info_row["original_affine"], ref)
                if s in truth:
                    rows.append({"sample": s, **lesion_metrics(prob[i] > 0.5, data.mask(s)[0], data.spacing)})
    return rows


def plot_overlay(image: np.ndarray, truth: np.ndarray | None, predicted: np.ndarray, path: Path,
                 title: str = "") -> Path:
    """Three panels on the axial slice (fixed W, the I->S axis) with the largest lesion: the image,
    the truth and the prediction over it. ``image (D, H, W)``; masks binary ``(D, H, W)``."""
    ref = truth if truth is not None and truth.any() else predicted
    k = int(np.argmax(ref.reshape(-1, ref.shape[2]).sum(0))) if ref.any() else image.shape[2] // 2
    panels = [("image", None), ("truth", truth), ("prediction", predicted)] if truth is not None \
        else [("image", None), ("prediction", predicted)]
    fig = new_figure(figsize=(3.2 * len(panels), 3.4))
    for i, (name, mask) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        # D runs L->R, H P->A: transpose so x is horizontal and anterior is up
        ax.imshow(image[:, :, k].T, cmap="gray", origin="lower")
        if mask is not None:
            ax.imshow(np.ma.masked_where(mask[:, :, k].T == 0, mask[:, :, k].T), cmap="autumn", alpha=0.6,
                      origin="lower", vmin=0, vmax=1)
        ax.set_title(f"{name} (axial {k})", fontsize=9)
        for x, y, text in ((0.02, 0.5, "L"), (0.98, 0.5, "R"), (0.5, 0.97, "A")):  # neurological view
            ax.text(x, y, text, transform=ax.transAxes, color="w", fontsize=7, ha="center", va="center")
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)


def overlay_samples(rows: list[dict], n: int = 4) -> list[str]:
    """A few patients to draw: the best, the median and the worst by Dice (and one more)."""
    ranked = sorted(rows, key=lambda r: r["dice"])
    if len(ranked) <= n:
        return [r["sample"] for r in ranked]
    picks = [ranked[-1], ranked[len(ranked) // 2], ranked[0], ranked[len(ranked) // 4]]
    return list(dict.fromkeys(r["sample"] for r in picks))[:n]


def write_overlays(model, data: SegmentData, rows: list[dict], folder: Path, genes: bool, n: int) -> list[str]:
    """PNG overlays of a few patients of ``rows`` (best, median, worst Dice); returns their paths relative
    to ``folder``'s parent."""

    if n <= 0 or not rows:
        return []
    folder.mkdir(exist_ok=True)
    by_sample = {r["sample"]: r for r in rows}
    written = []
    for s in overlay_samples(rows, n):
        x = torch.from_numpy(data.image(s))[None]
        v = torch.from_numpy(data.values(s))[None] if genes and data.has_genes(s) else None
        if genes and v is None:
            v = torch.zeros(1, model.gene_encoder.tokens.n_genes)
        prob = predict_probabilities(model, x, v)[0].numpy()
        title = f"{s}: Dice {by_sample[s]['dice']:.3f}, HD95 {by_sample[s]['hd95_mm']:.1f} mm"
        path = plot_overlay(data.image(s)[0], data.mask(s)[0] > 0, prob > 0.5, folder / f"{file_name(s)}.png", title)
        written.append(f"{folder.name}/{path.name}")
    return written
