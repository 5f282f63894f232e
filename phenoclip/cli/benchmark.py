"""``phenoclip benchmark``: measured figures, as ratios against references run in the same process."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from phenoclip.cli.common import Seed, Threads, run_step

HELP = ("Reproduce the papers' experiments and measure speed; write report/README.md (tables, figures, the commands "
        "behind every number, machine and versions), the PNG figures and report/results.json. Every figure is measured "
        "in this run beside its baseline or reference (random initialisation, scikit-learn baselines, monai U-Nets, "
        "mamba-ssm's reference scan, faiss, a bare cyvcf2 loop). A failing suite is reported and the others still run "
        "(exit 70).")


def benchmark(
    suite: str = typer.Option("all", "--suite", help="One suite, a comma-separated list, or all: ingest (VCF -> store vs a bare cyvcf2 loop, bcftools, plink2; CLI start-up) | pretrain (selective scan vs mamba-ssm's reference and a transformer; samples/s per preset) | ssl (paper 002: SCARF, VIME, BYOL vs random init across label fractions) | retrieve (paper 000: zero-shot cross-modal Recall@k and MRR vs random init and a CCA ceiling, embedding map; exact top-k speed vs faiss) | classify (paper 000 Table 2: pretrained model vs ElasticNet early fusion and scratch networks) | ablation (paper 000 Table 3 and Fig. 6: each modality and the ontology loss removed) | segment (paper 003 Table 1: fusion decoder with and without genes, from random init, U-Net, Attention U-Net) | explain (paper 001: planted-SNP precision@k per attribution method; IG cost)."),
    out: Path = typer.Option(..., "--out", help="Report folder (created)."),
    cohort: Optional[Path] = typer.Option(None, "--cohort", help="Run on this cohort instead of simulating one: a folder of phenoclip stores (*.h5, with labels.tsv beside them for the classification suites) or a folder laid out like phenoclip simulate's output (e.g. data/sample), or gse7390: 198 real breast tumours (76 genes, ER status) shipped in scikit-survival, or pbmc68k: 660 real blood cells (765 genes, 7 cell types) shipped in scanpy."),
    patients: Optional[int] = typer.Option(None, "--patients", min=8, help="Patients to simulate when there is no --cohort (default 200; some suites size their own cohorts)."),
    variants: Optional[int] = typer.Option(None, "--variants", min=100, help="Variants to simulate for ingest (default 20000; 5000 with --quick)."),
    quick: bool = typer.Option(False, "--quick", help="CPU-sized runs: every suite together in about 40 minutes on 2 cores (38 min measured for docs/benchmark). The full run is for GPUs."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda[:N]: where the pretraining of the learning suites and the pretrain suite's throughput run (fine-tuning, segmentation and the baselines stay on the CPU)."),
    keep_work: bool = typer.Option(False, "--keep-work", help="Keep report/work/ (simulated cohorts, stores, checkpoints) instead of removing it at the end."),
    seed: int = Seed,
    threads: Optional[int] = Threads,
) -> None:
    # imported here, not at the top: `phenoclip --help` stays fast and torch-free
    from phenoclip_bench import run_suites

    with run_step("benchmark", str(out) + "/", seed=seed, threads=threads) as log:
        run_suites(suite, out, cohort=cohort, patients=patients, variants=variants, quick=quick, seed=seed,
                   device=device, keep_work=keep_work, log=log)
