"""One explicit training loop: it only steps; the task joins model and objectives.

Determinism: batches of epoch ``e`` are shuffled by a generator seeded with ``(seed, e)``, and
every random draw of the task (masks, corruptions, dropout) comes from RNG states saved in the
checkpoint, so a run stopped anywhere (epoch end, or mid-epoch on SIGTERM/SIGUSR1) and resumed
ends with the same weights as one that never stopped.

Data parallelism is exact: under torchrun, N ranks with batch B split each global batch of
N x B (:func:`_loader`), draw each patient's randomness from its own stream
(:mod:`phenoclip.ops.draws`), normalise over the global batch
(:func:`phenoclip.train.distributed.global_batch_norms`) and compute every loss that compares
patients over the global batch, so they end with the weights of one process with batch N x B
(tested to 1e-4 relative).

Preemption: SIGTERM and SIGUSR1 (SLURM's pre-timeout signal, forwarded by the batch script of
``docs/slurm/pretrain.sbatch``) set a flag. At every step boundary the ranks combine their flags
(:func:`phenoclip.train.distributed.any_rank`), so a signal that reaches one worker stops all of
them after the same step; rank 0 saves one checkpoint (``state.json`` says ``"preempted": true``)
and every rank raises :class:`Preempted`, which the CLI turns into exit code 75 (EX_TEMPFAIL:
"try again") so ``pretrain && finetune`` does not carry on with an unfinished model, while a
requeued job resumes with ``--resume``. torchrun reports a worker's 75 as its own exit 1, so a
batch script decides to requeue from ``state.json``, not from torchrun's exit code.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
from torch.utils.data import DataLoader, Dataset

from phenoclip.data.multimodal import collate
from phenoclip.errors import PhenoclipError, UsageError
from phenoclip.ops.devices import to_device
from phenoclip.progress import Progress
from phenoclip.checkpoint_load import load_training_state, load_weights
from phenoclip.checkpoint_save import save_checkpoint
from phenoclip.train import distributed as dist_utils
from phenoclip.train.stop import StopFlag

EXIT_PREEMPTED = 75


class Preempted(PhenoclipError):
    """A stop signal arrived; a checkpoint was saved (exit 75: rerun with --resume)."""

    exit_code = EXIT_PREEMPTED
    #: every rank stops at the same step and raises this (the CLI names the rank in its line)
    collective = True


class Task(Protocol):
    """What the loop needs of a task (see :mod:`phenoclip.pretrain.task`).

    ``forward(batch)`` is the training step: it returns the weighted total loss and every term
    as a float, so that DistributedDataParallel (which calls forward) can wrap the task. A task
    may also define ``param_groups(lr, weight_decay)`` (see :func:`parameter_groups`).
    """

    generators: dict[str, torch.Generator]

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]: ...

    def after_step(self, progress: float, lr: float) -> None: ...

    def parameters(self): ...

    def state_dict(self): ...


@dataclass
class LoopSettings:
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    num_workers: int = 0
    stop_after_steps: int | None = None  # testing aid: simulate a kill after N optimizer steps
    device: str = "cpu"  # where the task lives; batches are moved there step by step
    #: cosine (linear warm-up, then cosine decay to 0) | constant (``lr`` throughout)
    schedule: str = "cosine"
    #: the progress bar's name; None: no bar (a caller that shows its own, e.g. one per fit)
    progress: str | None = "pretraining"
    #: early stopping: a figure of ``on_epoch_end`` to watch ("min": lower is better, "max": higher);
    #: training ends once its best epoch is ``patience`` epochs behind (None: run every epoch)
    monitor: str | None = None
    monitor_mode: str = "min"
    patience: int | None = None
    #: an epoch is better only by more than this
    min_delta: float = 0.0


def cosine_with_warmup(optimizer, total_steps: int, warmup_steps: int):
    """Linear warm-up then cosine decay to 0 (a LambdaLR, whose state is a plain dict)."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def constant_rate(optimizer):
    """The learning rate as given, every step (a LambdaLR too, so checkpoints look alike)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def parameter_groups(task, settings: LoopSettings) -> list[dict]:
    """AdamW's groups: the task's own (``task.param_groups(lr, weight_decay)``: fine-tuning gives its
    encoders a smaller rate), else weight decay on matrices only (not on norms, biases, temperatures)."""
    if hasattr(task, "param_groups"):
        return task.param_groups(settings.lr, settings.weight_decay)
    params = [p for p in task.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": settings.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def skip(self, n: float) -> None:
        pass

    def advance(self, n: float = 1) -> None:
        pass


def _loader(dataset: Dataset, settings: LoopSettings, epoch: int, skip_batches: int) -> DataLoader:
    """This rank's batches of ``epoch``, from ``skip_batches`` on.

    One permutation of the patients per epoch, seeded by ``(seed, epoch)``; step ``i`` takes the
    global batch ``perm[i*N*B:(i+1)*N*B]`` of N ranks with batch B, and rank ``r`` its ``r``-th slice
    of B. So N processes with batch B see, step by step, exactly the patients of one process with
    batch N x B (the last partial global batch is dropped: contrastive losses need comparable
    batch sizes, and every rank must take the same number of steps).
    """
    g = torch.Generator().manual_seed(settings.seed * 100003 + epoch)
    order = torch.randperm(len(dataset), generator=g).tolist()
    world, me, b = max(1, dist_utils.world_size()), dist_utils.rank(), settings.batch_size
    n_steps = len(order) // (world * b)
    batches = [order[(i * world + me) * b:(i * world + me + 1) * b] for i in range(n_steps)]
    # the loader draws its workers' base seed from `generator`: from the global RNG it would shift
    # the dropout stream of a resumed run (one more iterator is created) and break exact resume
    # a dataset may bring its own collate (segmentation's volumes); the default is the multimodal one
    return DataLoader(dataset, batch_sampler=batches[skip_batches:], collate_fn=getattr(dataset, "collate", collate),
                      num_workers=settings.num_workers, generator=g,
                      pin_memory=settings.device.startswith("cuda"))  # pinned pages copy asynchronously


def best_epoch(history: list[dict], key: str, mode: str = "min", min_delta: float = 0.0) -> int:
    """The best epoch (1-based) of ``history`` by ``key``: the last one that beat the best before it
    by more than ``min_delta`` (0 for an empty history)."""
    if mode not in ("min", "max"):
        raise ValueError(f"unknown monitor mode {mode!r}")
    sign = 1.0 if mode == "min" else -1.0
    best, at = math.inf, 0
    for h in history:
        v = sign * float(h[key])
        if v < best - min_delta:
            best, at = v, int(h["epoch"])
    return at


def patience_spent(history: list[dict], settings: LoopSettings) -> bool:
    """Whether early stopping ends training after ``history``.

    Decided from the history alone (which every checkpoint holds), so a resumed run stops at the
    epoch an uninterrupted one stops at.
    """
    if settings.monitor is None or settings.patience is None or not history:
        return False
    best = best_epoch(history, settings.monitor, settings.monitor_mode, settings.min_delta)
    return int(history[-1]["epoch"]) - best >= settings.patience


def steps_per_epoch(dataset: Dataset, settings: LoopSettings) -> int:
    return max(1, len(dataset) // (max(1, dist_utils.world_size()) * settings.batch_size))


def train(task, dataset: Dataset, settings: LoopSettings, out_dir: str | Path, *, config: dict, state: dict,
          resume: bool = False, on_epoch_end: Callable[[int, dict], dict] | None = None,
          log: Callable[[str], None] = print) -> dict:
    """Train ``task`` on ``dataset``; checkpoint into ``out_dir`` each epoch; return the final state.

    ``state`` carries what the caller wants saved with every checkpoint (the split, say);
    ``on_epoch_end(epoch, logged) -> extra`` may add validation figures to the epoch's history;
    with ``settings.monitor`` and ``settings.patience`` one of them stops training early (the
    caller keeps the best epoch's weights, as it knows what "best" is for). The returned state's
    ``stopped_early`` says whether it did.
    """
    out_dir = Path(out_dir)
    n_steps = steps_per_epoch(dataset, settings)
    if len(dataset) < settings.batch_size * max(1, dist_utils.world_size()):
        raise UsageError(f"only {len(dataset)} training patients for batch size {settings.batch_size}",
                         hint="lower --batch-size")
    task.to(settings.device)  # before the optimizer is built: its state follows the parameters
    groups = parameter_groups(task, settings)
    params = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=settings.lr)
    total = n_steps * settings.epochs
    if settings.schedule not in ("cosine", "constant"):
        raise ValueError(f"unknown schedule {settings.schedule!r}")
    scheduler = (cosine_with_warmup(optimizer, total, int(settings.warmup_fraction * total))
                 if settings.schedule == "cosine" else constant_rate(optimizer))
    model = dist_utils.wrap(task, settings.device)

    epoch, step_in_epoch, history, carried = 0, 0, [], {}
    if resume:
        load_weights(out_dir, task)
        prev = load_training_state(out_dir, optimizer, scheduler, task.generators)
        epoch, step_in_epoch, history = prev["epoch"], prev["step_in_epoch"], prev["history"]
        carried = prev.get("epoch_sums", {})  # loss sums of the interrupted epoch's first steps
        log(f"resuming at epoch {epoch + 1}, step {step_in_epoch}")

    def save(finished: bool, epoch_sums: dict | None = None, preempted: bool = False) -> None:
        if dist_utils.rank() == 0:
            save_checkpoint(out_dir, model=task, config=config, optimizer=optimizer, scheduler=scheduler,
                            generators=task.generators,
                            state={**state, "epoch": epoch, "step_in_epoch": step_in_epoch,
                                   "history": history, "finished": finished, "preempted": preempted,
                                   "epoch_sums": epoch_sums or {}})
        dist_utils.barrier()

    if patience_spent(history, settings):  # resumed after an early stop: nothing left to train
        return {"epoch": epoch, "history": history, "stopped_early": True}
    steps_done, stopped_early = 0, False
    # patients per step, all ranks together (the epoch's last batch may be smaller)
    per_step = len(dataset) / max(1, n_steps)
    bar = (Progress(settings.progress, total, "steps", per_unit=(per_step, "samples")) if settings.progress
           else _NoBar())
    with StopFlag() as stop, bar:
        bar.skip(epoch * n_steps + step_in_epoch)
        while epoch < settings.epochs:
            sums: dict[str, float] = dict(carried)
            carried = {}
            t_epoch, t_wait, n_seen = time.perf_counter(), 0.0, 0
            task.train()
            loader_iter = iter(_loader(dataset, settings, epoch, step_in_epoch))
            while True:
                t0 = time.perf_counter()
                batch = next(loader_iter, None)
                t_wait += time.perf_counter() - t0
                if batch is None:
                    break
                batch = to_device(batch, settings.device, non_blocking=True)
                loss, logged = model(batch)  # the task's forward is its training step (DDP calls forward)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if settings.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
                optimizer.step()
                lr = optimizer.param_groups[0]["lr"]  # the step's own rate, before the schedule moves on
                scheduler.step()
                task.after_step((epoch * n_steps + step_in_epoch + 1) / total, lr)
                step_in_epoch += 1
                steps_done += 1
                n_seen += len(batch["sample_ids"])
                for k, v in logged.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.advance(1)
                here = stop.signal is not None or bool(settings.stop_after_steps
                                                       and steps_done >= settings.stop_after_steps)
                if dist_utils.any_rank(here, settings.device):
                    # every rank resumes with the same partial sums: the ranks' mean (logging only)
                    save(finished=False, epoch_sums=dist_utils.mean_over_ranks(sums, settings.device), preempted=True)
                    why = (f"signal {signal.Signals(stop.signal).name}" if stop.signal
                           else "stop requested" if here else "another rank was asked to stop")
                    raise Preempted(f"{why}: checkpoint saved at epoch {epoch + 1}, step {step_in_epoch}",
                                    out_dir, "rerun the same command with --resume")
            seconds = time.perf_counter() - t_epoch
            steps = max(1, step_in_epoch)
            # a rank's terms are its share of the global loss (per-row terms are scaled, see
            # objectives.distributed): their mean over ranks is what one process would log
            logged_epoch = {k: v / steps for k, v in dist_utils.mean_over_ranks(sums, settings.device).items()}
            logged_epoch.update({"samples_per_s": n_seen * dist_utils.world_size() / max(seconds, 1e-9),
                                 "data_wait_share": t_wait / max(seconds, 1e-9), "lr": scheduler.get_last_lr()[0]})
            if on_epoch_end is not None:
                logged_epoch.update(on_epoch_end(epoch, logged_epoch))
            history.append({"epoch": epoch + 1, **logged_epoch})
            # one readable line; every figure (per pair, per split) is in state.json's history
            shown = {k: v for k, v in logged_epoch.items() if k.count("/") < 2}
            log(f"epoch {epoch + 1}/{settings.epochs} " + " ".join(f"{k}={v:.4g}" for k, v in shown.items()))
            epoch += 1
            step_in_epoch = 0
            stopped_early = patience_spent(history, settings)
            save(finished=epoch >= settings.epochs or stopped_early)
            if stopped_early:
                log(f"stopping early: {settings.monitor} has not improved for {settings.patience} epochs")
                break
    return {"epoch": epoch, "history": history, "stopped_early": stopped_early}
