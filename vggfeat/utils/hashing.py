"""sha256 of weight files, computed in a background thread and possibly started early.

The cache records the sha256 of the weights it was computed with; for VGG16's 528 MB file
that is 0.3 s of one core. hashlib releases the GIL while hashing, so a thread does it
beside other work: `vggfeat extract` starts it before importing torch (about 1.8 s on one
core while the other idles), and `load_backbone` then takes the finished digest instead of
hashing beside the first batch, which wants both cores. No torch here, so starting early
costs nothing.

The checkpoints and backbone files vggfeat writes also get their sha256 recorded beside
them (`writing_with_sum`), which their loaders check (`recorded_sha256`, `check_recorded`).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

from vggfeat.utils import atomic
from vggfeat.utils.errors import InputError

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


# -- the sum recorded beside a file vggfeat writes ------------------------------------------
#
# Checkpoints and backbone files get `<file>.sha256`, one line as `sha256sum` writes it, so
# `sha256sum -c checkpoint.pth.sha256` checks a copy by hand. Beside the file rather than
# inside it: a file cannot hold its own digest, the sum is checked before torch unpickles
# anything, and the weight file itself stays what older vggfeat and torchvision read.

SUM_SUFFIX = ".sha256"
_SUM_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


class RecordedSumError(InputError):
    """A file's sha256 differs from the one vggfeat recorded when it wrote the file."""


def sum_path(path: str | os.PathLike) -> Path:
    """Where the sum of `path` is recorded: `<path>.sha256`."""
    path = Path(path)
    return path.with_name(path.name + SUM_SUFFIX)


class HashingWriter:
    """A binary file that hashes what is written to it (torch.save writes its zip records
    in order, so the digest is the file's without reading it back)."""

    def __init__(self, handle):
        self._handle, self._digest = handle, hashlib.sha256()

    def write(self, data) -> int:
        self._digest.update(data)
        return self._handle.write(data)

    def flush(self) -> None:
        self._handle.flush()

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


@contextlib.contextmanager
def writing_with_sum(path: str | os.PathLike) -> Iterator[HashingWriter]:
    """Write `path` atomically (`vggfeat.utils.atomic.replacing`) and record its sha256 in
    `<path>.sha256` after it.

    The old sum is removed just before the new file takes the old one's place, and the new
    sum written just after: a kill in between leaves a file without a recorded sum (loaded
    unchecked, as one written by older vggfeat), never a file with another file's sum.
    """
    path, record = Path(path), sum_path(path)
    _check_ours(record, path)
    with atomic.replacing(path) as tmp, open(tmp, "wb") as raw:
        writer = HashingWriter(raw)
        yield writer
        raw.flush()
        with contextlib.suppress(FileNotFoundError):
            record.unlink()
    atomic.write_text(record, f"{writer.hexdigest()}  {path.name}\n")


def _check_ours(record: Path, path: Path) -> None:
    """Refuse to replace a `<path>.sha256` that is not a sum line (a user's own file)."""
    if record.exists() and _parse_sum(record) is None:
        raise atomic.ForeignFileError(
            f"{record} exists and is not a sha256 line; vggfeat records the sum of {path} "
            "there and will not replace it. Move it away or choose another output name.")


def _parse_sum(record: Path) -> str | None:
    try:
        lines = record.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    match = _SUM_LINE.match(lines[0].strip().lower()) if len(lines) == 1 else None
    return match.group(1) if match else None


def recorded_sha256(path: str | os.PathLike) -> str | None:
    """The sum recorded beside `path`; None when there is none (a file vggfeat did not
    write, or wrote before it recorded sums: loaded as before, unchecked).

    Raises RecordedSumError for a record that exists but cannot be read as a sum.
    """
    record = sum_path(path)
    if not record.exists():
        return None
    digest = _parse_sum(record)
    if digest is None:
        raise RecordedSumError(f"{record} is not a sha256 line (damaged?), so {path} cannot be "
                               "checked; delete the .sha256 file to load it unchecked, or "
                               "write the file again.")
    return digest


def check_recorded(path: str | os.PathLike, recorded: str, actual: str, fix: str) -> None:
    """Raise RecordedSumError, naming the file, both sums and `fix`, if they differ."""
    if actual != recorded:
        raise RecordedSumError(
            f"{path} is damaged: its sha256 is {actual[:16]}..., not the {recorded[:16]}... "
            f"recorded in {sum_path(path).name} when vggfeat wrote it (a failing disk, an "
            f"incomplete or altered copy). {fix}")
