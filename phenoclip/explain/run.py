"""``phenoclip explain`` as a library function: checkpoint + stores in, attributions out.

Steps: open the checkpoint (pretrain: ``contrastive`` target; finetune: ``model`` target) ->
join the ``--data`` store of the explained modality with the ``--reference`` store of the other
modality (or the ``--with`` stores a fine-tuned model also reads) -> choose the individuals and,
for the contrastive target, a fixed reference set -> baseline -> attribute the individuals in
batches with captum, writing each batch's rows to the store as soon as they exist -> summary
table and plots (:mod:`phenoclip.explain.outputs`).

Store layout (schema ``attributions`` v1), N individuals, feature shape F::

    samples            str (N,)
    attributions       float32 (N, *F)   gene: (N, V) per variant column; expr: (N, G);
                                         mri: (N, C, D, H, W) on the preprocessed grid
    delta              float32 (N,)      convergence delta sum(attr) - (F(x) - F(baseline));
                                         NaN for saliency
    target_value       float32 (N,)      F(x): the explained output at the input
    baseline_value     float32 (N,)      F(baseline)
    index              int64 (N,)        position among the run's individuals (parts, merge)
    baseline           float32 (1, *F)   the baseline input
    variants/{chrom,pos,id,ref,alt}      gene: the genotype store's variant table
    genes              str (G,)          expr
    affine, original_affine (N, 4, 4), original_shape (N, 3)     mri: to map volumes back
    reference_samples  str (M,)          contrastive: the reference candidates
    root attrs: modality, method, target, baseline, steps, checkpoint, data, reference,
                fingerprint, run_settings (JSON), input_space, sign; part, num_parts in parts

Inputs are in the encoder's input space (:data:`phenoclip.explain.inputs.INPUT_SPACE`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from phenoclip.data.multimodal import CohortStores
from phenoclip.errors import InconsistentInputError, UsageError, require_writable_parent
from phenoclip.io.annotations import read_gene_annotation
from phenoclip.pretrained import expr_stats
from phenoclip.explain import shards
from phenoclip.explain.attribution import INPUT_KEY, METHODS, DenseEncoder, MethodSettings
from phenoclip.explain.convergence import delta_summary, warn_if_not_converged
from phenoclip.explain.job import Job
from phenoclip.explain.outputs import finalise
from phenoclip.explain.inputs import (INPUT_SPACE, auto_internal_batch_size, input_mean, open_checkpoint,
                                      resolve_baseline, select_individuals, store_modality, train_samples_in)
from phenoclip.explain.targets import contrastive_target, model_target
from phenoclip.progress import info, warn
from phenoclip.store_read import open_store
from phenoclip.store_schema import SCHEMA_MODALITY
from phenoclip.checkpoint_files import CONFIG_FILE, MODEL_FILE

TARGETS = ("contrastive", "model")
SIGN = {"contrastive": "positive attribution raises the contrastive loss (pulls the individual away from their "
                       "own other-modality embedding); rank by mean_abs_attr",
        "model": "positive attribution raises the explained logit or predicted value"}


@dataclass
class ExplainSettings:
    """What ``phenoclip explain`` was asked to do (built by the CLI, never its namespace)."""

    checkpoint: str
    data: str
    out: str
    modality: str | None = None
    method: str = "ig"
    target: str | None = None
    reference: str | None = None
    with_stores: list[str] = field(default_factory=list)
    samples: str | None = None
    reference_size: int | None = None   # None: DEFAULT_REFERENCE_SIZE, capped at what the cohort allows
    baseline: str = "mean"
    steps: int = 50
    internal_batch_size: int | None = None
    batch_size: int = 16
    nt_samples: int = 10
    noise_std: float = 0.1
    class_name: str | None = None
    part: int | None = None
    num_parts: int | None = None
    genes: str | None = None
    gene_window: int = 0
    volumes: bool = True
    top: int = 10
    seed: int = 0

    def validate(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"unknown --method '{self.method}': use {', '.join(METHODS)}")
        if self.target is not None and self.target not in TARGETS:
            raise UsageError(f"unknown --target '{self.target}': use {' or '.join(TARGETS)}")
        shards.check_part(self.part, self.num_parts)
        for name in ("steps", "reference_size", "batch_size", "nt_samples"):
            value = getattr(self, name)
            if value is not None and value < (2 if name == "steps" else 1):
                raise UsageError(f"--{name.replace('_', '-')} must be at least {2 if name == 'steps' else 1}")
        if self.internal_batch_size is not None and self.internal_batch_size < 1:
            raise UsageError("--internal-batch-size must be at least 1")
        if self.modality is not None and self.modality not in SCHEMA_MODALITY.values():
            raise UsageError(f"unknown --modality '{self.modality}': use {', '.join(INPUT_KEY)}")


# ----------------------------------------------------------------------------- the run

def prepare(s: ExplainSettings) -> Job:
    """Check the inputs against each other and build everything but the attributions (no output yet)."""
    s.validate()
    require_writable_parent(s.out + ".h5")
    kind, pre, ft, ft_config = open_checkpoint(s.checkpoint)
    target = s.target or ("model" if kind == "finetune" else "contrastive")
    modality = store_modality(s.data)
    if s.modality is not None and s.modality != modality:
        raise InconsistentInputError(f"this store holds {modality}, not --modality {s.modality}", s.data)
    if modality not in INPUT_KEY:
        raise UsageError(f"explain attributes {', '.join(INPUT_KEY)} inputs, not {modality}")
    if s.genes is not None and modality != "gene":
        raise UsageError("--genes aggregates variant attributions: it needs --modality gene")
    pre.require(modality)
    model = pre.model
    for p in model.parameters():
        p.requires_grad_(False)
    ref_modality = None
    if target == "contrastive":
        if s.reference is None:
            raise UsageError("--target contrastive needs --reference STORE: the other modality's store")
        ref_modality = store_modality(s.reference)
        if ref_modality == modality:
            raise InconsistentInputError(f"the reference store holds {modality} too; it must hold the other "
                                         "modality of the contrastive pair", s.reference)
        pre.require(ref_modality)
        paths = [s.data, s.reference]
    else:
        if ft is None:
            raise InconsistentInputError("--target model needs a phenoclip finetune checkpoint (this one has no "
                                         "prediction head)", s.checkpoint, "use --target contrastive")
        if modality not in ft.modalities:
            raise InconsistentInputError(f"the fine-tuned model does not use '{modality}' (it uses "
                                         f"{', '.join(ft.modalities)})", s.checkpoint)
        paths = [s.data, *s.with_stores]
    stores = CohortStores(paths)
    stats = expr_stats(pre, stores)
    individuals = select_individuals(stores, modality, s.samples, s.data)
    left_out = ""
    if target == "contrastive":
        has = stores.present(ref_modality, individuals)
        if not has.all():
            left_out = (f"{int((~has).sum())} individual(s) have no {ref_modality} in {s.reference} and are left "
                        "out (the contrastive target pairs the two modalities)")
        individuals = [x for x, h in zip(individuals, has) if h]
    if not individuals:
        raise InconsistentInputError("no individual to explain", s.data)

    # a linear head reads the modality's read-out where pretraining fitted one: explain that function
    # (and, for a block that holds them, the linear path's principal-component scores)
    dense = DenseEncoder(model, modality, readout=target == "model" and ft.readout,
                         components=target == "model" and modality in ft.components).eval()
    shape = tuple(stores.by_modality[modality].shapes[INPUT_KEY[modality]])
    train, column_mean = None, None
    if modality == "gene":
        if dense.readout is not None:  # a missing call adds nothing to the read-out at its own mean
            column_mean = dense.readout.mean.detach().clone()[None]
        elif dense.dosage_mlp:          # its column means are the training split's mean dosages
            column_mean = dense.model_encoder.column_mean.detach().clone()[None]
        else:
            train = train_samples_in(pre, stores, modality)
            column_mean = input_mean(stores, modality, train, stats)
    baseline, baseline_samples, baseline_desc = resolve_baseline(s.baseline, s.seed, stores, modality, shape, stats,
                                                                  column_mean, pre, train)
    ibs = s.internal_batch_size or auto_internal_batch_size(dense, shape)
    method = MethodSettings(s.method, s.steps, ibs, s.nt_samples, s.noise_std)
    per_call = method.individuals_per_call(s.batch_size)
    if target == "contrastive":
        scorer, candidates, extras = contrastive_target(s, stores, model, dense, modality, ref_modality,
                                                        individuals, stats)
        explained = "contrastive loss of the reference batch plus the individual"
    else:
        scorer, extras, explained = model_target(s, stores, ft, ft_config, dense, modality, stats)
        candidates = []
    identity = _identity(s, kind, modality, target, method, per_call, baseline_desc, baseline, candidates,
                         individuals, explained)
    attrs = {"modality": modality, "method": s.method, "target": target, "explained_output": explained,
             "baseline": baseline_desc, "steps": s.steps, "internal_batch_size": ibs,
             "individuals_per_call": per_call, "checkpoint": os.path.abspath(s.checkpoint),
             "data": os.path.abspath(s.data), "reference": os.path.abspath(s.reference) if s.reference else "",
             "fingerprint": shards.fingerprint(identity), "run_settings": json.dumps(identity, sort_keys=True,
                                                                                     default=str),
             "n_individuals_total": len(individuals), "input_space": INPUT_SPACE[modality], "sign": SIGN[target],
             "part_rule": shards.PART_RULE}
    return Job(stores, modality, shape, stats, dense, column_mean, baseline, baseline_samples, scorer, extras,
               method, per_call, individuals, candidates, identity, attrs, left_out)


def run_explain(s: ExplainSettings, log=info) -> dict:
    """Attribute the individuals of ``s.data`` (or one part of them); write the outputs of ``s.out``."""
    genes = _genes(s.genes)            # a bad annotation is found before hours of attribution, not after
    job = prepare(s)
    first, stop = shards.part_range(len(job.individuals), job.per_call, s.part, s.num_parts)
    part_ids = job.individuals[first:stop]
    if s.part is not None:
        job.attrs.update(part=s.part, num_parts=s.num_parts)
        path = shards.part_path(s.out, s.part)
    else:
        path = str(Path(s.out).parent / f".{Path(s.out).name}.h5.pending-{os.getpid()}")
    if job.left_out:   # said once the inputs are known to be usable, so an input error stays one line
        warn(job.left_out)
    if s.method == "deeplift" and not job.dense.relu_mlp:
        warn(f"the {job.modality} encoder has attention or normalisation layers, for which DeepLift has no rule "
             "(captum uses their gradients): attributions need not add up to the output change (see the deltas); "
             "--method ig does")
    log(f"explain: {s.method} on {job.modality} ({job.attrs['target']} target: {job.attrs['explained_output']}), "
        f"{len(part_ids)} of {len(job.individuals)} individuals, {job.per_call} per call, internal batch "
        f"{job.method.internal_batch_size}, baseline {job.attrs['baseline']}")
    deltas, change = job.write(path, part_ids, first, s.seed)
    summary = delta_summary(deltas, change, s.method)
    log(summary)
    warn_if_not_converged(deltas, change, s.method)
    outputs = [path]
    if s.part is None:
        outputs = finalise(path, s.out, genes=genes, gene_window=s.gene_window, volumes=s.volumes, top=s.top)
        log(_top_line(s.out + ".tsv"))
    return {"outputs": outputs, "individuals": len(part_ids), "fingerprint": job.attrs["fingerprint"],
            "delta_summary": summary, "target": job.attrs["target"], "modality": job.modality}


def _genes(path: str | None):
    if path is None:
        return None
    return read_gene_annotation(path)


def _identity(s, kind, modality, target, method, per_call, baseline_desc, baseline, candidates, individuals,
              explained) -> dict:
    """Everything that decides the numbers of a run (see :mod:`phenoclip.explain.shards`)."""
    ck = Path(s.checkpoint)
    return {
        "checkpoint": {"kind": kind, "weights": shards.file_digest(ck / MODEL_FILE),
                       "config": shards.file_digest(ck / CONFIG_FILE)},
        "data": shards.store_identity(s.data),
        "reference": shards.store_identity(s.reference) if s.reference else None,
        "with": [shards.store_identity(p) for p in s.with_stores] if target == "model" else [],
        "modality": modality, "target": target, "explained_output": explained,
        "method": method.method, "steps": method.steps, "internal_batch_size": method.internal_batch_size,
        "nt_samples": method.nt_samples, "noise_std": method.noise_std, "individuals_per_call": per_call,
        "baseline": baseline_desc, "baseline_values": shards.digest(baseline.numpy().astype(np.float32)),
        "reference_size": s.reference_size if target == "contrastive" else None,
        "reference_set": shards.digest(candidates), "individuals": shards.digest(individuals),
        "n_individuals": len(individuals), "seed": s.seed,
    }


def _top_line(tsv: str, k: int = 10) -> str:
    with open(tsv) as fh:
        header = fh.readline().rstrip("\n").split("\t")
        rows = [fh.readline().rstrip("\n").split("\t") for _ in range(k)]
    names = [header.index("id")] if "id" in header else \
        [header.index(c) for c in ("channel", "d", "h", "w") if c in header] if "d" in header else [0]
    return "top features: " + ", ".join(",".join(r[i] for i in names) for r in rows if len(r) > max(names))


def run_merge(parts: list[str], out: str, genes: str | None = None, gene_window: int = 0, volumes: bool = True,
              top: int = 10, log=info) -> dict:
    """Combine the ``attr.partK.h5`` files of one run into the outputs a single run writes."""
    prefix = shards.merged_prefix(out)
    require_writable_parent(prefix + ".h5")
    found = shards.read_parts(parts)
    modality = found[0][2]["modality"]
    if genes is not None and modality != "gene":
        raise UsageError("--genes aggregates variant attributions: these parts hold " + modality)
    gene_table = _genes(genes)
    pending = str(Path(prefix).parent / f".{Path(prefix).name}.h5.pending-{os.getpid()}")
    try:
        n = shards.merge_parts(found, pending)
    except BaseException:
        Path(pending).unlink(missing_ok=True)
        raise
    outputs = finalise(pending, prefix, genes=gene_table, gene_window=gene_window, volumes=volumes, top=top)
    with open_store(prefix + ".h5") as s:
        d = s["delta"][...].astype(np.float64)
        change = np.abs(s["target_value"][...].astype(np.float64) - s["baseline_value"][...])
        method = str(s.attrs["method"])
    log(f"merged {len(found)} parts: {n} individuals")
    log(delta_summary(np.abs(d), change, method))
    warn_if_not_converged(np.abs(d), change, method)
    log(_top_line(prefix + ".tsv"))
    return {"outputs": outputs, "individuals": n, "parts": len(found)}

