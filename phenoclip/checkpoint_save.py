"""Writing a checkpoint folder whole or not at all (the write-ahead journal of
:mod:`phenoclip.checkpoint`), :func:`recover`, which finishes or discards a save that a kill
interrupted, and the data statistics written beside the weights.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from phenoclip import __version__
from phenoclip.checkpoint_files import (
    CONFIG_FILE,
    DATA_STATS_FILE,
    JOURNAL_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    RNG_FILE,
    STATE_FILE,
)
from phenoclip.checkpoint_rng import rng_state
from phenoclip.errors import MalformedInputError, OutputError
from phenoclip.staging import pid_alive


def save_checkpoint(directory: str | os.PathLike, *, model: torch.nn.Module, config: dict, state: dict,
                    optimizer: torch.optim.Optimizer | None = None, scheduler=None,
                    generators: dict[str, torch.Generator] | None = None) -> Path:
    """Write a complete checkpoint directory (whole or not at all, see :mod:`phenoclip.checkpoint`)."""
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


def write_data_stats(directory: str | os.PathLike, tensors: dict[str, np.ndarray]) -> None:
    """Write ``data_stats.safetensors`` (float32 arrays) into an existing checkpoint directory."""
    directory = Path(directory)
    tmp = directory / f".{DATA_STATS_FILE}.tmp-{os.getpid()}"
    save_file({k: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, directory / DATA_STATS_FILE)
