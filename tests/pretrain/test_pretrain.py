"""phenoclip pretrain: checkpoint contents, exact resume, preemption, bad input, data-parallel runs."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import assert_data_parallel_equal, error_lines, needs, run_cli
from phenoclip.errors import UsageError
from phenoclip.pretrain.settings import PretrainSettings
from phenoclip.train.loop import Preempted
from phenoclip.pretrain.run import run_pretrain
from phenoclip.checkpoint_files import OPTIMIZER_FILE, STATE_FILE
from phenoclip.checkpoint_load import load_training_state, read_state
from phenoclip.store_read import open_store
from phenoclip.store_write import create_store

FAST = {"gene": "mlp", "expr": "mlp"}


def fast_config(cohort, **kw) -> PretrainSettings:
    base = dict(modalities=["gene", "expr"], data=[str(cohort["gene"]), str(cohort["expr"])], objectives=["clip"],
                architectures=dict(FAST), epochs=3, batch_size=16, seed=5)
    base.update(kw)
    return PretrainSettings(**base)


def test_checkpoint_directory_contents(small_cohort, tmp_path):
    out = tmp_path / "pre"
    proc = run_cli("pretrain", "--modalities", "gene,expr", "--data", small_cohort["gene"], "--data", small_cohort["expr"],
                   "--arch", "gene=mlp", "--arch", "expr=mlp", "--epochs", "2", "--batch-size", "16", "--out", out)
    assert proc.returncode == 0, proc.stderr
    for name in ("model.safetensors", "config.json", "state.json", "optimizer.pt", "rng.safetensors", "pretrain.log",
                 "history.png"):
        assert (out / name).exists(), name
    assert (out / "history.png").read_bytes().startswith(b"\x89PNG")  # losses and held-out retrieval per epoch
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["modalities"] == ["gene", "expr"] and cfg["architectures"] == FAST
    state = json.loads((out / "state.json").read_text())
    assert state["epoch"] == 2 and state["finished"] is True
    train, val = state["split"]["train"], state["split"]["validation"]
    assert not set(train) & set(val) and len(val) > 5
    assert len(state["history"]) == 2 and "clip/gene-expr" in state["history"][0]
    assert "val/gene-expr/R@1" in state["history"][-1] and "temperature" in state["history"][-1]
    # weights rebuild from config.json alone
    from phenoclip.pretrain.task import PretrainTask
    task = PretrainTask(PretrainSettings.from_dict(cfg))
    task.load_state_dict(load_file(str(out / "model.safetensors")))
    log = (out / "pretrain.log").read_text()
    assert "epoch 2/2" in log and "seed: 0" in log


def test_val_samples_fixes_the_held_out_patients(small_cohort, tmp_path):
    """--val-samples: the listed patients (those in the stores) are validation, whatever the modalities."""
    import h5py

    with h5py.File(small_cohort["expr"]) as f:
        expr_ids = [s.decode() for s in f["samples"][:]]
    chosen = expr_ids[:7] + ["NOT_A_PATIENT"]
    ids = tmp_path / "val.txt"
    ids.write_text("# held out for every ablation\n" + "\n".join(chosen) + "\n")
    common = ["--arch", "gene=mlp", "--arch", "expr=mlp", "--epochs", "1", "--batch-size", "16", "--val-samples", ids]
    out = tmp_path / "pre"
    proc = run_cli("pretrain", "--modalities", "gene,expr", "--data", small_cohort["gene"], "--data",
                   small_cohort["expr"], *common, "--out", out)
    assert proc.returncode == 0, proc.stderr
    state = json.loads((out / "state.json").read_text())
    assert sorted(state["split"]["validation"]) == sorted(expr_ids[:7])
    assert not set(state["split"]["train"]) & set(expr_ids[:7])
    # patients of none of the stores: one line, exit 5, no checkpoint
    ids.write_text("NOBODY\nNOBODY_ELSE\n")
    proc = run_cli("pretrain", "--modalities", "gene,expr", "--data", small_cohort["gene"], "--data",
                   small_cohort["expr"], *common, "--out", tmp_path / "bad")
    assert proc.returncode == 5 and len(error_lines(proc)) == 1 and "--val-samples" in proc.stderr
    assert not (tmp_path / "bad" / "model.safetensors").exists()


def test_interrupted_and_resumed_run_ends_with_identical_weights(small_cohort, tmp_path):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    run_pretrain(fast_config(small_cohort), straight, log=lambda s: None)
    with pytest.raises(Preempted):  # killed mid-epoch 2 (after 5 optimizer steps)
        run_pretrain(fast_config(small_cohort), broken, stop_after_steps=5, log=lambda s: None)
    assert json.loads((broken / "state.json").read_text())["finished"] is False
    run_pretrain(fast_config(small_cohort), broken, resume=True, log=lambda s: None)
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(broken / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ha = json.loads((straight / "state.json").read_text())["history"]
    hb = json.loads((broken / "state.json").read_text())["history"]
    assert [h["loss"] for h in ha] == pytest.approx([h["loss"] for h in hb], rel=1e-6)


def _pretrain_argv(cohort, out, *extra):
    return [sys.executable, "-m", "phenoclip", "pretrain", "--modalities", "gene,expr", "--data", str(cohort["gene"]),
            "--data", str(cohort["expr"]), "--arch", "gene=mlp", "--arch", "expr=mlp", "--epochs", "3",
            "--batch-size", "16", "--seed", "5", "--out", str(out), *extra]


def _traced_renames(argv, trace, inject_at=None):
    """Run ``argv`` under strace, tracing rename(2); with ``inject_at``, SIGKILL the process at that
    (1-based) rename instead of performing it. Returns (exit status, renamed-to paths)."""
    cmd = ["strace", "-f", "-qq", "-o", str(trace), "-e", "trace=rename"]
    if inject_at is not None:
        cmd += ["-e", f"inject=rename:signal=SIGKILL:when={inject_at}"]
    proc = subprocess.run(cmd + argv, capture_output=True, text=True, timeout=600)
    targets = [line.split('", "')[1].split('"')[0] for line in trace.read_text().splitlines() if 'rename("' in line]
    return proc.returncode, targets


@needs("strace")
@pytest.mark.parametrize("cut", ["before_commit", "between_moves"])
def test_kill_while_saving_leaves_the_old_or_the_new_checkpoint(small_cohort, tmp_path, cut):
    """Fault injection with strace: SIGKILL at one rename of the second epoch's checkpoint save.
    Before the journal commits, the epoch-1 checkpoint stands; between the moves of the files (the
    case where state.json of one epoch sat beside the weights of another), the next reader
    finishes the moves. Either way --resume ends with the weights of an uninterrupted run."""
    ref = tmp_path / "ref"
    code, targets = _traced_renames(_pretrain_argv(small_cohort, ref), tmp_path / "ref.trace")
    assert code == 0
    commits = [i for i, t in enumerate(targets) if t.endswith("/.commit")]
    assert len(commits) == 3, targets  # one save per epoch
    moves = [i for i, t in enumerate(targets) if i > commits[1] and t.endswith("/state.json")]
    at = commits[1] if cut == "before_commit" else moves[0]   # state.json is moved last (names in order)
    out = tmp_path / "cut"
    code, _ = _traced_renames(_pretrain_argv(small_cohort, out), tmp_path / "cut.trace", inject_at=at + 1)
    assert code != 0
    assert list(out.glob(".tmp-*")) and (out / ".commit").exists() == (cut == "between_moves")
    assert read_state(out)["epoch"] == (1 if cut == "before_commit" else 2)
    assert not list(out.glob(".tmp-*")) and not (out / ".commit").exists()
    proc = run_cli(*_pretrain_argv(small_cohort, out, "--resume")[3:])
    assert proc.returncode == 0, proc.stderr
    a, b = load_file(str(ref / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ctrl_c_exits_130_with_one_line(small_cohort, tmp_path):
    """SIGINT mid-training: exit 130 and one line, not exit 0 (the next step of a pipeline must not run);
    what is on disk is a whole checkpoint of the last saved epoch."""
    out = tmp_path / "pre"
    argv = _pretrain_argv(small_cohort, out)
    argv[argv.index("--epochs") + 1] = "400"
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stderr:
        if line.startswith("epoch 2/"):
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, rest
    last = [line for line in rest.splitlines() if line.strip()][-1]
    assert last.startswith("phenoclip: interrupted") and "Traceback" not in rest
    state = read_state(out)   # Ctrl-C may land inside a save: the reader sees one whole epoch
    assert state["finished"] is False and state["epoch"] >= 1
    assert not list(out.glob(".tmp-*")) and not (out / ".commit").exists()


def test_sigusr1_saves_checkpoint_and_exits_75_then_resumes(small_cohort, tmp_path):
    out = tmp_path / "pre"
    cmd = [sys.executable, "-m", "phenoclip", "pretrain", "--modalities", "gene,expr", "--data", str(small_cohort["gene"]),
           "--data", str(small_cohort["expr"]), "--arch", "gene=mlp", "--arch", "expr=mlp", "--epochs", "400",
           "--batch-size", "16", "--out", str(out)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stderr:  # wait until training is under way, then send SLURM's pre-timeout signal
        if line.startswith("epoch 1/"):
            proc.send_signal(signal.SIGUSR1)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 75, rest
    assert "checkpoint saved" in rest and "--resume" in rest
    state = json.loads((out / "state.json").read_text())
    assert state["finished"] is False and 1 <= state["epoch"] < 400
    # a different configuration is refused
    proc2 = run_cli(*cmd[3:], "--resume", "--lr", "0.5")
    assert proc2.returncode == 5 and "another configuration" in proc2.stderr


def test_bad_inputs(small_cohort, tmp_path):
    g, e = small_cohort["gene"], small_cohort["expr"]
    # a modality named that no store provides
    proc = run_cli("pretrain", "--modalities", "gene,mri", "--data", g, "--data", e, "--out", tmp_path / "a")
    assert proc.returncode == 5 and "modality 'mri'" in proc.stderr and len(error_lines(proc)) == 1
    # stores with no patients in common
    other = tmp_path / "other.h5"
    with open_store(e) as src, create_store(other, "expression", [f"X{i}" for i in range(20)]) as w:
        w.array("genes", src.strings("genes"))
        w.per_sample("values", src["values"][:20])
    proc = run_cli("pretrain", "--modalities", "gene,expr", "--data", g, "--data", other, "--out", tmp_path / "b")
    assert proc.returncode == 5 and "share no patients" in proc.stderr
    # a store that is not a training input / not a store
    (tmp_path / "junk.h5").write_text("not hdf5")
    proc = run_cli("pretrain", "--modalities", "gene,expr", "--data", g, "--data", tmp_path / "junk.h5", "--out", tmp_path / "c")
    assert proc.returncode == 4 and "not an HDF5 file" in proc.stderr
    # impossible objective combinations are usage errors
    proc = run_cli("pretrain", "--modalities", "expr", "--data", e, "--objective", "clip", "--out", tmp_path / "d")
    assert proc.returncode == 2 and "two --modalities" in proc.stderr
    # a checkpoint whose weights are not safetensors
    out = tmp_path / "pre"
    run_pretrain(fast_config(small_cohort, epochs=1), out, log=lambda s: None)
    (out / "model.safetensors").write_bytes(b"\x80\x04pickled")
    proc = run_cli("pretrain", "--modalities", "gene,expr", "--data", g, "--data", e, "--arch", "gene=mlp",
                   "--arch", "expr=mlp", "--objective", "clip", "--epochs", "2", "--batch-size", "16", "--seed", "5",
                   "--out", out, "--resume")
    assert proc.returncode == 4 and "not a safetensors file" in proc.stderr, proc.stderr
    # resuming a CLIP-only checkpoint without --objective (the default is now clip,scarf with expr) is refused in one line
    proc = run_cli("pretrain", "--modalities", "gene,expr", "--data", g, "--data", e, "--arch", "gene=mlp",
                   "--arch", "expr=mlp", "--epochs", "2", "--batch-size", "16", "--seed", "5", "--out", out, "--resume")
    assert proc.returncode == 5 and "objectives was ['clip']" in proc.stderr and len(error_lines(proc)) == 1, proc.stderr


@pytest.mark.slow
def test_torchrun_two_cpu_processes(small_cohort, tmp_path):
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    out = tmp_path / "ddp"
    cmd = [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "phenoclip", "pretrain", "--modalities", "gene,expr",
           "--data", str(small_cohort["gene"]), "--data", str(small_cohort["expr"]), "--arch", "gene=mlp",
           "--arch", "expr=mlp", "--epochs", "2", "--batch-size", "8", "--out", str(out), "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((out / "state.json").read_text())
    assert state["finished"] and state["world_size"] == 2
    # each rank saw its own half of every epoch: samples/s counts both ranks
    assert state["history"][-1]["samples_per_s"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("objective,modalities", [("clip", "gene,expr"), ("clip,ontology", "gene,expr,hpo"),
                                                  ("scarf", "expr"), ("clip,scarf", "gene,expr")])
def test_two_processes_with_batch_b_train_like_one_with_batch_2b(small_cohort, tmp_path, objective, modalities):
    """Data-parallel training is exact: torchrun with 2 CPU processes (gloo) at batch 8 ends with the
    weights of one process at batch 16 (default augmentation, dropout and batch norm included): the
    ranks split each global batch, draw every patient's augmentations, masks and dropout from its
    own stream, normalise over the global batch, and compute SCARF's InfoNCE and the ontology loss
    over the global batch. Before: SCARF's and the ontology loss were per rank, batch norm per rank
    and each rank drew from its own generator."""
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    stores = {"gene": small_cohort["gene"], "expr": small_cohort["expr"], "hpo": small_cohort["pheno"]}
    args = ["pretrain", "--modalities", modalities, "--objective", objective, "--epochs", "3", "--seed", "5",
            "--threads", "1", "--arch", "expr=mlp"]
    for m in modalities.split(","):
        args += ["--data", str(stores[m])]
    if "gene" in modalities:
        args += ["--arch", "gene=mlp"]
    one, two = tmp_path / "one", tmp_path / "two"
    proc = subprocess.run([sys.executable, "-m", "phenoclip", *args, "--batch-size", "16", "--out", str(one)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", "-m", "phenoclip", *args,
                           "--batch-size", "8", "--out", str(two)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s1, s2 = (json.loads((d / "state.json").read_text()) for d in (one, two))
    assert (s1["world_size"], s2["world_size"]) == (1, 2) and len(s1["history"]) == len(s2["history"]) == 3
    for h1, h2 in zip(s1["history"], s2["history"]):
        assert h1["loss"] == pytest.approx(h2["loss"], rel=1e-5), (h1["loss"], h2["loss"])
    assert_data_parallel_equal(one, two)


def _worker_of_rank(launcher_pid: int, rank: int) -> int | None:
    """The pid of torchrun's worker with RANK=rank (read from /proc), or None while it starts."""
    try:
        children = open(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read().split()
    except OSError:
        return None
    for pid in map(int, children):
        try:
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return pid
    return None


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step_and_resumes_exactly(small_cohort, tmp_path):
    """Each rank used to check only its own stop flag: the signalled rank went into the checkpoint's
    barrier while the other started the next step's all-gather. Now the flags are all-reduced at each
    step boundary: a SIGUSR1 to rank 1 alone stops both after the same step, one checkpoint is written
    (state.json: preempted), and resuming ends with the weights of a run that never stopped."""
    if not os.path.isdir("/proc/self/task"):
        pytest.skip("finding torchrun's workers reads /proc")
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    args = ["-m", "phenoclip", "pretrain", "--modalities", "gene,expr", "--data", str(small_cohort["gene"]),
            "--data", str(small_cohort["expr"]), "--arch", "gene=mlp", "--arch", "expr=mlp", "--epochs", "40",
            "--batch-size", "8", "--seed", "5", "--threads", "1"]
    launch = [torchrun, "--standalone", "--nproc-per-node", "2"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    proc = subprocess.run([*launch, *args, "--out", str(ref)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    job = subprocess.Popen([*launch, *args, "--out", str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    try:
        while not (run / "state.json").exists() and job.poll() is None:  # the first epoch is saved
            time.sleep(0.05)
        worker = _worker_of_rank(job.pid, 1)
        assert worker is not None, "rank 1 not found"
        os.kill(worker, signal.SIGUSR1)
        _, err = job.communicate(timeout=300)
    finally:
        job.kill()
    assert job.returncode != 0  # torchrun reports the workers' 75 as a failure of its own
    state = json.loads((run / "state.json").read_text())
    assert state["preempted"] and not state["finished"] and state["epoch"] < 40, state["epoch"]
    stopped = [line for line in err.splitlines() if "checkpoint saved at epoch" in line]
    assert len(stopped) == 2 and len({line.split("checkpoint saved at ")[1] for line in stopped}) == 1, stopped
    assert any("signal SIGUSR1" in line for line in stopped)
    assert any("another rank was asked to stop" in line for line in stopped)
    assert sorted(line.split(":")[1] for line in stopped) == [" error (rank 0)", " error (rank 1)"], stopped

    proc = subprocess.run([*launch, *args, "--out", str(run), "--resume"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((run / "state.json").read_text())
    assert state["finished"] and not state["preempted"]
    a, b = load_file(ref / "model.safetensors"), load_file(run / "model.safetensors")
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_a_cohort_too_small_to_train_is_refused(small_cohort, tmp_path):
    """A 1-sample store reached the first batch and died (exit 70, "Expected more than 1 value per
    channel"): refused up front with the minimum."""

    for n in (1, 5):
        tiny = {}
        for m in ("gene", "expr"):
            with open_store(small_cohort[m]) as src:
                tiny[m] = tmp_path / f"{m}{n}.h5"
                with create_store(tiny[m], src.schema, src.samples[:n], attrs=dict(src.attrs)) as w:
                    for name in src.h5:
                        if name == "samples":
                            continue
                        if isinstance(src.h5[name], h5py.Group):
                            for sub in src.h5[name]:
                                w.array(f"{name}/{sub}", src.h5[name][sub][...])
                        elif src.h5[name].shape and src.h5[name].shape[0] == len(src.samples):
                            w.per_sample(name, src.h5[name][:n])
                        else:
                            w.array(name, src.h5[name][...])
        proc = run_cli("pretrain", "--modalities", "gene,expr", "--data", tiny["gene"], "--data", tiny["expr"],
                       "--arch", "gene=mlp", "--arch", "expr=mlp", "--out", tmp_path / f"pre{n}")
        assert proc.returncode == 5, proc.stderr
        [line] = error_lines(proc)
        assert f"{n} patient(s) have the named modalities" in line and "at least 8 training patients" in line
        assert not (tmp_path / f"pre{n}").exists()


def test_readme_paper000_command_masks_haplotype_blocks_from_the_phased_haplotypes(sample_stores, tmp_path):
    """The README's paper-000 command with the default preset exited 70 ("mhm needs a token-based
    gene encoder"), and mhm estimated its blocks from dosages though every store carries phased
    haplotypes. Now: the variant transformer is chosen (and said), the blocks come from the
    haplotypes (and the log says so)."""
    out = tmp_path / "gm"
    proc = run_cli("pretrain", "--modalities", "gene,mri", "--data", sample_stores["gene"], "--data",
                   sample_stores["mri"], "--data", sample_stores["pheno"], "--objective", "clip,ontology,mvm,mhm",
                   "--weight", "ontology=0.5", "--out", out, "--epochs", "1")
    assert proc.returncode == 0, proc.stderr
    assert "the gene encoder is the variant transformer" in proc.stderr
    log = (out / "pretrain.log").read_text()
    assert "haplotype blocks estimated from the phased haplotypes of" in log, log
    state = json.loads((out / "state.json").read_text())
    assert state["mhm_blocks_from"].startswith("the phased haplotypes")
    assert "mhm" in state["history"][0] and json.loads((out / "config.json").read_text())["architectures"]["gene"] \
        == "transformer"
    # an explicit MLP cannot be masked token by token: one line, exit 2
    proc = run_cli("pretrain", "--modalities", "gene,mri", "--data", sample_stores["gene"], "--data",
                   sample_stores["mri"], "--objective", "clip,mhm", "--arch", "gene=mlp", "--out", tmp_path / "x")
    assert proc.returncode == 2 and "gene=mlp encoder has none" in proc.stderr and len(error_lines(proc)) == 1



def test_an_optimizer_state_of_other_trainable_parameters_is_refused_in_one_line(tmp_path):
    """Biases before batch norm stopped training in this release, so an optimizer.pt written before
    has one more parameter per such layer: resuming it was a ValueError from torch (exit 70)."""
    from phenoclip.errors import InconsistentInputError

    old = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))]
    torch.save({"optimizer": torch.optim.AdamW(old).state_dict(), "scheduler": None}, tmp_path / OPTIMIZER_FILE)
    (tmp_path / STATE_FILE).write_text("{}")
    now = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))])
    with pytest.raises(InconsistentInputError, match="does not fit this model's trainable parameters"):
        load_training_state(tmp_path, now)


def test_the_dosage_mlps_l1_step_runs_after_every_pretraining_step(small_cohort, tmp_path, monkeypatch):
    """DosageMLPConfig.l1 (off in every preset) soft-thresholds the gene MLP's first layer by the
    step's learning rate times l1 after each optimizer step: at 1.0 many weights end exactly zero (none without it)."""
    from phenoclip.models import presets
    from phenoclip.pretrained import load_pretrained

    zero = {}
    for l1 in (0.0, 1.0):
        monkeypatch.setattr(presets.TINY.gene_mlp, "l1", l1)
        out = tmp_path / f"l1_{l1}"
        run_pretrain(fast_config(small_cohort, epochs=6), out, log=lambda s: None)
        enc = load_pretrained(out).model.encoders["gene"]
        assert enc.config["l1"] == l1
        zero[l1] = float((enc.net[0].weight == 0).float().mean())
    assert zero[0.0] == 0.0 and zero[1.0] > 0.3, zero  # measured 0.40 after 6 epochs


def test_the_last_epoch_fits_the_gene_read_out_and_older_checkpoints_still_load(small_cohort, tmp_path):
    """The genotype read-out (models.readout) is fitted once, on the training patients, before the
    last save; --no-gene-readout and checkpoints written before it existed have none."""
    from safetensors.torch import save_file
    from phenoclip.pretrained import load_pretrained, random_init_like

    out = tmp_path / "pre"
    run_pretrain(fast_config(small_cohort, epochs=2), out, log=lambda s: None)
    history = read_state(out)["history"]
    assert "gene_readout/alpha" not in history[0] and history[-1]["gene_readout/alpha"] > 0
    train = read_state(out)["split"]["train"]
    with open_store(small_cohort["gene"]) as g, open_store(small_cohort["expr"]) as e:
        both = set(g.samples) & set(e.samples)   # genotypes and a teacher modality
    assert history[-1]["gene_readout/patients"] == len([x for x in train if x in both])
    pre = load_pretrained(out)
    assert json.loads((out / "config.json").read_text())["gene_readout"] is True
    assert pre.model.has_readout("gene") and not random_init_like(pre, 1).has_readout("gene")
    # as before this release: no config key, no read-out weights
    cfg = json.loads((out / "config.json").read_text())
    del cfg["gene_readout"]
    (out / "config.json").write_text(json.dumps(cfg))
    save_file({k: v for k, v in load_file(out / "model.safetensors").items() if ".readouts." not in k},
              out / "model.safetensors")
    assert not load_pretrained(out).model.readouts
    off = tmp_path / "off"
    run_pretrain(fast_config(small_cohort, epochs=1, gene_readout=False), off, log=lambda s: None)
    assert not load_pretrained(off).model.readouts and "gene_readout/alpha" not in read_state(off)["history"][-1]


def test_the_read_out_keeps_cross_fitted_values_and_the_eqtl_snps_and_older_checkpoints_load(small_cohort, tmp_path,
                                                                                              monkeypatch):
    """Beside its fit the read-out keeps each fit patient's cross-fitted value (from the fit's own folds)
    and the SNPs the eQTL screen of the training patients keeps: what the gene probe's honest choice
    reads (eval.gene_probe). A checkpoint from before them loads without them."""
    from safetensors.torch import save_file
    from phenoclip.data.multimodal import CohortStores, MultimodalDataset, collate
    from phenoclip.eval.eqtl_screen import screen_cohort
    from phenoclip.pretrain import readout as fitting
    from phenoclip.pretrained import load_pretrained

    # the small cohort's 42 fit patients are below the folds' minimum: cross-validate them anyway
    monkeypatch.setattr(fitting, "SCREEN_MIN_PATIENTS", 20)
    out = tmp_path / "pre"
    run_pretrain(fast_config(small_cohort, epochs=1, val_fraction=0.1), out, log=lambda s: None)
    last = read_state(out)["history"][-1]
    pre = load_pretrained(out)
    readout = pre.model.readouts["gene"]
    train = pre.train_samples
    assert readout.n_patients == len(train) and last["gene_readout/patients"] >= 20
    stores = CohortStores([str(small_cohort["gene"]), str(small_cohort["expr"])])
    assert sorted(readout.eqtl_index) == sorted(screen_cohort(stores, train)) and len(readout.eqtl_index) > 0
    kept = readout.crossfit_set.numpy() > 0
    assert kept.sum() == last["gene_readout/crossfit"] == last["gene_readout/patients"]
    assert readout.has_choice and pre.model.probe_components("gene")
    ds = MultimodalDataset(stores, ["gene"], train)
    dosage = collate([ds[i] for i in range(len(train))])["gene"]["dosage"]
    in_sample = readout({"dosage": dosage}).detach().numpy()
    crossfit = readout.crossfit.numpy()
    # a fit that did not see the patient: not the in-sample value, but the same map of the same dosages
    assert not np.allclose(crossfit[kept], in_sample[kept], atol=1e-3)
    r = np.corrcoef(crossfit[kept].ravel(), in_sample[kept].ravel())[0, 1]
    assert 0.3 < r < 0.999, r
    block = pre.model.probe_features("gene", {"dosage": dosage})
    assert block.shape == (len(train), pre.model.embed_dim + len(readout.eqtl_index))
    honest = pre.honest_gene_block(train, block.detach().numpy())
    np.testing.assert_allclose(honest[kept, :pre.model.embed_dim], crossfit[kept], rtol=1e-6)
    np.testing.assert_allclose(honest[:, pre.model.embed_dim:], block[:, pre.model.embed_dim:].numpy(), rtol=1e-6)
    # as before this release: no config key, no buffers for them; the read-out alone
    cfg = json.loads((out / "config.json").read_text())
    del cfg["gene_probe_choice"]
    (out / "config.json").write_text(json.dumps(cfg))
    save_file({k: v for k, v in load_file(out / "model.safetensors").items()
               if not k.endswith((".crossfit", ".crossfit_set", ".eqtl"))}, out / "model.safetensors")
    old = load_pretrained(out).model
    assert old.has_readout("gene") and not old.probe_components("gene") and old.probe_width("gene") == old.embed_dim


def _expression_of_the_first(cohort, n: int, path):
    """An expression store holding only the cohort's first ``n`` patients (the others lack expression)."""
    with open_store(cohort["expr"]) as src, create_store(path, "expression", src.samples[:n]) as w:
        w.array("genes", src.strings("genes"))
        w.per_sample("values", src["values"][:n])
    return path


def test_scarf_beside_clip_corrupts_expression_from_the_patients_that_have_it(small_cohort, tmp_path):
    """``--objective clip,scarf``: SCARF's InfoNCE on expression beside CLIP. A quarter of the patients
    have no expression here: the replacement values come from the training patients that have it,
    the term is logged beside CLIP's, and a run stopped mid-epoch resumes to the same weights."""
    sub = _expression_of_the_first(small_cohort, 48, tmp_path / "expr_sub.h5")
    cfg = dict(data=[str(small_cohort["gene"]), str(sub)], objectives=["clip", "scarf"])
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    run_pretrain(fast_config(small_cohort, **cfg), straight, log=lambda s: None)
    config = json.loads((straight / "config.json").read_text())
    n_train, n_expr = config["data_shapes"]["n_train"], config["data_shapes"]["n_tabular_train"]
    assert n_expr < n_train and n_expr == pytest.approx(0.75 * n_train, abs=6), (n_expr, n_train)
    history = json.loads((straight / "state.json").read_text())["history"]
    first, last = history[0], history[-1]
    assert {"clip", "scarf"} <= set(last) and last["loss"] == pytest.approx(last["clip"] + last["scarf"], rel=1e-5)
    assert last["scarf"] < first["scarf"]  # the corrupted views are told apart better as it trains
    with pytest.raises(Preempted):
        run_pretrain(fast_config(small_cohort, **cfg), broken, stop_after_steps=5, log=lambda s: None)
    run_pretrain(fast_config(small_cohort, **cfg), broken, resume=True, log=lambda s: None)
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(broken / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("arch", ["mamba", "mlp"])
def test_scarf_beside_clip_trains_through_batches_with_fewer_than_two_expression_profiles(small_cohort, tmp_path, arch):
    """Three of 64 patients have expression: most batches of 8 hold none or one. The Mamba encoder
    cannot take an empty batch and the MLP's batch norm needs two rows; SCARF's term is 0 on a
    batch without expression and the run ends with finite weights."""
    sub = _expression_of_the_first(small_cohort, 3, tmp_path / "expr_three.h5")
    cfg = fast_config(small_cohort, data=[str(small_cohort["gene"]), str(sub)], objectives=["clip", "scarf"],
                      architectures={"gene": "mlp", "expr": arch}, epochs=2, batch_size=8)
    run_pretrain(cfg, tmp_path / "run", log=lambda s: None)
    history = json.loads((tmp_path / "run" / "state.json").read_text())["history"]
    assert len(history) == 2 and all(np.isfinite(h["scarf"]) and np.isfinite(h["loss"]) for h in history)
    weights = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


@pytest.mark.parametrize("objective,modalities,message", [
    ("clip,vime", "gene,expr", "one tabular modality"),
    ("clip,scarf", "gene,mri", "one tabular modality"),
    ("scarf", "gene,expr", "one tabular modality")])
def test_tabular_objectives_beside_clip_are_scarf_on_expression_only(objective, modalities, message):
    cfg = PretrainSettings(modalities=modalities.split(","), data=["x.h5"], objectives=objective.split(","))
    with pytest.raises(UsageError, match=message):
        cfg.validate()
    ok = PretrainSettings(modalities=["gene", "expr"], data=["x.h5"], objectives=["clip", "scarf"]).validate()
    assert ok.tabular_modality == "expr"
    assert PretrainSettings(modalities=["gene"], data=["x.h5"], objectives=["scarf"]).validate().tabular_modality == "gene"
    # without --objective: SCARF on expression beside CLIP where expression is among the modalities
    assert PretrainSettings(modalities=["gene", "expr", "hpo"], data=["x.h5"]).objectives == ["clip", "scarf"]
    assert PretrainSettings(modalities=["gene", "mri"], data=["x.h5"]).objectives == ["clip"]
    assert PretrainSettings.from_dict({"modalities": ["gene", "expr"], "data": ["x.h5"], "objectives": ["clip"]}).objectives == ["clip"]
