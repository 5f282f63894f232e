"""Checkpoint directories: ``model.safetensors`` + ``config.json`` + ``state.json`` + ``optimizer.pt``.

* ``model.safetensors``: every parameter and buffer (safetensors: no code runs on load).
* ``config.json``: the resolved configuration, enough to rebuild the model with no other input.
* ``state.json``: progress (epoch, step, history), the patient split, numpy/python RNG states.
* ``optimizer.pt``: optimizer and scheduler state, loaded with ``torch.load(weights_only=True)``
  so a tampered file cannot execute code.
* ``rng.safetensors``: torch RNG states, so a resumed run draws the same masks and dropout.

A checkpoint appears whole or not at all (a write-ahead journal; the files keep their names so
scripts can read ``DIR/model.safetensors``):

1. every file is written and flushed to disk in ``DIR/.tmp-PID``;
2. ``DIR/.commit`` (naming that folder and its files) is written atomically: from here on the
   new checkpoint is the committed one;
3. the files are moved into place one by one, then the journal and the folder are removed.

A kill before step 2 leaves the previous checkpoint intact (the stale folder is removed by the
next reader); a kill during step 3 leaves a journal, and the next reader of the checkpoint
(:func:`recover`, called by every loader here) finishes the moves first. Either way a reader
sees the old checkpoint or the new one, never files of two epochs.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from phenoclip import __version__
from phenoclip.errors import InconsistentInputError, InputMissingError, MalformedInputError, OutputError
from phenoclip.memory import require_memory
from phenoclip.staging import pid_alive

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.safetensors"
#: statistics the inputs were scaled with in training (per-gene expression mean/std), so a later
#: step on another cohort scales its data the same way
DATA_STATS_FILE = "data_stats.safetensors"
#: the write-ahead journal of a checkpoint being moved into place
JOURNAL_FILE = ".commit"


def rng_state(generators: dict[str, torch.Generator] | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors for safetensors, JSON-able dict) capturing torch, numpy and python RNG states."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # dropout on a GPU draws from the CUDA generators: without them a resume would differ
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = state
    for name, g in (generators or {}).items():
        tensors[f"gen_{name}"] = g.get_state()
    py = random.getstate()
    state = {"numpy": _jsonable(np.random.get_state()), "python": [py[0], list(py[1]), py[2]]}
    return tensors, state


def set_rng_state(tensors: dict[str, torch.Tensor], state: dict,
                  generators: dict[str, torch.Generator] | None = None) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            if f"torch_cuda_{i}" in tensors:
                torch.cuda.set_rng_state(tensors[f"torch_cuda_{i}"], i)
    for name, g in (generators or {}).items():
        if f"gen_{name}" in tensors:
            g.set_state(tensors[f"gen_{name}"])
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32), *np_state[2:]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def _jsonable(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (tuple, list)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def save_checkpoint(directory: str | os.PathLike, *, model: torch.nn.Module, config: dict, state: dict,
                    optimizer: torch.optim.Optimizer | None = None, scheduler=None,
                    generators: dict[str, torch.Generator] | None = None) -> Path:
    """Write a complete checkpoint directory (whole or not at all, see the module docstring)."""
    directory = Path(directory)
    created = not directory.exists()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the checkpoint folder ({e.strerror})", directory) from None
    recover(directory)
    tmp = directory / f".tmp-{os.getpid()}"
    try:
        tmp.mkdir(exist_ok=True)
        _write_files(tmp, model, config, state, optimizer, scheduler, generators)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if created and not any(directory.iterdir()):
            directory.rmdir()   # the first save failed: leave no empty checkpoint folder behind
        # safetensors reports a full disk as its own error type: make it the OSError it is
        if not isinstance(e, OSError) and "os error 28" in str(e):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory)) from None
        raise
    committed = False
    try:
        names = sorted(f.name for f in tmp.iterdir())
        for name in names:
            _fsync(tmp / name)
        _fsync(tmp)
        journal_tmp = directory / f"{JOURNAL_FILE}.tmp-{os.getpid()}"
        journal_tmp.write_text(json.dumps({"folder": tmp.name, "files": names}))
        _fsync(journal_tmp)
        os.replace(journal_tmp, directory / JOURNAL_FILE)   # the commit point
        committed = True
        _fsync(directory)
        _roll_forward(directory)
    finally:
        if not committed:  # after the commit the staged files belong to the journal's roll-forward
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _write_files(tmp: Path, model, config, state, optimizer, scheduler, generators) -> None:
    # safetensors refuses shared storage; contiguous clones keep tied weights loadable
    # (copied to the CPU: a checkpoint written on a GPU loads on a laptop as it is)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(tensors, str(tmp / MODEL_FILE), metadata={"phenoclip_version": __version__})
    rng_tensors, rng_json = rng_state(generators)
    save_file(rng_tensors, str(tmp / RNG_FILE))
    full_state = {**state, "rng": rng_json, "phenoclip_version": __version__}
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    (tmp / STATE_FILE).write_text(json.dumps(full_state, indent=2, default=str))
    if optimizer is not None:
        torch.save({"optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None},
                   tmp / OPTIMIZER_FILE)


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to disk, so the commit point means what it says."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders; the rename order still holds
        pass
    finally:
        os.close(fd)


def _roll_forward(directory: Path) -> None:
    """Finish moving a committed checkpoint into place (idempotent), then drop its journal."""
    journal = directory / JOURNAL_FILE
    try:
        entry = json.loads(journal.read_text())
        folder, names = directory / entry["folder"], list(entry["files"])
    except (OSError, ValueError, KeyError, TypeError):
        raise MalformedInputError("checkpoint journal .commit is unreadable", journal,
                                  "the checkpoint may be half-written: re-create it") from None
    for name in names:
        if (folder / name).exists():
            os.replace(folder / name, directory / name)
    journal.unlink()
    shutil.rmtree(folder, ignore_errors=True)


def recover(directory: str | os.PathLike) -> None:
    """Make a checkpoint folder whole after a kill while saving: finish a committed save (its
    journal is present) and remove staging folders of writers that are gone (their save never
    committed, so the previous checkpoint stands)."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    try:
        if (directory / JOURNAL_FILE).exists():
            _roll_forward(directory)
        for stale in directory.glob(".tmp-*"):
            pid = stale.name[len(".tmp-"):]
            if stale.is_dir() and pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
        for stale in directory.glob(f"{JOURNAL_FILE}.tmp-*"):
            stale.unlink(missing_ok=True)
    except PermissionError as e:
        raise OutputError(f"the checkpoint was interrupted while being saved and cannot be completed here "
                          f"({e.strerror})", directory, "make the folder writable once, then rerun") from None


