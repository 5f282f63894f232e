"""The SLURM recipe of docs/slurm/pretrain.sbatch against a real Slurm.

A one-node cluster (slurmctld, slurmd and munged from Debian's slurm-wlm and munge) is started
here with its own configuration, key, sockets and ports under a temporary folder, so a Slurm or
munge already on the machine is left alone. The recipe is submitted as a user would submit it,
with a short time limit and SLURM's pre-timeout signal; the test checks that the job was
signalled, saved, requeued itself, resumed and ended with the weights of an uninterrupted run.
Skipped where the daemons are not installed or cannot start (they need root).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "docs" / "slurm" / "pretrain.sbatch"
#: fine-tuning epochs of the finetune job: long enough (one and a half to two minutes on 2 cores) that SLURM's
#: signal, 20-50 s into the job, comes during training
FINETUNE_EPOCHS = 600
#: epochs of the segment job (a U-Net on 64 small volumes): 200 took 60-100 s on 2 cores
SEGMENT_EPOCHS = 300
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo", "squeue", "scontrol")

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A one-node Slurm started for this module; yields the environment its commands need."""
    missing = [d for d in DAEMONS if not _which(d)]
    if missing:
        pytest.skip(f"Slurm not installed here (no {', '.join(missing)}; Debian: apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        pytest.skip("starting slurmctld/slurmd needs root")
    root = tmp_path_factory.mktemp("slurm")
    for d in ("spool/ctld", "spool/d", "log", "run"):
        (root / d).mkdir(parents=True)
    key = root / "munge.key"
    key.write_bytes(os.urandom(128))
    key.chmod(0o600)
    munge_socket = root / "run" / "munge.socket"
    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=phenoclip-test", f"SlurmctldHost={host}", "SlurmUser=root", "SlurmdUser=root",
        "AuthType=auth/munge", f"AuthInfo=socket={munge_socket}",
        f"StateSaveLocation={root}/spool/ctld", f"SlurmdSpoolDir={root}/spool/d",
        f"SlurmctldPidFile={root}/run/slurmctld.pid", f"SlurmdPidFile={root}/run/slurmd.pid",
        f"SlurmctldLogFile={root}/log/slurmctld.log", f"SlurmdLogFile={root}/log/slurmd.log",
        f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
        # no cgroups in a container: track processes by parent id, bind no CPUs
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none", "MpiDefault=none", "SwitchType=switch/none",
        "SchedulerType=sched/builtin", "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
        "ReturnToService=2", "JobRequeue=1",
        f"NodeName={host} CPUs={os.cpu_count()} RealMemory=2000 State=UNKNOWN",
        "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""]))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    started = []
    try:
        subprocess.run([_which("munged"), "--force", f"--key-file={key}", f"--socket={munge_socket}",
                        f"--pid-file={root}/run/munged.pid", f"--log-file={root}/log/munged.log",
                        f"--seed-file={root}/run/munged.seed"], check=True, capture_output=True, timeout=30)
        started.append(root / "run" / "munged.pid")
        for daemon in ("slurmctld", "slurmd"):
            subprocess.run([_which(daemon)], env=env, check=True, capture_output=True, timeout=30)
            started.append(root / "run" / f"{daemon}.pid")
        deadline = time.time() + 60
        while time.time() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True).stdout
            if state.strip() in ("idle", "mixed"):
                break
            time.sleep(1)
        else:
            pytest.skip(f"the test cluster did not come up (node state {state.strip()!r}); see {root}/log")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        _stop(started)
        pytest.skip(f"could not start munged/slurmctld/slurmd: {e}")
    version = subprocess.run(["sbatch", "--version"], env=env, capture_output=True, text=True).stdout.strip()
    yield {"env": env, "root": root, "version": version}
    _stop(started)


def _stop(pid_files: list[Path]) -> None:
    for pid_file in reversed(pid_files):
        try:
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
        except (OSError, ValueError):
            pass


