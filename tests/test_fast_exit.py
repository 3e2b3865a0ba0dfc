"""`vggfeat.cli.fast_exit`: skipping the interpreter's teardown loses nothing.

Each check runs in a fresh process with buffered (piped, not PYTHONUNBUFFERED) output: a
non-daemon thread's last write, an atexit handler and text still in stdio's buffers must
all survive, and the status must be the one asked for.
"""
import os
import subprocess
import sys

import pytest

from vggfeat.cli.fast_exit import exit_status, fast_exit

PROBE = """
import atexit, sys, threading, time
import torch
from vggfeat.cli.fast_exit import fast_exit

def late_write():
    time.sleep(0.3)
    open(sys.argv[1], "w").write("thread finished")

threading.Thread(target=late_write).start()
atexit.register(lambda: print("atexit handler ran"))
sys.stdout.write("buffered line\\n")
sys.stderr.write("error text\\n")
fast_exit({code!r})
"""


def _run_probe(tmp_path, code):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONUNBUFFERED", "VGGFEAT_SLOW_EXIT")}
    marker = tmp_path / "thread.txt"
    done = subprocess.run([sys.executable, "-c", PROBE.format(code=code), str(marker)],
                          env=env, capture_output=True, text=True, timeout=120)
    return done, marker


@pytest.mark.parametrize(("code", "status"), [(0, 0), (3, 3), (None, 0)])
def test_threads_handlers_and_buffers_survive(tmp_path, code, status):
    done, marker = _run_probe(tmp_path, code)
    assert done.returncode == status, done.stderr
    assert done.stdout.splitlines() == ["buffered line", "atexit handler ran"]
    assert "error text" in done.stderr
    assert marker.read_text() == "thread finished"


def test_a_message_is_printed_and_exits_1(tmp_path):
    done, _ = _run_probe(tmp_path, "stopped: see above")
    assert done.returncode == 1
    assert "stopped: see above" in done.stderr


def test_exit_status_follows_sys_exit(capsys):
    assert exit_status(None) == 0
    assert exit_status(2) == 2
    assert exit_status("why") == 1
    assert capsys.readouterr().err == "why\n"


def test_slow_exit_on_request_is_an_ordinary_system_exit(monkeypatch):
    monkeypatch.setenv("VGGFEAT_SLOW_EXIT", "1")
    with pytest.raises(SystemExit) as raised:
        fast_exit(4)
    assert raised.value.code == 4
