"""``phenoclip simulate``: a synthetic cohort with planted, documented structure."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from phenoclip.cli.common import Seed, Threads, run_step
from phenoclip.errors import UsageError

HELP = ("Simulate a cohort in the formats users bring (phased bgzipped VCF + tabix index, expression TSV, "
        "NIfTI MRI + lesion masks, EDF biosignals, HPO TSV + phenopackets, labels.tsv) with a latent disease "
        "state planted in every modality; truth.json lists everything planted.")


def simulate(
    out: Path = typer.Option(..., "--out", help="Output folder (created; must not exist or be empty)."),
    patients: int = typer.Option(200, "--patients", min=8, help="Number of patients."),
    seed: int = Seed,
    variants: int = typer.Option(2000, "--variants", min=100, help="Number of variant sites (biallelic SNPs plus a few special sites)."),
    genes: int = typer.Option(200, "--genes", min=20, help="Number of genes in the expression table."),
    volume_shape: str = typer.Option("32,40,32", "--volume-shape", help="MRI grid X,Y,Z in voxels."),
    signal_seconds: float = typer.Option(12.0, "--signal-seconds", min=2.0, help="Length of each biosignal recording."),
    signal_rate: float = typer.Option(250.0, "--signal-rate", min=50.0, help="Sampling rate of the recordings in Hz."),
    missing_rate: float = typer.Option(0.1, "--missing-rate", min=0.0, max=0.5,
                                       help="Share of patients lacking each of MRI, signals, expression, variants."),
    genotypes: str = typer.Option("blocks", "--genotypes",
                                  help="Genotype model: blocks (founder haplotype blocks: r2 high within a block, "
                                       "none between) | coalescent (msprime segments: LD decaying with distance, "
                                       "neutral allele frequencies)."),
    threads: Optional[int] = Threads,
) -> None:
    # imported here, not at the top: `phenoclip --help` stays fast and torch-free
    from phenoclip.data.simulate import SimulationSettings, simulate_cohort
    from phenoclip.data.simulate.settings import GENOTYPE_MODELS

    if genotypes not in GENOTYPE_MODELS:
        raise UsageError(f"--genotypes must be {' or '.join(GENOTYPE_MODELS)}, got '{genotypes}'")
    try:
        shape = tuple(int(x) for x in volume_shape.split(","))
    except ValueError:
        raise UsageError(f"--volume-shape must be X,Y,Z integers, got '{volume_shape}'") from None
    if len(shape) != 3 or min(shape) < 16:
        raise UsageError(f"--volume-shape needs three sizes of at least 16, got '{volume_shape}'")
    cfg = SimulationSettings(patients=patients, seed=seed, variants=variants, genes=genes, volume_shape=shape,
                           signal_seconds=signal_seconds, signal_rate=signal_rate, missing_rate=missing_rate,
                           genotypes=genotypes)
    with run_step("simulate", str(out), seed=seed, threads=threads) as log:
        summary = simulate_cohort(out, cfg)
        for k, v in summary.items():
            log.note(f"{k}: {v}")
