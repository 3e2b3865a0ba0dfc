"""Drawing a plot without putting the run at risk.

A plot is drawn after the results it shows are written (results.csv, summary.json, ...):
`draw_plot` turns a plot that cannot be drawn (an odd input matplotlib refuses, a missing
font, a full disk) into a one-line warning naming the plot file, and leaves no file of
that name behind, so a run never fails, nor lists a picture it does not have, for want
of a picture.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_plot(draw: Callable[[], object], path: Path, echo: Callable | None) -> Path | None:
    """`draw()` (which writes `path` atomically); on any error, `echo` a warning naming
    `path` and the reason (``err=True``), remove `path` and return None."""
    try:
        draw()
    except Exception as error:  # noqa: BLE001 - any plotting failure is only a warning
        if "matplotlib.pyplot" in sys.modules:  # the failed plot's figure is still open
            sys.modules["matplotlib.pyplot"].close("all")
        Path(path).unlink(missing_ok=True)  # not a stale picture from an earlier run
        reason = str(error).splitlines()[0] if str(error) else ""
        (echo or _silent)(f"warning: {Path(path).name} was not drawn "
                          f"({type(error).__name__}: {reason}); the results are written",
                          err=True)
        return None
    return Path(path)


def _silent(*_args, **_kwargs) -> None:
    """The default `echo`: say nothing."""
