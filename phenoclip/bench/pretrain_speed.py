"""``--suite pretrain``: the selective scan against mamba-ssm's reference and a transformer layer,
and pretraining throughput per preset on this machine with the share of step time spent waiting
for data (target under 10%)."""

from __future__ import annotations

import json
import shutil

from phenoclip.bench import BenchContext, SuiteResult, Table
from phenoclip.bench import scan as scan_bench
from phenoclip.bench.cohort import MODALITIES, bench_cohort
from phenoclip.progress import info


def run(ctx: BenchContext) -> SuiteResult:
    from phenoclip.config import PretrainConfig
    from phenoclip.train.pretrain import run_pretrain

    result = scan_bench.run(ctx)
    result.name = "pretrain"
    cohort = bench_cohort(ctx)
    missing = [m for m in MODALITIES if m not in cohort.stores]
    if missing:
        raise RuntimeError(f"the cohort has no {', '.join(missing)} store: throughput is measured on all five")
    rows = []
    on_gpu = ctx.device.startswith("cuda")
    # the paper preset is sized for a GPU: on 2 CPU cores two of its epochs alone take many minutes
    presets = ["tiny"] if ctx.quick else ["tiny", "small", "paper"] if on_gpu else ["tiny", "small"]
    for preset in presets:
        out = ctx.work / f"pretrain_{preset}"
        shutil.rmtree(out, ignore_errors=True)
        data = cohort.data(MODALITIES)
        cfg = PretrainConfig(modalities=list(MODALITIES), data=data, preset=preset, epochs=2, seed=ctx.seed,
                             device=ctx.device)
        info(f"pretrain: preset {preset}, 2 epochs")
        run_pretrain(cfg, out, log=lambda s: None)
        last = json.loads((out / "state.json").read_text())["history"][-1]
        rows.append([preset, round(last["samples_per_s"], 1), f"{100 * last['data_wait_share']:.1f}%"])
        result.metrics[f"samples_per_s_{preset}"] = last["samples_per_s"]
        result.metrics[f"data_wait_share_{preset}"] = last["data_wait_share"]
        result.commands.append(f"phenoclip pretrain --modalities {','.join(MODALITIES)} {cohort.data_args(MODALITIES)} "
                               f"--preset {preset} --epochs 2 --device {ctx.device} --out {out}")
    where = "GPU" if on_gpu else "CPU"
    result.tables.append(Table(f"Pretraining throughput on this machine's {where} (all five modalities, clip objective)",
                               ["preset", "samples/s (2nd epoch)", "time waiting for data"], rows,
                               note="Target: under 10% of step time waiting for data."))
    return result
