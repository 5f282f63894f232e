"""Where tensors live: resolving ``--device`` and moving batches and random draws onto it.

Random draws (masks, corruptions, augmentation) come from CPU ``torch.Generator`` objects whose
states go into checkpoints; they are drawn on the generator's device and then moved. Drawing on
the CPU and copying costs a transfer per step, but it keeps the masks of a seed the same on a
laptop and on a GPU node, and keeps exact ``--resume`` independent of CUDA RNG internals.
"""

from __future__ import annotations

from typing import Any

import torch

from phenoclip.errors import UsageError

VALID = "auto, cpu, cuda or cuda:N"


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; a CUDA device that is not there is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device} asked for, but torch sees no CUDA device "
                             f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'})",
                             hint="run with --device cpu, or install a CUDA build of torch")
        index = device.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise UsageError(f"--device {device}: torch sees {torch.cuda.device_count()} CUDA device(s)")
        return device
    raise UsageError(f"--device must be {VALID}, got '{device}'")


def to_device(batch: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    """``batch`` with every tensor (in nested dicts, lists and tuples) on ``device``; other values kept."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, dict):
        return {k: to_device(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and any(torch.is_tensor(v) or isinstance(v, (dict, list, tuple))
                                                for v in batch):
        return type(batch)(to_device(v, device, non_blocking) for v in batch)
    return batch


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (or buffer); CPU for a module with neither."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def draw_device(generator: torch.Generator | None, fallback: torch.device | str) -> torch.device | str:
    """Where a draw with ``generator`` must happen: torch refuses a CPU generator on a CUDA tensor."""
    return generator.device if generator is not None else fallback
