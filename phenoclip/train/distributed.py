"""torch.distributed plumbing: ``torchrun`` sets RANK/WORLD_SIZE/LOCAL_RANK; we read them.

gloo on CPUs, NCCL on GPUs. Without torchrun everything here is a no-op, so the same code runs
on a laptop and on a cluster.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from phenoclip.objectives.distributed import all_gather_rows_with_grad, is_distributed
from phenoclip.objectives.distributed import rank, world_size  # noqa: F401 (re-exported)


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


def mean_over_ranks(values: dict[str, float], device: str = "cpu") -> dict[str, float]:
    """Each value averaged over ranks (keys in the same set on every rank); ``values`` itself when
    not distributed."""
    if not is_distributed():
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64,
                     device=device if device.startswith("cuda") else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: float(v) / world_size() for k, v in zip(keys, t.tolist())}


class _GlobalBatchNorm:
    """Batch statistics over every rank's rows: the layer sees the global batch, as one process would.

    The inputs of all ranks are gathered (with gradients, :func:`all_gather_rows_with_grad`), normalised
    together by the ordinary batch-norm function, and this rank keeps its own rows; the running
    statistics are updated from the global batch, identically on every rank. torch's
    ``SyncBatchNorm`` does this for GPUs only; gathering works with gloo on CPUs too, and the
    layers here are narrow (MLP and signal channels), so the copy is small.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        everyone, rows = all_gather_rows_with_grad(x)
        return super().forward(everyone)[rows]


class GlobalBatchNorm1d(_GlobalBatchNorm, torch.nn.BatchNorm1d):
    pass


class GlobalBatchNorm2d(_GlobalBatchNorm, torch.nn.BatchNorm2d):
    pass


class GlobalBatchNorm3d(_GlobalBatchNorm, torch.nn.BatchNorm3d):
    pass


_GLOBAL = {torch.nn.BatchNorm1d: GlobalBatchNorm1d, torch.nn.BatchNorm2d: GlobalBatchNorm2d,
           torch.nn.BatchNorm3d: GlobalBatchNorm3d}


def global_batch_norms(module: torch.nn.Module) -> int:
    """Give every BatchNorm layer of ``module`` global batch statistics (in place: parameters,
    buffers and state-dict names stay); returns how many were changed."""
    changed = 0
    for layer in module.modules():
        if type(layer) in _GLOBAL:
            layer.__class__ = _GLOBAL[type(layer)]
            changed += 1
    return changed


def wrap(module: torch.nn.Module, device: str = "cpu") -> torch.nn.Module:
    """DistributedDataParallel around ``module`` when distributed, else ``module`` itself.

    ``module`` must already be on ``device``; on a GPU each rank drives the one device it was
    given by :func:`init_from_env`. Its batch-norm layers take global batch statistics
    (:func:`global_batch_norms`), so N ranks with batch B normalise as one process with N x B.
    """
    if not is_distributed():
        return module
    global_batch_norms(module)
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
