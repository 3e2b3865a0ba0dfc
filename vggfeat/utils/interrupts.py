"""Ctrl-C, SIGTERM and SIGHUP for the command line: stop cleanly, or go on without a terminal.

What a scheduler or a user sends, and what a vggfeat command does (CONTRIBUTING, "Faults and
bad input"):

- SIGINT (Ctrl-C) and SIGTERM (Slurm, Kubernetes, `timeout`, torchrun stopping its job):
  the signal becomes one exception, `Interrupted`, raised where the main thread is, so the
  current image or batch is abandoned and every ``with``/``finally`` on the way out flushes
  and closes the cache or run folder and releases its lock. The command line prints one line,
  "stopped: <what is kept>; <how to continue>", made by the innermost `progress_note` that the
  running command set, and exits 128 + the signal's number (130, 143), as a shell reports a
  process killed by it. Code inside `deferred()` (a checkpoint and its log line) finishes
  first. A second Ctrl-C while stopping ends the process at once (said in one line; what is
  on disk is as safe as after a kill -9, which every writer is built for); a SIGTERM while
  stopping is ignored (torchrun sends one to every process after a Ctrl-C).
- SIGHUP (the terminal or ssh session went away): the work goes on. stderr and stdout are
  `guard_streams`' wrappers, which go silent when their reader is gone (EPIPE, EIO), so
  progress never ends a run; after a hang-up a terminal's streams go silent at once.

A stop raised where Python cannot raise (a finaliser: an object's ``__del__`` or a collected
generator, which print "Exception ignored" and go on) or caught by a library's ``except
BaseException`` would be lost, and the run would go on to its end. So every step of a
progress bar (`vggfeat.utils.progress`, which every long loop has) calls `check`, which
raises the stop again when one was signalled but nothing is on its way out.

A signal that was ignored when the process started (``nohup``, a shell's ``&``) stays ignored.
`install` is called by the command line's entry point only: a library caller keeps Python's
own KeyboardInterrupt.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}
DEFAULT_NOTE = "rerun the same command to continue (finished work is kept)"

_notes: list[Callable[[], str]] = []
# signum -> an exception to raise instead of `Interrupted`, or None (e.g. torchrun's
# SIGTERM after a peer died: the job failed, `vggfeat.utils.distributed.JobStopped`).
_replacements: list[Callable[[int], BaseException | None]] = []
_state = {"stopping": None, "deferred": 0, "pending": None, "pid": None, "ended": False,
          "raised": None}


class Interrupted(BaseException):
    """A command stopped by SIGINT or SIGTERM; exits 128 + the signal's number (130, 143).

    A BaseException, as KeyboardInterrupt is: the ``except Exception`` that turns any
    decoder's failure into "bad image", or a damaged weight file's into one message, must
    not swallow a stop that lands inside it.

    Its message is computed when printed, so that it counts what the ``finally`` blocks on
    the way out have finished.
    """

    def __init__(self, signum: int, note: Callable[[], str] | None = None):
        super().__init__(signum)
        self.signum = signum
        self.exit_code = 128 + signum
        self.note = note

    def __str__(self) -> str:
        try:
            detail = self.note() if self.note else DEFAULT_NOTE
        except Exception:  # noqa: BLE001 - the stop itself must be reported, whatever the note
            detail = DEFAULT_NOTE
        rank = os.environ.get("RANK") if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None
        where = f"rank {rank}: " if rank is not None else ""
        return f"{where}stopped by {NAMES.get(self.signum, self.signum)}: {detail}"


def replace_with(replacement: Callable[[int], BaseException | None]) -> None:
    """Let `replacement(signum)` give the exception a stop raises instead of `Interrupted`
    (None: no replacement), looked at when the signal comes."""
    if replacement not in _replacements:
        _replacements.append(replacement)


def _stop_error(signum: int) -> BaseException:
    for replacement in _replacements:
        try:
            error = replacement(signum)
        except Exception:  # noqa: BLE001 - a replacement is a bonus, never a new failure
            error = None
        if error is not None:
            return error
    return Interrupted(signum, current_note())


@contextlib.contextmanager
def progress_note(note: Callable[[], str]) -> Iterator[None]:
    """While inside, a stop says `note()` ("812 of 5011 images done; rerun ...")."""
    _notes.append(note)
    try:
        yield
    finally:
        _notes.remove(note)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A stop that arrives inside is raised when the block has finished (e.g. between a
    log line and its checkpoint, which must agree)."""
    _state["deferred"] += 1
    try:
        yield
    finally:
        _state["deferred"] -= 1
        pending = _state["pending"]
        if _state["deferred"] == 0 and pending is not None:
            _state["pending"] = None
            raise pending


