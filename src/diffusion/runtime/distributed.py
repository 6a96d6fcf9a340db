"""DistributedDataParallel plumbing for ``torchrun``.

``torchrun --nproc_per_node=N -m diffusion.train ...`` sets RANK, WORLD_SIZE and
LOCAL_RANK; :func:`init_from_env` joins the process group (NCCL on CUDA, gloo on
the CPU). ``data.batch_size`` stays the *global* batch: each rank takes its
slice of every global batch, and of the noise and timesteps drawn for it, so a
run draws the same batches, noise and timesteps whatever the number of processes.
Dropout is seeded per rank, so a model with dropout matches a single process in
distribution, not bit for bit.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env() -> int:
    """Join the process group torchrun describes; returns the local rank (0 when alone)."""
    if not launched_by_torchrun() or dist.is_initialized():
        return int(os.environ.get("LOCAL_RANK", 0))
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
    else:
        dist.init_process_group("gloo")
    return local_rank


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of ``value`` over ranks (identity when alone)."""
    if world_size() == 1:
        return value
    value = value.clone()
    dist.all_reduce(value)
    return value / world_size()


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank."""
    if world_size() == 1:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def all_gather_object(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` when alone)."""
    if world_size() == 1:
        return [obj]
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def all_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum of ``value`` over ranks (identity when alone)."""
    if world_size() == 1:
        return value
    value = value.clone()
    dist.all_reduce(value)
    return value


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first, the other ranks after it: for work that fills a cache
    (a feature network, reference features) which the others then only read."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def max_param_difference(module: torch.nn.Module) -> float:
    """Largest absolute difference of any parameter between this rank and rank 0
    (0.0 when alone). DDP keeps replicas identical; this checks that it did."""
    if world_size() == 1:
        return 0.0
    flat = torch.cat([p.detach().reshape(-1).float() for p in module.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    worst = (flat - reference).abs().max()
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return float(worst)
