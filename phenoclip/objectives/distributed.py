"""torch.distributed helpers for losses that need the whole global batch (contrastive losses).

Every function is a no-op (or returns the single-process answer) when torch.distributed is
unavailable, not initialised, or has one process, so losses call them unconditionally.

Gradient convention of :func:`all_gather_with_grad`
----------------------------------------------------
Each rank gathers every rank's rows and computes the *same* global loss ``L`` (open_clip's
``local_loss=False``). The backward pass sums, over ranks, the gradient each rank's copy of ``L``
sends to a slice, and returns the local slice of that sum. Since all ranks hold the same ``L``,
a rank's local rows receive ``world_size * dL/dz_local``. DistributedDataParallel then *averages*
parameter gradients over ranks, which divides the factor back out: the averaged gradient equals
the gradient of the single-process loss over the concatenated global batch. Replicated tensors
outside the gather (``logit_scale``) receive ``dL/dlogit_scale`` on every rank, which the average
also leaves unchanged. Without DDP (a manual all-reduce), average, do not sum.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when torch.distributed is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes (1 without torch.distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without torch.distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _sizes(n: int, device: torch.device) -> list[int]:
    """First-dimension length of the tensor on every rank (the last batch of an epoch may be short)."""
    local = torch.tensor([n], dtype=torch.long, device=device)
    out = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(out, local)
    return [int(s) for s in out]


def _gather(tensor: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` along dim 0; ranks may differ in length (padded on the wire)."""
    longest = max(sizes)
    padded = tensor.contiguous()
    if tensor.shape[0] < longest:
        pad = tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))
        padded = torch.cat([padded, pad])
    bufs = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(bufs, padded)
    return torch.cat([b[:n] for b, n in zip(bufs, sizes)])


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor, rows: slice, sizes: list[int]) -> torch.Tensor:
        ctx.rows = rows
        return _gather(tensor, sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # Every rank's loss used our rows; sum those gradients so none is lost (see module docstring).
        grad = grad.contiguous().clone()  # all_reduce is in place: never write into autograd's buffer
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rows], None, None


def all_gather_rows_with_grad(tensor: torch.Tensor) -> tuple[torch.Tensor, slice]:
    """:func:`all_gather_with_grad` and where this rank's rows sit in the concatenation."""
    n = tensor.shape[0]
    if not is_distributed():
        return tensor, slice(0, n)
    sizes = _sizes(n, tensor.device)
    start = sum(sizes[:rank()])
    rows = slice(start, start + n)
    return _AllGatherWithGrad.apply(tensor, rows, sizes), rows


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (N_r, ...) from all ranks in rank order: (sum_r N_r, ...).

    Differentiable: the local slice's gradient is the sum over ranks of the gradients each rank's
    loss sends to it (convention in the module docstring). Ranks may hold different N_r.
    Returns ``tensor`` itself when not distributed.
    """
    return all_gather_rows_with_grad(tensor)[0]


def share_of_global_mean(n_local: int, device: torch.device | str = "cpu") -> tuple[float, int]:
    """``(world_size * n_local / N, N)``, ``N`` the rows of all ranks together.

    A rank's mean over its own ``n_local`` rows times this factor, averaged over ranks (as
    DistributedDataParallel averages gradients), is the mean over all ``N`` rows: the loss of
    one process holding every rank's rows, even when ranks hold different numbers (patients
    missing a modality). ``(1.0, n_local)`` when not distributed; factor 0 when ``N`` is 0.
    """
    if not is_distributed():
        return 1.0, int(n_local)
    total = torch.tensor([float(n_local)], dtype=torch.float64, device=device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    n_all = int(round(total.item()))
    return (world_size() * n_local / n_all if n_all else 0.0), n_all


def all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Non-differentiable :func:`all_gather_with_grad` for masks and labels; bool tensors allowed."""
    if not is_distributed():
        return tensor
    with torch.no_grad():
        # gloo has no bool all_gather: move masks as uint8
        wire = tensor.to(torch.uint8) if tensor.dtype == torch.bool else tensor
        out = _gather(wire, _sizes(tensor.shape[0], tensor.device))
    return out.bool() if tensor.dtype == torch.bool else out