def stopping() -> int | None:
    """The signal a stop is under way for, or None."""
    return _state["stopping"]


def check() -> None:
    """Raise the stop again if one was signalled but was lost (see the module's text).

    Called between two steps of work. Does nothing in a library caller (no `install`),
    in another thread or process, inside `deferred` (its end raises), or while an exception
    is on its way out (a ``finally`` cleaning up after the stop itself, which must finish).
    """
    if (_state["stopping"] is None or _state["ended"] or _state["deferred"]
            or os.getpid() != _state["pid"]
            or threading.current_thread() is not threading.main_thread()
            or sys.exc_info()[1] is not None):
        return
    error = _stop_error(_state["stopping"])
    _state["raised"] = error
    raise error


def current_note() -> Callable[[], str] | None:
    """The innermost `progress_note` set, or None."""
    return _notes[-1] if _notes else None


def ended() -> None:
    """The command has ended and said how: a signal from now on (torchrun's SIGTERM to the
    survivors of a failed job, while this process exits) changes nothing and says nothing."""
    _state["ended"] = True


def _on_stop_signal(signum, frame):
    if os.getpid() != _state["pid"]:  # a forked helper (a DataLoader worker): as before
        _as_without_handler(signum)
    if _state["ended"]:
        return
    if _state["stopping"] is not None:
        if signum == signal.SIGINT:  # the user insists: leave now
            _say(f"second Ctrl-C: stopping at once; {DEFAULT_NOTE}")
            os._exit(128 + signum)
        return  # torchrun's SIGTERM after a Ctrl-C, or a repeated SIGTERM: already stopping
    _state["stopping"] = signum
    error = _stop_error(signum)
    if _state["deferred"]:
        _state["pending"] = error
        return
    _state["raised"] = error
    raise error


def _on_unraisable(unraisable) -> None:
    """A stop raised inside a finaliser is lost there ("Exception ignored in ..."): say
    nothing, `check` raises it again at the next step of work. Anything else as Python does."""
    if unraisable.exc_value is not None and unraisable.exc_value is _state["raised"]:
        return
    sys.__unraisablehook__(unraisable)


def _as_without_handler(signum: int) -> None:
    """What the signal does without `install`: KeyboardInterrupt for SIGINT (which
    DataLoader workers end on quietly), else the default action."""
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _on_hangup(signum, frame):
    for stream in (sys.stdout, sys.stderr):  # the terminal is gone: nothing can be shown
        if isinstance(stream, GuardedStream) and stream.is_terminal:
            stream.silence()


def _say(line: str) -> None:
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def install() -> None:
    """Handle SIGINT, SIGTERM and SIGHUP as the module says (main thread only; a signal
    ignored at start stays ignored)."""
    if threading.current_thread() is not threading.main_thread():
        return
    _state["pid"] = os.getpid()
    for signum, handler in ((signal.SIGINT, _on_stop_signal),
                            (signal.SIGTERM, _on_stop_signal),
                            (signal.SIGHUP, _on_hangup)):
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, handler)
    sys.unraisablehook = _on_unraisable


def installed() -> bool:
    """Whether `install` handles SIGTERM in this process."""
    return signal.getsignal(signal.SIGTERM) is _on_stop_signal


class GuardedStream:
    """A text stream that goes silent, instead of raising, once its reader is gone.

    A closed pipe (EPIPE: the `tee` or log shipper reading stderr died) or a hung-up terminal
    (EIO) would otherwise raise at the next progress line and end a day-long run.
    """

    def __init__(self, stream):
        self._stream = stream
        self._silent = False
        try:
            self.is_terminal = stream.isatty()
        except (AttributeError, ValueError, OSError):
            self.is_terminal = False

    def silence(self) -> None:
        self._silent = True

    def write(self, text: str) -> int:
        if not self._silent:
            try:
                self._stream.write(text)
            except (OSError, ValueError):  # EPIPE, EIO, or the stream was closed
                self._silent = True
        return len(text)

    def flush(self) -> None:
        if not self._silent:
            try:
                self._stream.flush()
            except (OSError, ValueError):
                self._silent = True

    def isatty(self) -> bool:
        return not self._silent and self.is_terminal

    def __getattr__(self, name):  # encoding, fileno, buffer...: the real stream's
        return getattr(self._stream, name)


def guard_streams() -> None:
    """Replace sys.stdout and sys.stderr by `GuardedStream`s (the command line's entry)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, GuardedStream):
            setattr(sys, name, GuardedStream(stream))
