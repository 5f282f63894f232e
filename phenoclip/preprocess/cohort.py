"""Preprocess a whole cohort folder laid out like ``phenoclip simulate``'s output into stores.

The same steps as ``scripts/run_sample.sh``, as one library call for benchmarks and tests.
"""

from __future__ import annotations

from pathlib import Path

from phenoclip.preprocess.expression import convert_expression
from phenoclip.preprocess.mri import convert_mri
from phenoclip.preprocess.phenotypes import convert_phenotypes
from phenoclip.preprocess.signals import convert_signals
from phenoclip.preprocess.variants import VariantSettings, convert_vcf


def preprocess_cohort(cohort: str | Path, out: str | Path, *, mri_spacing=(1.5, 1.5, 1.5), mri_shape=(32, 32, 32),
                      signal_rate: float = 100.0, signal_window: float = 10.0) -> dict[str, Path]:
    """Write ``gene.h5``, ``expr.h5``, ``mri.h5``, ``signal.h5`` and ``pheno.h5`` into ``out``; return their paths."""
    cohort, out = Path(cohort), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {m: out / f"{m}.h5" for m in ("gene", "expr", "mri", "signal", "pheno")}
    convert_vcf(cohort / "variants.vcf.gz", paths["gene"], VariantSettings())
    convert_expression(cohort / "expression.tsv.gz", paths["expr"], transform="cpm-log1p")
    convert_mri(cohort / "mri" / "manifest.tsv", paths["mri"], spacing=mri_spacing, shape=mri_shape)
    convert_signals(cohort / "signals" / "manifest.tsv", paths["signal"], rate=signal_rate, window=signal_window,
                    bandpass=(0.5, min(40.0, signal_rate / 2 - 1)))
    convert_phenotypes(paths["pheno"], phenopackets=cohort / "phenotypes" / "phenopackets",
                       labels=cohort / "labels.tsv")
    return paths
