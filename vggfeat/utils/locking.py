"""One writer at a time: the lock that says "in use" for a feature cache or a training run.

A lock is a small file beside what it protects (``OUT.lock`` for a cache, ``RUN_DIR/train.lock``
for a run folder) that holds the owner's pid and host as JSON, and is held with flock(2)
for as long as the owner runs. Why flock: the kernel drops it when its process ends, even by
kill -9, so a lock file whose flock is free was left behind by a process that no longer runs
and can be taken over (with a message). A lock file written on another host is not taken
over automatically: flock between hosts depends on the file system, so the message says
which file to delete once that run is known to be over.

Under torchrun only rank 0 takes the lock (`job_lock`); a refusal reaches every rank.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

from vggfeat.utils.errors import EXIT_USAGE, VggfeatError

KIND = "vggfeat-lock"


class LockedError(VggfeatError):
    """Another process is writing the file or folder; the message names it and the fix."""

    exit_code = EXIT_USAGE


def _me() -> dict:
    return {"kind": KIND, "pid": os.getpid(), "host": socket.gethostname()}


def _owner_text(owner: dict | None) -> str:
    if not owner:
        return "another process"
    return f"process {owner.get('pid')} on host {owner.get('host')}"


def _read_owner(fd: int) -> dict | None:
    """The JSON record in an open lock file; {} when empty; None when it is something else."""
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    if not raw.strip():
        return {}
    try:
        owner = json.loads(raw)
    except ValueError:
        return None
    return owner if isinstance(owner, dict) and owner.get("kind") == KIND else None


def _same_inode(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


class Lock:
    """A held lock; `release` deletes the lock file (it is ours) and drops the flock."""

    def __init__(self, path: Path, fd: int, made_folder: bool = False):
        self.path, self.fd, self.made_folder = path, fd, made_folder

    def release(self) -> None:
        if self.fd is None:
            return
        if _same_inode(self.fd, self.path):
            self.path.unlink()  # while still holding the flock: see `acquire`'s inode check
        os.close(self.fd)
        self.fd = None
        if self.made_folder:  # a run that failed before writing anything leaves no folder
            with contextlib.suppress(OSError):
                self.path.parent.rmdir()


def acquire(path: str | os.PathLike, what: str,
            log: Callable[[str], None] = print) -> Lock:
    """Take the lock file `path` for `what` (e.g. "feature cache out.h5") or refuse.

    Raises:
        LockedError: another live process holds it, the lock comes from another host, or
            `path` exists and is not a vggfeat lock file (never overwritten).
    """
    path = Path(path)
    made_folder = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(20):  # retried only when the previous owner deleted the file meanwhile
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            lock = _try_take(fd, path, what, log)
        except BaseException:
            os.close(fd)
            raise
        if lock is not None:
            lock.made_folder = made_folder
            return lock
        os.close(fd)
    raise LockedError(f"{what}: cannot take the lock {path} (it keeps changing); "
                      "another process is starting on it. Wait for it, or choose another --out.")


def _try_take(fd: int, path: Path, what: str, log) -> Lock | None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        owner = _read_owner(fd)
        raise LockedError(
            f"{what} is in use: {_owner_text(owner)} is writing it (lock file {path}). "
            "Wait for that run to finish, or choose another --out.") from None
    if not _same_inode(fd, path):  # the owner released (deleted) it between open and flock
        return None
    previous = _read_owner(fd)
    if previous is None:
        raise LockedError(f"{path} exists and is not a vggfeat lock file; vggfeat will not "
                          f"overwrite it. Move it away, or choose another --out.")
    me = _me()
    if previous and previous.get("pid") != me["pid"]:
        if previous.get("host") != me["host"]:
            raise LockedError(
                f"{what} was locked by {_owner_text(previous)} (lock file {path}). If no run "
                f"is active there any more, delete {path} and rerun; else choose another --out.")
        log(f"note: taking over the lock {path} of {_owner_text(previous)}, which has ended "
            "(killed or crashed); its finished work is kept")
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(me) + "\n").encode())
    return Lock(path, fd)


@contextlib.contextmanager
def job_lock(path: str | os.PathLike, what: str,
             log: Callable[[str], None] = print) -> Iterator[Lock | None]:
    """Hold the lock for the whole job: rank 0 takes it, every rank gets its refusal.

    Under torchrun the other ranks only write through rank 0's plan (shards it merges, or
    nothing at all), so one lock per job is enough.
    """
    from vggfeat.utils import distributed

    lock, refusal = None, None
    if distributed.is_main_process():
        try:
            lock = acquire(path, what, log)
        except Exception as error:  # noqa: BLE001 - every rank must learn of it, not hang
            refusal = error
    refusal = distributed.broadcast(refusal)
    if refusal is not None:
        raise refusal
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()
