"""Reading a checkpoint folder: the model its ``config.json`` describes (sizes checked before
memory is spent), its weights, its progress and split, the optimizer, scheduler and RNG states a
resume needs, and its data statistics. Every reader first makes the folder whole
(:func:`phenoclip.checkpoint_save.recover`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from phenoclip.checkpoint_files import CONFIG_FILE, DATA_STATS_FILE, MODEL_FILE, OPTIMIZER_FILE, RNG_FILE, STATE_FILE
from phenoclip.checkpoint_rng import set_rng_state
from phenoclip.checkpoint_save import recover
from phenoclip.errors import InconsistentInputError, InputMissingError, MalformedInputError
from phenoclip.memory import require_memory


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


def read_data_stats(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """The checkpoint's ``data_stats.safetensors`` as numpy arrays ({} for older checkpoints)."""
    path = Path(directory) / DATA_STATS_FILE
    if not path.exists():
        return {}
    try:
        return {k: v.numpy() for k, v in load_file(str(path)).items()}
    except (SafetensorError, OSError, ValueError) as e:
        raise MalformedInputError(f"not a safetensors file ({e})", path) from None
