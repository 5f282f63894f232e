"""torch.distributed plumbing: ``torchrun`` sets RANK/WORLD_SIZE/LOCAL_RANK; we read them.

gloo on CPUs, NCCL on GPUs. Without torchrun everything here is a no-op, so the same code runs
on a laptop and on a cluster.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from phenoclip.objectives.distributed import is_distributed, rank, world_size  # noqa: F401 (re-exported)


def init_from_env(device: str) -> str:
    """Initialise the process group when launched by torchrun; return the device to use."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
        if device.startswith("cuda"):
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            return f"cuda:{local}"
    return device


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def any_rank(flag: bool, device: str = "cpu") -> bool:
    """True on every rank when ``flag`` is true on any rank (an all-reduce of one number).

    A stop request reaches the ranks at different moments (a signal to one process, or torchrun
    forwarding it to each worker in turn); deciding at the step boundary together means every
    rank stops after the same step, and none waits in a collective the others have left.
    """
    if not is_distributed():
        return flag
    # NCCL reduces CUDA tensors only; gloo takes CPU ones
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device if device.startswith("cuda") else "cpu")
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def wrap(module: torch.nn.Module, device: str = "cpu") -> torch.nn.Module:
    """DistributedDataParallel around ``module`` when distributed, else ``module`` itself.

    ``module`` must already be on ``device``; on a GPU each rank drives the one device it was
    given by :func:`init_from_env`.
    """
    if not is_distributed():
        return module
    if device.startswith("cuda"):
        index = torch.device(device).index
        ids = [torch.cuda.current_device() if index is None else index]
    else:
        ids = None  # CPU modules: DDP takes no device ids
    # find_unused_parameters: a batch may lack a modality, leaving its encoder without gradients
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()
