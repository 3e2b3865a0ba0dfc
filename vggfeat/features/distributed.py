"""Several extraction processes (``torchrun --nproc-per-node N -m vggfeat extract ...``).

Every helper falls back to a single process, so the pipeline never branches on "distributed
or not" (the torchvision reference's convention). Ranks split the images; rank 0 owns the
output file and merges the other ranks' shards (see `vggfeat.features.cache`).
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

# Ranks wait for each other only at the start and at the end; a long extraction can leave
# one rank waiting for another's last batches for a while.
TIMEOUT = timedelta(hours=6)


def launched() -> bool:
    """Whether this process was started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device) -> torch.device:
    """Join the process group when launched by torchrun; returns this rank's device.

    gloo on the CPU (and MPS), nccl on CUDA with one GPU per local rank.
    """
    if not launched():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=TIMEOUT)
    return device


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def broadcast(obj=None):
    """Rank 0's `obj` on every rank (the object itself in a single process)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def total(value: int) -> int:
    """Sum of an integer over all ranks."""
    if world_size() == 1:
        return value
    values = [None] * world_size()
    dist.all_gather_object(values, value)
    return sum(values)


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
