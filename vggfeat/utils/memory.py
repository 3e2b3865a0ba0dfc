"""How much memory this machine can still give, and a refusal before work that cannot fit.

A run that needs more than the machine has ends, late, as an out-of-memory kill (or a
machine swapping for hours); comparing the bytes a step needs with the memory available
first turns that into one line that names the fix.
"""
from __future__ import annotations

import ctypes
import os

from vggfeat.utils.errors import InputError


class TooBigError(InputError):
    """Data that cannot fit in this machine's memory; the message says what to change."""


def available_bytes() -> int | None:
    """Memory a new allocation can use now: Linux's MemAvailable (free memory plus what the
    kernel can reclaim, proc(5)), else the free pages (os.sysconf); None when unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB"


def refuse_unless_fits(needed: int, what: str, fixes: str) -> None:
    """Raise `TooBigError` (one line: what, the bytes needed and available, `fixes`) when
    `needed` bytes exceed the memory available; nothing when that is unknown."""
    available = available_bytes()
    if available is not None and needed > available:
        raise TooBigError(f"{what} needs {gib(needed)} of memory but this machine has "
                          f"{gib(available)} available: {fixes}")


def keep_no_blas_buffers() -> None:
    """Ask MKL not to keep the buffers of its matrix products for reuse (its "fast memory
    manager"): after the SVM solver's products it held 62 MiB that no array used, through
    svm-eval's peak, at no measurable cost in time. MKL reads the setting when torch loads
    it, so this must run before torch is imported; a setting of the user's is kept."""
    os.environ.setdefault("MKL_DISABLE_FAST_MM", "1")


def return_free_memory() -> None:
    """Give the C allocator's free memory back to the system (glibc's malloc_trim). Arrays
    freed stay in its heap, still counted in the process's memory, and a large allocation
    made next comes on top of them: before the SVM solver's Gram matrix, the scratch of the
    steps before it (about 0.3 GiB at Caltech-256 size, stacked). Nothing where the C
    library has no malloc_trim (macOS, Windows, musl)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):
        return
    trim(0)
