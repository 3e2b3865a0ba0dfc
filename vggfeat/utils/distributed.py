"""Process-group helpers shared by the trainer and the extractor.

Under `torchrun` the environment carries RANK, LOCAL_RANK and WORLD_SIZE; without it every
helper behaves as rank 0 of a world of 1, so the calling code never branches on
"distributed or not" (torchvision's references convention).
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from datetime import timedelta

import torch
import torch.distributed as dist

from vggfeat.utils import interrupts
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


# Each process of the job, as every rank sees it after `init`: rank -> (host, pid).
_peers: dict[int, tuple[str, int]] = {}


def _stopped_message(why: str) -> str:
    """One line: who stopped, why (which rank died, when it can be known), and what the
    running command keeps (its `interrupts.progress_note`) or how to resume."""
    dead = _wait_for_dead_peers(1.0)
    if dead:
        why = f"{dead}; {why}"
    note = interrupts.current_note()
    how = _note_or(note, "rerun the same command to resume")
    return (f"rank {os.environ.get('RANK', '?')}: the torchrun job stopped ({why}). "
            f"Finished work is kept: {how}.")


def _note_or(note, default: str) -> str:
    try:
        return note() if note else default
    except Exception:  # noqa: BLE001 - the stop must be said, whatever the note
        return default


def _on_sigterm(signum, frame):
    # torchrun sends SIGTERM to the survivors when one process fails: say so, and let
    # `finally` blocks close files and release the lock on the way out.
    raise JobStopped(_stopped_message("another process of it failed, or it was cancelled"))


def _publish_peers() -> None:
    """Learn every rank's host and pid (one all-gather at start), so that a survivor can
    later name a peer that died: its process is gone (same host) although the job runs."""
    me = (socket.gethostname(), os.getpid())
    table: list = [None] * world_size()
    _collective(dist.all_gather_object, table, me)
    _peers.update({r: tuple(entry) for r, entry in enumerate(table)})
    interrupts.replace_with(_stop_after_a_peer_died)


def _stop_after_a_peer_died(signum: int) -> JobStopped | None:
    """torchrun's SIGTERM once a peer has died is the job failing, not a user's stop."""
    dead = dead_peers() if signum == signal.SIGTERM else None
    return JobStopped(_stopped_message("torchrun stopped the others")) if dead else None


def _process_gone(pid: int) -> bool:
    """Whether `pid` has ended (a zombie torchrun has not yet reaped counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
    except (OSError, IndexError):  # no /proc (macOS): ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False


def dead_peers() -> str | None:
    """"rank 1 (pid 4242) died" for the ranks on this host whose process has ended, or
    None (none did, or they run on other hosts, where their death cannot be seen)."""
    host = socket.gethostname()
    dead = [f"rank {r} (pid {pid})" for r, (h, pid) in sorted(_peers.items())
            if h == host and pid != os.getpid() and _process_gone(pid)]
    if not dead:
        return None
    return f"{', '.join(dead)} died" if len(dead) < 3 else f"{len(dead)} ranks died"


def _wait_for_dead_peers(seconds: float) -> str | None:
    """`dead_peers`, looked at for up to `seconds`: a killed peer's sockets close a moment
    before its process is seen to have ended."""
    deadline = time.monotonic() + seconds
    while True:
        dead = dead_peers()
        if dead or not _peers or time.monotonic() >= deadline:
            return dead
        time.sleep(0.05)


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
        _publish_peers()
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
        raise peer_failure(error) from None


def peer_failure(error: BaseException) -> JobStopped:
    """The JobStopped to raise for a failed collective (`_collective`, or DDP's gradient
    all-reduce inside backward): which rank died when it can be seen, and what is kept."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    first = re.sub(r"^\[[^\]]*\] ", "", first).split(". ")[0]  # gloo's source line, its advice
    return JobStopped(_stopped_message(f"another process did not answer: {first[:200]}"))


# What gloo and NCCL say when a peer's connection closes or a collective times out.
PEER_ERRORS = ("connection closed by peer", "connection reset by peer", "broken pipe",
               "timed out", "gloo", "nccl")


@contextlib.contextmanager
def peer_failures() -> Iterator[None]:
    """Around a DDP step: a collective that fails inside it (DDP's gradient all-reduce
    runs in backward, its buffer broadcast in forward) becomes `peer_failure`'s JobStopped;
    any other error (an out-of-memory, a bug) passes unchanged."""
    try:
        yield
    except RuntimeError as error:
        backend = type(error).__name__ == "DistBackendError"
        if is_distributed() and (backend or any(p in str(error).lower() for p in PEER_ERRORS)):
            raise peer_failure(error) from None
        raise


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
