"""Exit statuses and the translation of any failure into one line for the user.

Every vggfeat command ends in one of four ways (README, CONTRIBUTING "Faults and bad
input"):

- 0: done;
- 1: the command failed (a run that diverged, a full disk, an out-of-memory, a bug);
- 2: bad usage or input (an option, a file or a folder it cannot use), found before or
  during the work; the message names the option or file and the fix;
- 3: some images could not be read (`extract` without --skip-bad);
- 130, 143: stopped by Ctrl-C (SIGINT) or SIGTERM (`vggfeat.utils.interrupts`).

`describe` turns an exception that escaped a command into (message, exit status); the CLI
entry point (`vggfeat.cli`) prints the message instead of a traceback, unless --debug or
VGGFEAT_DEBUG=1 asks for one.
"""
from __future__ import annotations

import errno
import os

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_BAD_IMAGES = 3

# OSError numbers that mean "this path cannot be used as given" (bad input, exit 2); any
# other OSError (a full disk, an I/O error) is a failure of the run (exit 1).
USAGE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.EISDIR,
                errno.ENOTDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.ELOOP}

HDF5_SUFFIXES = (".h5", ".hdf5", ".h5.partial", ".hdf5.partial")
DEBUG_HINT = "rerun with --debug (or VGGFEAT_DEBUG=1) to see the traceback"


class VggfeatError(Exception):
    """Base of every error vggfeat raises on purpose: its message is written for the user
    (it names the file or option and the fix), and `exit_code` says how a command ends."""

    exit_code = EXIT_USAGE


class InputError(VggfeatError, ValueError):
    """Bad usage or input (exit 2): a file, folder, option or argument that cannot be used.

    Also a ValueError, so that Python callers of the library can catch it as one.
    """


class RunError(VggfeatError, RuntimeError):
    """The run itself failed (exit 1), e.g. a training run that diverged."""

    exit_code = EXIT_FAILED


def debug_requested() -> bool:
    return os.environ.get("VGGFEAT_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, MemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "out of memory" in text.lower() or "can't allocate memory" in text
        or "DefaultCPUAllocator" in text or type(error).__name__ == "OutOfMemoryError")


def describe_os_error(error: OSError) -> tuple[str, int]:
    """A message naming the path and the fix for an OSError, and its exit status."""
    path = error.filename or ""
    where = f"{path}: " if path else ""
    reason = error.strerror or str(error)
    if error.errno == errno.ENOSPC or error.errno == errno.EDQUOT:
        return (f"{where}no space left on the device. Free some space (or choose an --out on "
                "another disk) and rerun: finished work is kept and resumed.", EXIT_FAILED)
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"{where}{reason}. Choose a file or folder you can write to (e.g. another "
                "--out), or change its permissions.", EXIT_USAGE)
    if error.errno in USAGE_ERRNOS:
        return f"{where}{reason}. Check the path.", EXIT_USAGE
    if isinstance(error, BlockingIOError) or "unable to lock file" in str(error):
        return (f"{where}the file is in use by another process (locked). Wait for it to "
                "finish, or choose another --out.", EXIT_USAGE)
    if "file signature not found" in str(error) or "truncated file" in str(error):
        return (f"{where}not a readable HDF5 file ({reason}); it is damaged or not a vggfeat "
                "cache: give another file, or recreate it with `vggfeat extract`.", EXIT_USAGE)
    return f"{where}{reason} ({type(error).__name__}). {DEBUG_HINT}", EXIT_FAILED


def _hdf5_source(error: BaseException) -> tuple[bool, str | None]:
    """(raised inside h5py?, the HDF5 file it was reading) from the traceback's frames.

    A damaged HDF5 file fails wherever the damage is met (opening an object, iterating
    attributes, reading a chunk) with KeyError, RuntimeError or OSError; the h5py object
    being read knows its file's name.
    """
    inside, name = False, None
    tb = error.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        inside = inside or "h5py" in frame.f_code.co_filename
        for value in list(frame.f_locals.values()):
            if isinstance(value, (str, os.PathLike)) and str(value).endswith(HDF5_SUFFIXES):
                name = str(value)  # the innermost frame's wins
                continue
            try:  # an open h5py object knows its file (a closed one raises)
                filename = value.file.filename
            except Exception:  # noqa: BLE001 - not an h5py object, or already closed
                continue
            if isinstance(filename, str):
                name = filename
        tb = tb.tb_next
    return inside, name


def describe(error: BaseException) -> tuple[str, int]:
    """(one-line message, exit status) for an exception that escaped a command."""
    if isinstance(error, VggfeatError):
        return str(error), error.exit_code
    inside_h5py, hdf5_file = _hdf5_source(error)
    if inside_h5py and isinstance(error, (KeyError, RuntimeError, OSError, ValueError)):
        detail = str(error).strip("'\"").splitlines()[0] if str(error) else type(error).__name__
        where = hdf5_file or getattr(error, "filename", None) or "an HDF5 file"
        return (f"{where}: the HDF5 file is damaged ({detail}). Recreate it (`vggfeat extract` "
                "writes a new cache) or restore it from a copy.", EXIT_USAGE)
    if _is_out_of_memory(error):
        return ("out of memory: " + (str(error).splitlines()[0] if str(error) else "")
                + ". Use smaller sizes: a lower --batch-size, --max-pixels or --scales, a "
                "smaller --width/--crop-size, or a device with more memory.", EXIT_FAILED)
    if isinstance(error, OSError):
        return describe_os_error(error)
    detail = str(error).splitlines()[0] if str(error) else ""
    return (f"internal error ({type(error).__name__}: {detail}); please report it at "
            f"the project's issue tracker. {DEBUG_HINT}", EXIT_FAILED)
