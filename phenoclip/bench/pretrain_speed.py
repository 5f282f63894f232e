"""``--suite pretrain``: the selective scan against mamba-ssm's reference and a transformer layer,
and pretraining throughput per preset on this machine with the share of step time spent waiting
for data (target under 10%)."""

from __future__ import annotations

import json
import shutil

from phenoclip.bench import BenchContext, SuiteResult, Table
from phenoclip.bench import scan as scan_bench
from phenoclip.progress import info

MODALITIES = ["gene", "expr", "mri", "signal", "hpo"]


def cohort_stores(ctx: BenchContext, patients: int) -> dict:
    """Stores of ``ctx.cohort`` (a simulated-layout folder), or of a freshly simulated cohort."""
    from phenoclip.data.simulate import SimulationConfig, simulate_cohort
    from phenoclip.preprocess.cohort import preprocess_cohort

    stores_dir = ctx.work / "stores"
    if (stores_dir / "pheno.h5").exists():
        return {m: stores_dir / f"{m}.h5" for m in ("gene", "expr", "mri", "signal", "pheno")}
    cohort = ctx.cohort
    if cohort is None:
        cohort = ctx.work / "cohort"
        shutil.rmtree(cohort, ignore_errors=True)
        info(f"simulating {patients} patients")
        simulate_cohort(cohort, SimulationConfig(patients=patients, seed=ctx.seed))
    return preprocess_cohort(cohort, stores_dir)


def run(ctx: BenchContext) -> SuiteResult:
    from phenoclip.config import PretrainConfig
    from phenoclip.train.pretrain import run_pretrain

    result = scan_bench.run(ctx)
    result.name = "pretrain"
    stores = cohort_stores(ctx, ctx.patients or 200)
    rows = []
    presets = ["tiny"] if ctx.quick else ["tiny", "small"]
    for preset in presets:
        out = ctx.work / f"pretrain_{preset}"
        shutil.rmtree(out, ignore_errors=True)
        data = [str(stores[m if m != "hpo" else "pheno"]) for m in MODALITIES]
        cfg = PretrainConfig(modalities=list(MODALITIES), data=data, preset=preset, epochs=2, seed=ctx.seed)
        info(f"pretrain: preset {preset}, 2 epochs")
        run_pretrain(cfg, out, log=lambda s: None)
        last = json.loads((out / "state.json").read_text())["history"][-1]
        rows.append([preset, round(last["samples_per_s"], 1), f"{100 * last['data_wait_share']:.1f}%"])
        result.metrics[f"samples_per_s_{preset}"] = last["samples_per_s"]
        result.metrics[f"data_wait_share_{preset}"] = last["data_wait_share"]
        result.commands.append(f"phenoclip pretrain --modalities {','.join(MODALITIES)} --data ... --preset {preset} "
                               f"--epochs 2 --out {out}")
    result.tables.append(Table("Pretraining throughput on this machine's CPU (all five modalities, clip objective)",
                               ["preset", "samples/s (2nd epoch)", "time waiting for data"], rows,
                               note="Target: under 10% of step time waiting for data."))
    return result