#: a config.json may describe a model this much larger than its weights file before the two are
#: called inconsistent (the file also holds objective heads; a model never outgrows its weights)
_SLACK_BYTES = 64 << 20


def build_checked(directory: str | os.PathLike, build: Callable[[], torch.nn.Module],
                  what: str = "a phenoclip model") -> torch.nn.Module:
    """Build the model ``config.json`` describes without trusting its sizes.

    ``build`` runs first on PyTorch's meta device (shapes only, no memory): a config it cannot
    build from (an unknown architecture, a negative or textual size) is malformed (exit 4); one
    that asks for far more parameters than ``model.safetensors`` holds (``embed_dim`` 1e9) does
    not belong to its weights (exit 5); then the size is checked against available memory, and
    only then is the model built for real.
    """
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    try:
        with torch.device("meta"):
            probe = build()
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError) as e:
        raise MalformedInputError(f"does not describe {what} ({type(e).__name__}: {e})", config_path,
                                  "re-create the checkpoint") from None
    except (RuntimeError, NotImplementedError):
        probe = None  # a constructor that needs real data: sized by the build itself below
    if probe is not None:
        need = sum(t.numel() * t.element_size() for t in probe.state_dict().values())
        weights = directory / MODEL_FILE
        have = weights.stat().st_size if weights.exists() else None
        if have is not None and need > 2 * have + _SLACK_BYTES:
            raise InconsistentInputError(
                f"describes a model of {need / 2**20:,.0f} MiB but {MODEL_FILE} holds "
                f"{have / 2**20:,.1f} MiB: they do not belong together", config_path,
                "re-create the checkpoint; do not edit config.json")
        require_memory(need, f"the model of config.json ({need / 2**20:,.0f} MiB of parameters)", config_path)
    try:
        return build()
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError) as e:
        raise MalformedInputError(f"does not describe {what} ({type(e).__name__}: {e})", config_path,
                                  "re-create the checkpoint") from None


def _read_json(directory: Path, name: str) -> dict:
    """``directory/name`` parsed, with one-line errors for a missing or malformed file."""
    path = directory / name
    if not path.exists():
        raise InputMissingError(f"not a phenoclip checkpoint: no {name}", directory)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise MalformedInputError(f"{name} is not valid JSON ({e.msg})", path) from None


