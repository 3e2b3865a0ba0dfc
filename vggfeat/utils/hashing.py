"""sha256 of weight files, computed in a background thread and possibly started early.

The cache records the sha256 of the weights it was computed with; for VGG16's 528 MB file
that is 0.3 s of one core. hashlib releases the GIL while hashing, so a thread does it
beside other work: `vggfeat extract` starts it before importing torch (about 1.8 s on one
core while the other idles), and `load_backbone` then takes the finished digest instead of
hashing beside the first batch, which wants both cores. No torch here, so starting early
costs nothing.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import os
import threading

# Hashes started and not yet taken, keyed by the file's identity and version (a file
# rewritten after its hash was started has another key and is hashed again).
_started: dict[tuple, concurrent.futures.Future] = {}


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _version(path) -> tuple:
    stat = os.stat(path)
    return os.path.realpath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns


def _submit(path) -> concurrent.futures.Future:
    """Hash in a daemon thread: a command that fails before it needs the digest exits at
    once instead of waiting for a read it no longer wants."""
    future: concurrent.futures.Future = concurrent.futures.Future()

    def run():
        try:
            future.set_result(sha256_of(path))
        except BaseException as error:  # noqa: BLE001 - raised by future.result()
            future.set_exception(error)

    threading.Thread(target=run, name="sha256", daemon=True).start()
    return future


def start_sha256(path: str | os.PathLike) -> None:
    """Begin hashing `path` in a thread, for a later `sha256_future` of the same file.
    Does nothing for a path that is not a readable file (the loader reports those)."""
    path = os.path.expanduser(path)
    try:
        key = _version(path)
    except OSError:
        return
    if os.path.isfile(path) and key not in _started:
        _started.clear()  # one command hashes one file: an untaken earlier one is stale
        _started[key] = _submit(path)


def sha256_future(path: str | os.PathLike) -> concurrent.futures.Future:
    """The sha256 of `path` (a future): the one `start_sha256` began for this version of the
    file, else a new background hash."""
    return _started.pop(_version(path), None) or _submit(path)
