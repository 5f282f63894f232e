"""``--suite pretrain``: the selective scan against mamba-ssm's reference and a transformer layer,
pretraining throughput per preset on this machine with the share of step time spent waiting
for data (target under 10%), and data-parallel throughput with 1, 2 and 4 torchrun processes
sharing the machine's cores."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from phenoclip_bench import BenchContext, SuiteResult, Table
from phenoclip_bench import scan as scan_bench
from phenoclip_bench.cohort import MODALITIES, bench_cohort
from phenoclip.pretrain.run import run_pretrain
from phenoclip.pretrain.settings import PretrainSettings
from phenoclip.progress import info


def run(ctx: BenchContext) -> SuiteResult:
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
        cfg = PretrainSettings(modalities=list(MODALITIES), data=data, preset=preset, epochs=2, seed=ctx.seed,
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
    if not on_gpu:
        table, metrics, commands = data_parallel_table(ctx, cohort.data(MODALITIES), list(MODALITIES))
        result.tables.append(table)
        result.metrics.update(metrics)
        result.commands.extend(commands)
    return result


#: torchrun processes measured; the machine's cores are shared among them (equal threads in all)
PROCESSES = (1, 2, 4)


def data_parallel_table(ctx: BenchContext, data: list[str], modalities: list[str], preset: str = "tiny",
                        batch: int = 64, processes: tuple[int, ...] = PROCESSES) -> tuple[Table, dict, list[str]]:
    """Samples/s and the share of time waiting for data, 2nd epoch, for 1, 2 and 4 processes at a global
    batch of ``batch`` (each process ``batch / N``), the cores split equally among the processes."""
    cores = max(1, os.cpu_count() or 1)
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    rows, metrics, commands, base = [], {}, [], None
    for n in processes:
        out = ctx.work / f"pretrain_ddp{n}"
        shutil.rmtree(out, ignore_errors=True)
        threads = max(1, cores // n)
        args = ["-m", "phenoclip", "pretrain", "--modalities", ",".join(modalities), *[a for d in data for a in
                ("--data", d)], "--preset", preset, "--epochs", "2", "--batch-size", str(batch // n),
                "--seed", str(ctx.seed), "--threads", str(threads), "--device", "cpu", "--out", str(out)]
        cmd = [torchrun, "--standalone", "--nproc-per-node", str(n), *args]
        info(f"pretrain: {n} process(es) x {threads} thread(s), batch {batch // n} each")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            rows.append([n, threads, batch // n, None, None, None])
            info(f"pretrain: {n} processes failed: {proc.stderr.strip().splitlines()[-1:]}")
            continue
        last = json.loads((out / "state.json").read_text())["history"][-1]
        rate = last["samples_per_s"]
        base = base or rate
        rows.append([n, threads, batch // n, round(rate, 1), f"{100 * last['data_wait_share']:.1f}%",
                     round(rate / base, 2)])
        metrics[f"ddp{n}_samples_per_s"] = rate
        metrics[f"ddp{n}_data_wait_share"] = last["data_wait_share"]
        commands.append(" ".join(["torchrun", *cmd[1:]]))
    table = Table(f"Data-parallel pretraining on this machine's {cores} CPU cores (torchrun, gloo; {preset} "
                  f"preset, all five modalities, global batch {batch})",
                  ["processes", "threads each", "batch each", "samples/s (2nd epoch)", "time waiting for data",
                   "x 1 process"], rows,
                  note=f"The {cores} cores are shared: more processes than cores shows the cost of "
                       "oversubscription, not scaling. Target: under 10% of step time waiting for data.")
    return table, metrics, commands
