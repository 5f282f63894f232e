"""``phenoclip benchmark``: measured figures, as ratios against references run in the same process."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from phenoclip.cli.common import Seed, Threads, run_step

HELP = ("Run benchmark suites and write report/README.md and report/results.json. Every figure is "
        "measured in this run, beside its reference (a bare cyvcf2 loop, bcftools, plink2, python -c pass).")


def benchmark(
    suite: str = typer.Option("all", "--suite", help="ingest | pretrain | retrieve (exact top-k: ours vs faiss IndexFlatIP vs full-matrix torch.topk) | explain (planted-SNP precision@k per attribution method vs random and a marginal test; IG seconds and peak memory) | all (more suites land with their subcommands)."),
    out: Path = typer.Option(..., "--out", help="Report folder (created)."),
    cohort: Optional[Path] = typer.Option(None, "--cohort", help="Use this simulated cohort folder instead of simulating one."),
    patients: Optional[int] = typer.Option(None, "--patients", min=8, help="Patients to simulate (default per suite)."),
    variants: Optional[int] = typer.Option(None, "--variants", min=100, help="Variants to simulate for ingest (default 20000; 5000 with --quick)."),
    quick: bool = typer.Option(False, "--quick", help="Smaller sizes so every suite runs in minutes on 2 cores."),
    seed: int = Seed,
    threads: Optional[int] = Threads,
) -> None:
    from phenoclip.bench import run_suites

    with run_step("benchmark", str(out) + "/", seed=seed, threads=threads) as log:
        run_suites(suite, out, cohort=cohort, patients=patients, variants=variants, quick=quick, seed=seed, log=log)
