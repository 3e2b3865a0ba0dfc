"""One progress bar for every long loop: tqdm on stderr, readable in a log file too.

On a terminal the bar redraws in place ten times a second. When stderr is a file or a pipe
(CI, `nohup`, `2> log`) each redraw would be one more carriage-return-separated chunk of
one endless line, so there the bar is drawn at most once every `LOG_INTERVAL` seconds, in
plain ASCII, each state on a line of its own, plus the final line (tqdm's own
TQDM_MININTERVAL environment variable, when set, decides the interval instead). A stream
whose reader has gone (a closed pipe) silences the bar instead of ending the work
(`vggfeat.utils.interrupts.GuardedStream`), for library callers too.

Each step of a bar, drawn or disabled (--quiet), is also where a Ctrl-C or SIGTERM that was
lost on its way (`vggfeat.utils.interrupts.check`) is raised again.
"""
from __future__ import annotations

import os
import sys

from tqdm import tqdm

from vggfeat.utils import interrupts
from vggfeat.utils.interrupts import GuardedStream

# Seconds between two progress lines when stderr is not a terminal.
LOG_INTERVAL = 10.0


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class _Lines:
    """A stream wrapper that turns tqdm's in-place redraws ("\\r" + state) into lines."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        text = text.replace("\r", "").rstrip(" \n")
        if text:  # the clearing writes of leave=False are only spaces
            self.stream.write(text + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


class _Bar(tqdm):
    """tqdm whose every step is a point where a lost stop is raised again."""

    def update(self, n=1):
        interrupts.check()
        return super().update(n)

    def __iter__(self):
        for item in super().__iter__():
            interrupts.check()
            yield item


def progress_bar(iterable=None, *, file=None, **kwargs) -> tqdm:
    """`tqdm(iterable, **kwargs)` on stderr, throttled when stderr is not a terminal.

    Args:
        iterable: what to iterate over (optional, as for tqdm).
        file: the stream (default: sys.stderr as it is at call time, so tests that
            capture stderr see the bar).
        **kwargs: tqdm's (desc, total, unit, disable, leave, ...).
    """
    file = sys.stderr if file is None else file
    if not isinstance(file, GuardedStream):  # a closed pipe silences the bar, never the work
        file = GuardedStream(file)
    if not _is_terminal(file):
        if "TQDM_MININTERVAL" not in os.environ:
            kwargs.setdefault("mininterval", LOG_INTERVAL)
            kwargs.setdefault("maxinterval", max(LOG_INTERVAL, kwargs["mininterval"]))
        kwargs.setdefault("ascii", True)
        kwargs["leave"] = True  # a log keeps the final state (a terminal may clear it)
        kwargs.setdefault("ncols", 100)  # a log has no width to follow
        kwargs.pop("dynamic_ncols", None)
        file = _Lines(file)
    return _Bar(iterable, file=file, **kwargs)
