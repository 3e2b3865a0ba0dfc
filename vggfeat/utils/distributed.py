"""Process-group helpers shared by the trainer and the extractor.

Under `torchrun` the environment carries RANK, LOCAL_RANK and WORLD_SIZE; without it every
helper behaves as rank 0 of a world of 1, so the calling code never branches on
"distributed or not" (torchvision's references convention).
"""
from __future__ import annotations

import os
import signal
from datetime import timedelta

import torch
import torch.distributed as dist

from vggfeat.utils.errors import EXIT_FAILED, VggfeatError

# Ranks wait for each other at the start and end of a long extraction or epoch: one rank
# may wait for another's last batches for a while. This is also the longest a rank waits
# for a rank that died without its connection closing (a frozen host); a rank killed
# outright is noticed at once (its connection closes, or torchrun stops the job).
TIMEOUT_ENV = "VGGFEAT_DIST_TIMEOUT"  # seconds
DEFAULT_TIMEOUT_S = 6 * 3600


class JobStopped(VggfeatError):
    """Another process of the torchrun job failed or the job was stopped."""

    exit_code = EXIT_FAILED


def timeout() -> timedelta:
    """The collective timeout: VGGFEAT_DIST_TIMEOUT seconds, else 6 hours."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise JobStopped(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds, e.g. 600") from None
    return timedelta(seconds=max(seconds, 1.0))


def _stopped_message(why: str) -> str:
    return (f"rank {os.environ.get('RANK', '?')}: the torchrun job stopped ({why}). "
            "Finished work is kept: rerun the same command to resume.")


def _on_sigterm(signum, frame):
    # torchrun sends SIGTERM to the survivors when one process fails: say so, and let
    # `finally` blocks close files and release the lock on the way out.
    raise JobStopped(_stopped_message("another process of it failed, or it was cancelled"))


def launched() -> bool:
    """Whether torchrun started this process with more than one process in all."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str | torch.device) -> torch.device:
    """Join the process group when launched by torchrun; returns this process's device.

    NCCL on GPUs (one GPU per local rank), gloo on the CPU and MPS.
    """
    device = torch.device(device)
    if device.type == "cuda":
        if launched() or device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if launched() and not is_distributed():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timeout(),
                                device_id=device if device.type == "cuda" else None)
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # the CLI's stop handler wins
            signal.signal(signal.SIGTERM, _on_sigterm)
    return device


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Only rank 0 writes files and shows progress."""
    return rank() == 0


def _collective(call, *args, **kwargs):
    """A collective whose failure (a peer died, the timeout passed) is one clear message."""
    try:
        return call(*args, **kwargs)
    except RuntimeError as error:  # DistBackendError and gloo's errors are RuntimeErrors
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise JobStopped(_stopped_message(f"another process did not answer: {first[:200]}")
                         ) from None


def barrier() -> None:
    if is_distributed():
        _collective(dist.barrier)


def broadcast(obj=None):
    """Rank 0's `obj` on every rank (the object itself in a single process)."""
    if not is_distributed():
        return obj
    box = [obj]
    _collective(dist.broadcast_object_list, box, src=0)
    return box[0]


def total(value: int) -> int:
    """Sum of a Python integer over all ranks."""
    if not is_distributed():
        return value
    values = [None] * world_size()
    _collective(dist.all_gather_object, values, value)
    return sum(values)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes, in place; returns it (unchanged with one process)."""
    if is_distributed():
        _collective(dist.all_reduce, tensor, op=dist.ReduceOp.SUM)
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


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()