def _job_fields(env: dict, job: str) -> dict[str, str]:
    """``scontrol show job``'s NAME=value fields of one job (empty once Slurm has forgotten it)."""
    out = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout
    return dict(word.split("=", 1) for word in out.split() if "=" in word)


def _torchrun(*args: str, out: Path) -> None:
    """The uninterrupted run: the same torchrun command as the job's, straight through."""
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    proc = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", "-m", "phenoclip", *args,
                           "--threads", "1", "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _submit_and_follow(slurm: dict, tmp_path: Path, step: str, args: str, out: Path) -> str:
    """Submit the recipe with a 2-minute limit and SLURM's signal 100 s before it; follow the job
    to its end and return the job's log, asserting that it completed after one requeue."""
    venv = Path(sys.executable).parent.parent
    log = tmp_path / "job.log"
    # values holding commas cannot go through --export (it splits on them): the environment carries them
    env = {**slurm["env"], "VENV": str(venv), "OUT": str(out), "NPROC": "2", "STEP": step, "ARGS": args}
    submit = subprocess.run(["sbatch", "--parsable", "--time=2", "--signal=B:USR1@100",
                             f"--cpus-per-task={min(2, os.cpu_count())}", f"--chdir={tmp_path}", f"--output={log}",
                             str(RECIPE)], env=env, capture_output=True, text=True, timeout=60)
    assert submit.returncode == 0, submit.stderr
    job = submit.stdout.strip().split(";")[0]
    deadline, ended, history, state, held_since = time.time() + 900, 0, [], None, None
    while time.time() < deadline:
        fields = _job_fields(env, job)
        state, reason = fields.get("JobState"), fields.get("Reason")
        queued = subprocess.run(["squeue", "-h", "-j", job], env=env, capture_output=True, text=True).stdout.strip()
        seen = (state, reason, fields.get("Restarts"), bool(queued))
        if not history or history[-1][1:] != seen:
            history.append((round(time.time() - deadline + 900), *seen))
        # a job that requeues itself passes through FAILED/CANCELLED while Slurm kills its batch
        # shell and puts it back (seconds when the machine is loaded): ended means out of the queue in
        # an end state for 30 s on end, or the recipe's own last line ("ended ...") in the log
        last = [line for line in (log.read_text() if log.exists() else "").splitlines()
                if line.startswith("phenoclip-train:")][-1:]
        finished = bool(last) and " ended " in last[0]
        ended = ended + 1 if not queued and state not in ("PENDING", "RUNNING", "COMPLETING", "REQUEUED") else 0
        if (finished and ended) or ended >= 15:
            break
        held = state == "PENDING" and reason == "BeginTime"
        held_since = (held_since or time.time()) if held else None
        if held and time.time() - held_since >= 10:
            # Slurm holds a requeued job for two minutes (cred_expire) before it may start again:
            # release it now. Not in the requeue's first seconds: slurmd refuses a launch whose
            # credential is not newer than the revoked one ("Job credential revoked"; FAILED).
            # After a stop that saved a checkpoint the rest of the run gets 20 minutes, so one
            # signal, one requeue and one resume are tested however fast the machine is (at 2
            # minutes a slow one needed 4-5 requeues). A signal that came before the workers listened
            # (a loaded machine starts the recipe late) saved nothing: keep the 2-minute limit so
            # that SLURM signals the restarted run again.
            saved = bool(last) and "stopped (preempted)" in last[0]
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now",
                            *(["TimeLimit=20"] if saved else [])], env=env, capture_output=True)
        time.sleep(2)
    text = log.read_text() if log.exists() else ""
    ctld = slurm["root"] / "log" / "slurmctld.log"
    ctld_tail = "\n".join(ctld.read_text().splitlines()[-40:]) if ctld.exists() else ""
    assert state == "COMPLETED", (f"job {job} ended {state}; states seen (s, state, reason, restarts, queued): "
                                  f"{history}\nslurmctld.log:\n{ctld_tail}\njob log:\n{text[-3000:]}")
    print(f"{slurm['version']}:", "\n".join(line for line in text.splitlines() if line.startswith("phenoclip")))
    print("states seen (s, state, reason, restarts, queued):", history)
    # it was stopped by SLURM's signal, requeued itself and resumed from a checkpoint
    assert "stop signal" in text and "requeueing job" in text and "restart 1," in text, text[-4000:]
    assert ", --resume" in text and "stopped (preempted)" in text, text[-4000:]
    assert "training finished, exit 0" in text
    return text


