"""Data-parallel helpers that fall back to one process (torchvision's references style).

Under `torchrun` the environment carries RANK, LOCAL_RANK and WORLD_SIZE; without it
every helper behaves as rank 0 of a world of 1, so the trainer never branches on
"distributed or not".
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_distributed(device: str) -> torch.device:
    """Join the process group when launched by torchrun; returns this process's device.

    NCCL on GPUs, gloo on the CPU. With one GPU per process, LOCAL_RANK picks the GPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device_type = torch.device(device).type
    if device_type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        index = torch.device(device).index
        dev = torch.device("cuda", local_rank if index is None or world > 1 else index)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device(device)
    if world > 1 and not is_distributed():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=dev if device_type == "cuda" else None)
    return dev


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Only rank 0 writes files and shows progress."""
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes, in place; returns it (unchanged with one process)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around the model when distributed, the model itself otherwise.

    DDP averages gradients over processes, so with per-rank batches of batch/world the
    update equals one process's update on the whole global batch.
    """
    if not is_distributed():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()
