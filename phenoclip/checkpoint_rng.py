"""Capturing and restoring the torch, numpy and python RNG states a checkpoint keeps, so a
resumed run draws the same masks and dropout."""

from __future__ import annotations

import random

import numpy as np
import torch


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
