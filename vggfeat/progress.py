"""One progress bar for every long loop: tqdm on stderr, readable in a log file too.

On a terminal the bar redraws in place ten times a second. When stderr is a file or a pipe
(CI, `nohup`, `2> log`) every redraw becomes a line of the log, so there it is drawn at
most once every `LOG_INTERVAL` seconds, plus the final line (tqdm's own TQDM_MININTERVAL
environment variable, when set, decides instead).
"""
from __future__ import annotations

import os
import sys

from tqdm import tqdm

# Seconds between two progress lines when stderr is not a terminal.
LOG_INTERVAL = 10.0


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(iterable=None, *, file=None, **kwargs) -> tqdm:
    """`tqdm(iterable, **kwargs)` on stderr, throttled when stderr is not a terminal.

    Args:
        iterable: what to iterate over (optional, as for tqdm).
        file: the stream (default: sys.stderr as it is at call time, so tests that
            capture stderr see the bar).
        **kwargs: tqdm's (desc, total, unit, disable, leave, ...).
    """
    file = sys.stderr if file is None else file
    if not _is_terminal(file) and "TQDM_MININTERVAL" not in os.environ:
        kwargs.setdefault("mininterval", LOG_INTERVAL)
        kwargs.setdefault("maxinterval", max(LOG_INTERVAL, kwargs["mininterval"]))
    return tqdm(iterable, file=file, **kwargs)
