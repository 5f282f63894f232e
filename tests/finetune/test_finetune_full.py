"""``finetune --mode full`` through the one training loop: exact resume, stop signals, torchrun."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from conftest import run_cli


@pytest.fixture(scope="module")
def gene_expr(small_cohort, tmp_path_factory) -> dict:
    """A two-epoch gene+expr checkpoint (MLP encoders, dropout and batch norm inside) of the 64-patient cohort."""
    out = tmp_path_factory.mktemp("ft_full") / "pre"
    proc = run_cli("pretrain", "--modalities", "gene,expr", "--data", small_cohort["gene"], "--data",
                   small_cohort["expr"], "--arch", "gene=mlp", "--arch", "expr=mlp", "--epochs", "2",
                   "--batch-size", "16", "--out", out)
    assert proc.returncode == 0, proc.stderr
    return {"checkpoint": out, "data": [small_cohort["gene"], small_cohort["expr"]],
            "labels": f"{small_cohort['dir'] / 'labels.tsv'}:disease"}


def _args(ge: dict, out, *extra, batch: int = 8) -> list[str]:
    args = ["finetune", "--checkpoint", str(ge["checkpoint"]), "--labels", ge["labels"], "--out", str(out),
            "--mode", "full", "--label-fractions", "0.5,1", "--repeats", "1", "--baseline", "none",
            "--batch-size", str(batch), "--seed", "2", "--threads", "1"]
    for d in ge["data"]:
        args += ["--data", str(d)]
    return args + list(extra)


def _max_rel_diff(a: dict, b: dict) -> tuple[float, str]:
    assert a.keys() == b.keys()
    return max((float((a[k] - b[k]).abs().max() / a[k].abs().max().clamp(min=1e-12)), k) for k in a
               if a[k].is_floating_point())


def _metrics(folder) -> list[dict]:
    return json.loads((folder / "metrics.json").read_text())["rows"]


def test_a_stopped_full_finetune_resumes_to_the_weights_and_metrics_of_an_uninterrupted_run(gene_expr, tmp_path):
    from phenoclip.finetune.run import FinetuneSettings, run_finetune
    from phenoclip.finetune.heads import HeadSettings
    from phenoclip.train.loop import Preempted

    def settings(out, **kw) -> FinetuneSettings:
        return FinetuneSettings(checkpoint=str(gene_expr["checkpoint"]), data=[str(d) for d in gene_expr["data"]],
                                labels=gene_expr["labels"], out=str(out), mode="full", fractions=[0.5, 1.0],
                                repeats=1, baseline="scratch", seed=2,
                                head=HeadSettings(mode="full", epochs=4, batch_size=8), **kw)

    whole = tmp_path / "whole"
    run_finetune(settings(whole))
    assert not (tmp_path / ".whole.partial").exists()  # the work folder goes once the output is written

    broken = tmp_path / "broken"
    # 0.5 of the 51-patient pool: 25 patients, 3 steps an epoch; stop in the second epoch of a fit
    with pytest.raises(Preempted) as stop:
        run_finetune(settings(broken, stop_after_steps=5))
    assert stop.value.exit_code == 75 and not broken.exists()
    fits = tmp_path / ".broken.partial" / "fits"
    state = json.loads((fits / "0.5-r0-pretrained" / "state.json").read_text())
    assert state["preempted"] is True and (state["epoch"], state["step_in_epoch"]) == (1, 2)
    # resuming continues it, and the later fits, each of which stops after 5 steps again in this
    # process: a run stopped three times ends where an uninterrupted one does
    for _ in range(3):
        try:
            run_finetune(settings(broken, resume=True, stop_after_steps=5))
            break
        except Preempted:
            continue
    else:
        run_finetune(settings(broken, resume=True))
    assert not (tmp_path / ".broken.partial").exists()
    worst = _max_rel_diff(load_file(whole / "model.safetensors"), load_file(broken / "model.safetensors"))
    assert worst[0] == 0.0, worst
    assert _metrics(whole) == _metrics(broken)


def test_resume_is_refused_in_one_line_without_a_stopped_run_or_with_other_settings(gene_expr, tmp_path):
    out = tmp_path / "ft"
    proc = run_cli(*_args(gene_expr, out, "--resume"))
    assert proc.returncode == 5 and "no interrupted run" in proc.stderr and not out.exists()
    proc = run_cli(*_args(gene_expr, out, "--resume", "--mode", "linear"))
    assert proc.returncode == 2 and "nothing to resume" in proc.stderr
    work = tmp_path / ".ft.partial"
    work.mkdir()
    (work / "settings.json").write_text(json.dumps({"seed": 1}))
    proc = run_cli(*_args(gene_expr, out))
    assert proc.returncode == 2 and "add --resume" in proc.stderr and not out.exists()
    proc = run_cli(*_args(gene_expr, out, "--resume"))
    assert proc.returncode == 5 and "other settings" in proc.stderr and not out.exists()


def test_sigusr1_saves_the_fit_exits_75_and_resume_finishes_like_an_uninterrupted_run(gene_expr, tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    proc = run_cli(*_args(gene_expr, whole, "--epochs", "6"))
    assert proc.returncode == 0, proc.stderr
    cmd = [sys.executable, "-m", "phenoclip", *_args(gene_expr, broken, "--epochs", "6")]
    job = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in job.stderr:  # the fits start once the task is settled: send SLURM's pre-timeout signal
        if "test " in line and "patients" in line:
            job.send_signal(signal.SIGUSR1)
            break
    rest = job.stderr.read()
    assert job.wait(timeout=300) == 75, rest
    assert "checkpoint saved" in rest and "--resume" in rest and not broken.exists()
    assert (tmp_path / ".broken.partial" / "fits").is_dir()
    proc = run_cli(*_args(gene_expr, broken, "--epochs", "6", "--resume"))
    assert proc.returncode == 0, proc.stderr
    worst = _max_rel_diff(load_file(whole / "model.safetensors"), load_file(broken / "model.safetensors"))
    assert worst[0] == 0.0, worst
    assert _metrics(whole) == _metrics(broken)


@pytest.mark.slow
def test_two_processes_with_batch_b_fine_tune_like_one_with_batch_2b(gene_expr, tmp_path):
    """torchrun with 2 CPU processes at batch 8 ends every fit with the weights of one process at
    batch 16 (dropout drawn per patient, batch norm over the global batch)."""
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    one, two = tmp_path / "one", tmp_path / "two"
    proc = subprocess.run([sys.executable, "-m", "phenoclip", *_args(gene_expr, one, "--epochs", "3", batch=16)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    args = _args(gene_expr, two, "--epochs", "3")
    proc = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", "-m", "phenoclip", *args],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    worst = _max_rel_diff(load_file(one / "model.safetensors"), load_file(two / "model.safetensors"))
    assert worst[0] <= 1e-4, worst
    m1, m2 = _metrics(one), _metrics(two)
    for a, b in zip(m1, m2):
        assert a["auroc"] == pytest.approx(b["auroc"], abs=1e-3)
