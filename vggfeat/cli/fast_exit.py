"""Leave the process without the interpreter's teardown once torch is loaded.

Tearing down an interpreter that imported torch takes 0.6-0.8 s on the reference 2-core
machine (`python -c "import torch"` 2.4-2.7 s against 1.8 s when it ends with os._exit:
the final garbage collection, every module's dictionary cleared, libtorch's static
destructors), paid after a command's work is done and while the user waits for the prompt.

`fast_exit` does what Python's own shutdown does first, and skips the rest:

1. wait for the non-daemon threads (``threading._shutdown``, as ``Py_FinalizeEx`` does;
   it also stops idle thread-pool workers), unless a Ctrl-C or SIGTERM stopped the command
   (`vggfeat.utils.interrupts`): then a pool thread may still be computing its part of the
   abandoned batch (`vggfeat.models.cpu.CpuDense`, seconds) and nothing it does is kept,
2. run the ``atexit`` handlers (h5py closes any file still open, logging flushes,
   multiprocessing joins its children),
3. flush stdout and stderr,

then ``os._exit(status)``. Nothing vggfeat writes depends on a finaliser: files are closed
by context managers and renamed into place (`vggfeat.utils.atomic`) before a command returns.
VGGFEAT_SLOW_EXIT=1, or a process without torch, exits the ordinary way.
"""
from __future__ import annotations

import atexit
import os
import sys
import threading

from vggfeat.utils import interrupts


def exit_status(code) -> int:
    """The status ``sys.exit(code)`` gives: None -> 0, an int as is, anything else (a
    message, which is printed to stderr) -> 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def fast_exit(code=0):
    """End the process with `code` (as ``sys.exit`` would), skipping the teardown."""
    interrupts.ended()  # the exit status and message are settled: a late signal adds nothing
    if "torch" not in sys.modules or os.environ.get("VGGFEAT_SLOW_EXIT") == "1":
        sys.exit(code)
    status = exit_status(code)
    try:
        if interrupts.stopping() is None:  # a stopped run's threads only compute: not awaited
            threading._shutdown()
        atexit._run_exitfuncs()
    except AttributeError:  # a Python without these: its own shutdown is the safe way
        sys.exit(status)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more to say
            pass
    os._exit(status)
