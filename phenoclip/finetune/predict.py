"""``phenoclip finetune predict``: score new patients with a fine-tuned model directory.

Output TSV columns: ``sample``, ``predicted`` (class name or value), one ``prob_<class>``
column per class for classification, and ``modalities`` (those the patient had). Patients
with none of the model's modalities in the given stores are left out, with a warning.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from phenoclip.data.multimodal import CohortStores, MultimodalDataset
from phenoclip.errors import InconsistentInputError
from phenoclip.pretrained import model_from_pretrain_config, read_config_of_kind
from phenoclip.models.finetune import FinetuneModel
from phenoclip.models.linear_path import PROBE_COMPONENTS
from phenoclip.progress import info, warn
from phenoclip.staging import write_text_atomic
from phenoclip.checkpoint_load import build_checked, load_weights, read_data_stats, split_of
from phenoclip.finetune.heads import predict_scores


def load_finetuned(directory: str | os.PathLike) -> tuple[FinetuneModel, dict]:
    """(model in eval mode, config.json) of a ``phenoclip finetune`` output folder."""
    directory = Path(directory)
    config = read_config_of_kind(directory, "finetune")
    components = list(config.get("probe_components") or ())  # absent before they existed
    # what each component block read when it was fitted (not recorded by earlier versions, whose
    # signal block was the two paths side by side): a head fitted on another block cannot be reused
    kinds = config.get("probe_kinds") or {m: "paths" for m in components if m == "signal"}
    stale = [m for m in components if m in kinds and kinds[m] != PROBE_COMPONENTS.get(m)]
    if stale:
        raise InconsistentInputError(
            f"{directory}: its linear head was fitted on another {', '.join(stale)} block ({kinds[stale[0]]}) than "
            f"this phenoclip's probe reads ({PROBE_COMPONENTS.get(stale[0])}); fit it again with `phenoclip finetune`")

    def build() -> FinetuneModel:
        model = model_from_pretrain_config(config["pretrain_config"])
        readout = model.readouts["gene"] if "gene" in model.readouts else None
        if "gene" in components and readout is not None and not readout.fitted.is_meta:
            # the gene block's width is the read-out's count of eQTL SNPs: in its weights (on the meta device
            # of the size check, the widest it could be)
            load_weights(directory, model, prefix="model.")
        return FinetuneModel(model, config["modalities"], config["fusion"], int(config["n_outputs"]),
                             readout=config.get("mode") == "linear",
                             components=components)

    ft = build_checked(directory, build, "a fine-tuned model")
    load_weights(directory, ft)
    ft.eval()
    return ft, config


def run_predict(model_dir: str | os.PathLike, data: list[str], out: str) -> int:
    """Write predictions for every patient of ``data`` with at least one modality; return the count."""
    ft, config = load_finetuned(model_dir)
    stores = CohortStores(data)
    mods = [m for m in ft.modalities if m in stores.by_modality]
    if not mods:
        raise InconsistentInputError(f"no --data store holds a modality of the model ({', '.join(ft.modalities)}); "
                                     f"stores give {', '.join(stores.modalities)}", model_dir)
    held_out = _held_out_by_modalities(model_dir)
    metric = "accuracy" if config["task"] != "regression" else "r2"
    absent = [m for m in ft.modalities if m not in mods]
    if absent:
        here, full = held_out.get(",".join(mods), {}), held_out.get(",".join(ft.modalities), {})
        expected = (f"; held-out {metric} with these modalities {here[metric]:.2f} ({full[metric]:.2f} with all "
                    f"{len(ft.modalities)}), see the {metric} column") if metric in here and metric in full else ""
        warn(f"no store for {', '.join(absent)}: predicting from {', '.join(mods)} only{expected}")
    samples = [s for s in stores.samples if any(stores.present(m, [s])[0] for m in mods)]
    skipped = len(stores.samples) - len(samples)
    if skipped:
        warn(f"{skipped} patient(s) have none of the model's modalities and are left out")
    stats = read_data_stats(model_dir)
    expr = (stats["expr_mean"], stats["expr_std"]) if "expr_mean" in stats else None
    ds = MultimodalDataset(stores, mods, samples, expr_stats=expr)
    classification = config["task"] != "regression"
    scores = predict_scores(ft, ds, classification)
    present = {m: stores.present(m, samples) for m in mods}
    classes = config.get("classes") or []
    # train (fitted on), test (held out, scored in metrics.json), unused (labelled, outside the fit)
    split = split_of(model_dir, rename={"pool": "unused"}, precedence=("pool", "train", "test"))
    header = (["sample", "predicted"] + [f"prob_{c}" for c in classes]
              + ["modalities", "split", f"held_out_{metric}"])
    lines = ["\t".join(header)]
    for i, s in enumerate(samples):
        have = ",".join(m for m in mods if present[m][i])
        expected = held_out.get(have, {}).get(metric)
        tail = [have, split.get(s, "new"), "NA" if expected is None else f"{expected:.3f}"]
        if classification:
            row = [s, classes[int(np.argmax(scores[i]))]] + [f"{p:.6g}" for p in scores[i]] + tail
        else:
            row = [s, f"{scores[i]:.6g}"] + tail
        lines.append("\t".join(row))
    text = "\n".join(lines) + "\n"
    if out == "-":
        sys.stdout.write(text)
    else:
        write_text_atomic(out, text)
    info(f"predicted {len(samples)} patient(s) with {config['column']!r} model ({config['task']})")
    return len(samples)


def _held_out_by_modalities(model_dir: str | os.PathLike) -> dict[str, dict]:
    """``metrics.json``'s held-out metrics per modality subset ({} for models fitted before them)."""
    path = Path(model_dir) / "metrics.json"
    try:
        rows = json.loads(path.read_text()).get("held_out_by_modalities", [])
    except (OSError, ValueError):
        return {}
    return {r["modalities"]: r for r in rows if isinstance(r, dict) and "modalities" in r}