def read_config(directory: str | os.PathLike) -> dict:
    """``config.json`` of a checkpoint directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputMissingError("checkpoint folder does not exist", directory)
    recover(directory)
    return _read_json(directory, CONFIG_FILE)


def read_state(directory: str | os.PathLike) -> dict:
    """``state.json`` of a checkpoint directory (progress, split, history)."""
    recover(directory)
    return _read_json(Path(directory), STATE_FILE)


def split_of(directory: str | os.PathLike, rename: dict[str, str] | None = None,
             precedence: Sequence[str] = ()) -> dict[str, str]:
    """Sample -> the part of the run's split (``state.json``'s ``split``) it was in, for marking
    predictions; samples the run never met are absent (callers call them ``new``).

    A sample listed in several parts gets the last of ``precedence`` (parts it does not name come
    first, in file order); ``rename`` maps a part to the name reported (finetune's ``pool`` of
    labelled patients outside the saved fit is reported as ``unused``).
    """
    split = read_state(directory).get("split", {})
    parts = sorted(split, key=lambda part: precedence.index(part) if part in precedence else -1)
    out: dict[str, str] = {}
    for part in parts:
        name = (rename or {}).get(part, part)
        out.update(dict.fromkeys(split[part], name))
    return out


def load_weights(directory: str | os.PathLike, model: torch.nn.Module, strict: bool = True,
                 prefix: str = "") -> None:
    """Load ``model.safetensors`` into ``model``; a non-safetensors file is a one-line error (exit 4).

    ``prefix`` selects a sub-module's tensors (``"model."``: the multimodal model inside a
    pretraining task), stripped before loading.
    """
    recover(directory)
    path = Path(directory) / MODEL_FILE
    if not path.exists():
        raise InputMissingError(f"checkpoint has no {MODEL_FILE}", directory)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise MalformedInputError(f"not a safetensors file ({e})", path,
                                  "phenoclip never unpickles weights; re-create the checkpoint") from None
    if prefix:
        tensors = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if strict and (missing or unexpected):
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise MalformedInputError(f"weights do not fit the model of config.json ({what})", path)


def load_training_state(directory: str | os.PathLike, optimizer=None, scheduler=None,
                        generators: dict[str, torch.Generator] | None = None) -> dict:
    """Restore optimizer, scheduler and RNG states; return ``state.json``."""
    directory = Path(directory)
    state = read_state(directory)
    if optimizer is not None and (directory / OPTIMIZER_FILE).exists():
        try:
            blob = torch.load(directory / OPTIMIZER_FILE, weights_only=True, map_location="cpu")
        except Exception as e:  # weights_only refuses pickled code: report, don't execute
            raise MalformedInputError(f"cannot read optimizer state ({type(e).__name__})",
                                      directory / OPTIMIZER_FILE) from None
        try:
            optimizer.load_state_dict(blob["optimizer"])
        except (ValueError, KeyError) as e:
            # e.g. a checkpoint of a phenoclip that still trained the biases before batch norm
            raise InconsistentInputError(f"the optimizer state does not fit this model's trainable parameters ({e})",
                                         directory / OPTIMIZER_FILE,
                                         "resume with the phenoclip version that wrote it, or start a new run") from None
        if scheduler is not None and blob.get("scheduler") is not None:
            scheduler.load_state_dict(blob["scheduler"])
    if (directory / RNG_FILE).exists():
        set_rng_state(load_file(str(directory / RNG_FILE)), state["rng"], generators)
    return state


def write_data_stats(directory: str | os.PathLike, tensors: dict[str, np.ndarray]) -> None:
    """Write ``data_stats.safetensors`` (float32 arrays) into an existing checkpoint directory."""
    directory = Path(directory)
    tmp = directory / f".{DATA_STATS_FILE}.tmp-{os.getpid()}"
    save_file({k: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, directory / DATA_STATS_FILE)


def read_data_stats(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """The checkpoint's ``data_stats.safetensors`` as numpy arrays ({} for older checkpoints)."""
    path = Path(directory) / DATA_STATS_FILE
    if not path.exists():
        return {}
    try:
        return {k: v.numpy() for k, v in load_file(str(path)).items()}
    except (SafetensorError, OSError, ValueError) as e:
        raise MalformedInputError(f"not a safetensors file ({e})", path) from None
