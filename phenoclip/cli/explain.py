"""``phenoclip explain``: which SNPs, genes and voxels a model relies on (captum attributions).

``phenoclip explain --checkpoint runs/pre --data gene.h5 --reference expr.h5 --out attr`` attributes;
``phenoclip explain merge attr.part*.h5 --out attr`` combines the parts of a sharded run.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

import typer

from phenoclip.cli.common import Threads, run_step
from phenoclip.errors import UsageError

HELP = ("Attribute a model's output to the input features of one modality with captum (Integrated Gradients, "
        "DeepLift, GradientShap, saliency, SmoothGrad over IG), per individual. For a pretraining checkpoint the "
        "output is ContIG's contrastive loss of a fixed reference batch of other individuals plus the individual "
        "(their other-modality embedding fixed); for a finetune checkpoint the predicted class logit or value. "
        "Writes OUT.h5 (per-individual attributions, convergence deltas), OUT.tsv (features ranked by mean "
        "absolute attribution), a plot (OUT.manhattan.png for variants, OUT.top.png for expression, "
        "OUT.slices.png for MRI), OUT.genes.tsv with --genes, OUT.volumes/SAMPLE.nii.gz (MRI, original space) and "
        "OUT.log. With --part K --num-parts N only OUT.partK.h5 (and its log); 'explain merge' combines the parts.")

app = typer.Typer(help=HELP, invoke_without_command=True)


@app.callback()
def explain(
    ctx: typer.Context,
    method: str = typer.Option("ig", "--method", help="ig | deeplift | gradientshap | saliency | noise-tunnel (SmoothGrad over IG)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Checkpoint folder of phenoclip pretrain (contrastive target) or phenoclip finetune (model target)."),
    modality: Optional[str] = typer.Option(None, "--modality", help="gene | expr | mri: the explained modality; must match the --data store [default: the store's]."),
    data: Optional[Path] = typer.Option(None, "--data", help="Store of the explained modality (phenoclip preprocess)."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="Store of the other modality of the contrastive pair (e.g. expr.h5 or mri.h5)."),
    with_stores: List[Path] = typer.Option([], "--with", help="--target model: a store of another modality the fine-tuned model reads, held fixed; repeatable."),
    out: Optional[str] = typer.Option(None, "--out", help="Output prefix: OUT.h5, OUT.tsv, OUT.manhattan.png, OUT.log, ...; - writes only the ranked table (OUT.tsv) to stdout."),
    target: Optional[str] = typer.Option(None, "--target", help="contrastive | model [default: contrastive for a pretrain checkpoint, model for a finetune one]."),
    samples: Optional[str] = typer.Option(None, "--samples", help="Individuals to explain: a file of IDs (one a line, or plink FID IID) or a comma-separated list [default: all of --data]."),
    reference_size: Optional[int] = typer.Option(None, "--reference-size", help="Individuals in the fixed reference batch (drawn by --seed among those with both modalities, never the individual explained) [default: 256, or all others when fewer]."),
    baseline: str = typer.Option("mean", "--baseline", help="zeros | mean (training-split mean input) | REF.h5 (a store of the same features: mean of its individuals; GradientShap samples its rows)."),
    steps: int = typer.Option(50, "--steps", help="Integration points of IG and noise-tunnel (and of the head multipliers of DeepLift)."),
    internal_batch_size: Optional[int] = typer.Option(None, "--internal-batch-size", help="Rows (individuals x steps) per forward/backward pass; bounds memory [default: sized to ~256 MB]."),
    batch_size: int = typer.Option(16, "--batch-size", help="Individuals per captum call (rows of the output written at a time)."),
    nt_samples: int = typer.Option(10, "--nt-samples", help="Noisy copies per individual for noise-tunnel and gradientshap."),
    noise_std: float = typer.Option(0.1, "--noise-std", help="Noise standard deviation (input units) for noise-tunnel and gradientshap."),
    class_name: Optional[str] = typer.Option(None, "--class", help="--target model: class whose logit is explained [default: binary the positive class, multiclass the predicted one]."),
    part: Optional[int] = typer.Option(None, "--part", help="This job's part, 0 .. N-1 (with --num-parts N): writes OUT.partK.h5 only."),
    num_parts: Optional[int] = typer.Option(None, "--num-parts", help="Number of parts the individuals are split into."),
    genes: Optional[Path] = typer.Option(None, "--genes", help="BED or GTF of genes: also write OUT.genes.tsv, variant attributions aggregated per gene."),
    gene_window: int = typer.Option(0, "--gene-window", min=0, help="Base pairs added to each side of a gene for --genes."),
    volumes: bool = typer.Option(True, "--volumes/--no-volumes", help="MRI: write OUT.volumes/SAMPLE.nii.gz in each patient's original space."),
    top: int = typer.Option(10, "--top", min=0, help="Top variants labelled in the Manhattan plot."),
    seed: int = typer.Option(0, "--seed", help="Seed of the reference set, baseline samples and noise."),
    threads: Optional[int] = Threads,
) -> None:
    if ctx.invoked_subcommand is not None:
        return
    # imported here, not at the top: `phenoclip --help` stays fast and torch-free
    from phenoclip.explain.run import ExplainSettings, run_explain
    from phenoclip.progress import info

    for name, value in (("--checkpoint", checkpoint), ("--data", data), ("--out", out)):
        if value is None:
            raise UsageError(f"{name} is required (or use 'phenoclip explain merge')")
    to_stdout = out == "-"
    if to_stdout and part is not None:
        raise UsageError("--out - writes the ranked table of a whole run; a --part needs a prefix for OUT.partK.h5")
    if to_stdout:
        # the run's files go to a scratch folder; only the ranked table leaves it, on stdout
        scratch = tempfile.mkdtemp(prefix="phenoclip-explain-")
        out = os.path.join(scratch, "attr")
    settings = ExplainSettings(
        checkpoint=str(checkpoint), data=str(data), out=str(out), modality=modality, method=method, target=target,
        reference=str(reference) if reference else None, with_stores=[str(p) for p in with_stores], samples=samples,
        reference_size=reference_size, baseline=baseline, steps=steps, internal_batch_size=internal_batch_size,
        batch_size=batch_size, nt_samples=nt_samples, noise_std=noise_std, class_name=class_name, part=part,
        num_parts=num_parts, genes=str(genes) if genes else None, gene_window=gene_window, volumes=volumes, top=top,
        seed=seed)
    log_target = "-" if to_stdout else f"{out}.part{part}" if part is not None else str(out)
    try:
        with run_step("explain", log_target, seed=seed, threads=threads) as log:
            result = run_explain(settings, log=lambda line: (info(line), log.note(line)))
            log.note(f"fingerprint: {result['fingerprint']}")
            if to_stdout:
                with open(f"{out}.tsv", encoding="utf-8") as fh:
                    shutil.copyfileobj(fh, sys.stdout)
                sys.stdout.flush()
                log.outputs.append("-")
            else:
                log.outputs.extend(result["outputs"])
    finally:
        if to_stdout:
            shutil.rmtree(scratch, ignore_errors=True)


@app.command("merge", help="Combine the OUT.partK.h5 files of one sharded explain run into the outputs of a single "
                           "run (OUT.h5, OUT.tsv, the plot, ...); parts of different runs, repeated or missing parts "
                           "are refused.")
def merge(
    parts: List[Path] = typer.Argument(..., help="The OUT.partK.h5 files, all parts of one run."),
    out: str = typer.Option(..., "--out", help="Output prefix (as --out of explain)."),
    genes: Optional[Path] = typer.Option(None, "--genes", help="BED or GTF of genes: also write OUT.genes.tsv."),
    gene_window: int = typer.Option(0, "--gene-window", min=0, help="Base pairs added to each side of a gene for --genes."),
    volumes: bool = typer.Option(True, "--volumes/--no-volumes", help="MRI: write OUT.volumes/SAMPLE.nii.gz."),
    top: int = typer.Option(10, "--top", min=0, help="Top variants labelled in the Manhattan plot."),
    threads: Optional[int] = Threads,
) -> None:
    # imported here, not at the top: `phenoclip --help` stays fast and torch-free
    from phenoclip.explain.run import run_merge
    from phenoclip.explain.shards import merged_prefix
    from phenoclip.progress import info

    with run_step("explain merge", merged_prefix(out), threads=threads) as log:
        result = run_merge([str(p) for p in parts], out, genes=str(genes) if genes else None,
                           gene_window=gene_window, volumes=volumes, top=top,
                           log=lambda line: (info(line), log.note(line)))
        log.outputs.extend(result["outputs"])