def _assert_same_weights(ref: Path, run: Path) -> None:
    """The model.safetensors of two runs agree to a relative 1e-6 (float32 reductions in another order)."""
    from safetensors.numpy import load_file

    a, b = load_file(str(ref / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert a.keys() == b.keys()
    worst = max(float(np.abs(a[k] - b[k]).max() / (np.abs(a[k]).max() + 1e-12)) for k in a)
    assert worst <= 1e-6, worst


def test_the_sbatch_recipe_is_signalled_requeued_and_ends_with_uninterrupted_weights(slurm, small_cohort, tmp_path):
    args = (f"--modalities gene,expr --data {small_cohort['gene']} --data {small_cohort['expr']} --arch gene=mlp "
            "--arch expr=mlp --epochs 300 --batch-size 8 --seed 5")
    _torchrun("pretrain", *args.split(), out=tmp_path / "ref")
    _submit_and_follow(slurm, tmp_path, "pretrain", args, tmp_path / "slurm_run")
    _assert_same_weights(tmp_path / "ref", tmp_path / "slurm_run")


def test_the_recipe_requeues_a_full_finetune_that_ends_like_an_uninterrupted_one(slurm, small_cohort, tmp_path):
    """STEP=finetune: the checkpoints live in .OUT.partial until OUT appears whole; the recipe
    resumes from there and reads the outcome from there."""
    pre = tmp_path / "pre"
    proc = subprocess.run([sys.executable, "-m", "phenoclip", "pretrain", "--modalities", "gene,expr", "--data",
                           str(small_cohort["gene"]), "--data", str(small_cohort["expr"]), "--arch", "gene=mlp",
                           "--arch", "expr=mlp", "--epochs", "2", "--batch-size", "16", "--out", str(pre)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    args = (f"--checkpoint {pre} --labels {small_cohort['dir'] / 'labels.tsv'}:disease --data {small_cohort['gene']} "
            f"--data {small_cohort['expr']} --mode full --label-fractions 1 --repeats 1 --baseline none "
            f"--epochs {FINETUNE_EPOCHS} --batch-size 8 --seed 2")
    _torchrun("finetune", *args.split(), out=tmp_path / "ref")
    out = tmp_path / "slurm_run"
    _submit_and_follow(slurm, tmp_path, "finetune", args, out)
    assert not (tmp_path / ".slurm_run.partial").exists()
    _assert_same_weights(tmp_path / "ref", out)
    rows = [json.loads((d / "metrics.json").read_text())["rows"] for d in (tmp_path / "ref", out)]
    assert rows[0] == rows[1]


def test_the_recipe_requeues_segment_train_that_ends_like_an_uninterrupted_one(slurm, small_cohort, tmp_path):
    """STEP="segment train": like finetune, its checkpoints live in .OUT.partial (under fit/) until
    OUT appears whole; the requeued job resumes and ends with the best-epoch weights and test
    metrics of the same torchrun command run straight through."""
    args = (f"--decoder unet --images {small_cohort['mri']} --epochs {SEGMENT_EPOCHS} --batch-size 4 "
            "--overlays 0 --seed 2")
    _torchrun("segment", "train", *args.split(), out=tmp_path / "ref")
    out = tmp_path / "slurm_run"
    _submit_and_follow(slurm, tmp_path, "segment train", args, out)
    assert not (tmp_path / ".slurm_run.partial").exists()
    _assert_same_weights(tmp_path / "ref", out)
    ref, run = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "ref", out))
    assert (ref["best_epoch"], ref["test"]) == (run["best_epoch"], run["test"])
