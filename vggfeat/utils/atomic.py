"""Files that are either whole or absent: written next to their place, then renamed.

A kill -9 or a full disk in the middle of a write must never leave a half-written file that
a later run (or a reader) would trust. Every result file is therefore written to a
temporary name in the same folder, flushed and fsynced, and moved into place with
`os.replace` (atomic on POSIX); on failure the temporary file is removed and a full disk
becomes `DiskFullError`, one message naming the file and the fix.
"""
from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from vggfeat.utils.errors import EXIT_FAILED, EXIT_USAGE, VggfeatError

# "No space" in all its forms: a full disk, a quota, a file-size limit (ulimit -f).
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# HDF5 reports the C errno inside its message rather than as OSError.errno.
FULL_TEXTS = ("No space left", "Disk quota exceeded", "File too large", "errno = 28",
              "errno = 27", "errno = 122",
              "unexpected pos")  # torch.save's zip writer after a short write


class DiskFullError(VggfeatError):
    """No space left while writing a file; the message names the file and the fix."""

    exit_code = EXIT_FAILED


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` (an OSError, or h5py's wrapping of one) means "no space left"."""
    if isinstance(error, OSError) and error.errno in FULL_ERRNOS:
        return True
    text = str(error)
    return isinstance(error, (OSError, RuntimeError)) and any(t in text for t in FULL_TEXTS)


def disk_full_error(path: str | os.PathLike, error: BaseException) -> DiskFullError:
    reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
    return DiskFullError(
        f"no space left to write {path} ({reason}). Nothing half-written was kept; finished "
        "work is. Free space (or choose an --out on another disk) and rerun the same command.")


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


class ForeignFileError(VggfeatError):
    """An output would replace a file that vggfeat did not write; nothing was changed."""

    exit_code = EXIT_USAGE


# The temporary names of `_tmp` and `check_space`: .NAME.PID.tmp and .NAME.PID.space.tmp
TMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)(?:\.space)?\.tmp$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it runs, as another user
        return True
    return True


def remove_stale_tmp(folder: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Delete the temporary files that a killed atomic write left in `folder`.

    Only files named like ours (`.NAME.PID.tmp`, `.NAME.PID.space.tmp`) whose NAME matches
    one of the glob patterns `names` (the files the caller writes) and whose process has
    ended; a live writer's file and anything else are left alone. Returns what was removed.
    """
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for path in entries:
        match = TMP_NAME.match(path.name)
        if (match is None or not path.is_file() or _pid_alive(int(match["pid"]))
                or not any(fnmatch.fnmatchcase(match["name"], n) for n in names)):
            continue
        with contextlib.suppress(OSError):
            path.unlink()
            removed.append(path)
    return removed


def fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path` atomically.

    On any failure the temporary file is deleted and `path` is left as it was; a full disk
    is raised as `DiskFullError`.
    """
    path = Path(path)
    tmp = _tmp(path)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if is_disk_full(error):
            raise disk_full_error(path, error) from None
        raise
    fsync_folder(path.parent)


def write_text(path: str | os.PathLike, text: str, newline: str | None = None) -> Path:
    """`Path.write_text`, atomically (see `replacing`)."""
    with replacing(path) as tmp, open(tmp, "w", newline=newline) as handle:
        handle.write(text)
    return Path(path)


@contextlib.contextmanager
def open_text(path: str | os.PathLike, newline: str | None = None):
    """`open(path, "w")` whose content appears at `path` only when the block succeeds."""
    with replacing(path) as tmp, open(tmp, "w", newline=newline) as handle:
        yield handle


def append_line(path: str | os.PathLike, line: str) -> Path:
    """Add one line to a small text file (a log), rewriting it atomically: a kill leaves the
    old content or the new, never a half line."""
    path = Path(path)
    old = path.read_text() if path.exists() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    return write_text(path, old + line + "\n")


def check_space(path: str | os.PathLike, nbytes: int) -> None:
    """Raise `DiskFullError` naming `path` unless `nbytes` can be allocated in its folder.

    Asked of the file system itself (posix_fallocate of a probe file, then deleted), so
    quotas and file-size limits count too. Used before writes whose failure half-way would
    be costly or messy (an HDF5 file allocated in full, a checkpoint).
    """
    path = Path(path)
    probe = path.with_name(f".{path.name}.{os.getpid()}.space.tmp")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as error:
        if is_disk_full(error):
            raise disk_full_error(path, error) from None
        raise
    try:
        os.posix_fallocate(fd, 0, max(int(nbytes), 1))
    except OSError as error:
        if is_disk_full(error):
            raise disk_full_error(path, error) from None
        if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            probe.unlink()
