"""vggfeat.utils.locking: one writer at a time, with real processes holding and dying with locks."""
import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from vggfeat.utils import locking

HOLD = """
import sys, time
from vggfeat.utils import locking
lock = locking.acquire(sys.argv[1], "the test's file", log=lambda m: None)
print("held", flush=True)
sys.stdin.readline()
lock.release()
"""


def holder(path):
    """A separate process that takes the lock and keeps it until its stdin closes."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_acquire_release_and_the_record(tmp_path):
    path = tmp_path / "out.h5.lock"
    lock = locking.acquire(path, "x")
    record = json.loads(path.read_text())
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    lock.release()
    assert not path.exists()
    locking.acquire(path, "x").release()  # free again


def test_a_live_holder_is_refused_naming_its_pid(tmp_path):
    path = tmp_path / "out.h5.lock"
    process = holder(path)
    try:
        with pytest.raises(locking.LockedError, match=f"process {process.pid} on host") as info:
            locking.acquire(path, "feature cache out.h5")
        assert "is in use" in str(info.value) and info.value.exit_code == 2
    finally:
        process.communicate("\n", timeout=30)
    locking.acquire(path, "x").release()  # released by its owner


def test_the_lock_of_a_killed_process_is_taken_over_with_a_message(tmp_path):
    path = tmp_path / "out.h5.lock"
    process = holder(path)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert json.loads(path.read_text())["pid"] == process.pid  # left behind
    messages = []
    lock = locking.acquire(path, "x", log=messages.append)
    assert len(messages) == 1 and f"process {process.pid}" in messages[0] and \
        "taking over" in messages[0]
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()


def test_a_lock_from_another_host_is_not_taken_over(tmp_path):
    path = tmp_path / "run" / "train.lock"
    path.parent.mkdir()
    path.write_text(json.dumps({"kind": locking.KIND, "pid": 1, "host": "elsewhere-42"}))
    with pytest.raises(locking.LockedError, match=f"delete {path}"):
        locking.acquire(path, "run folder run")
    assert "elsewhere-42" in path.read_text()  # untouched


def test_a_file_that_is_not_a_lock_is_never_overwritten(tmp_path):
    path = tmp_path / "notes.lock"
    path.write_text("my own notes\n")
    with pytest.raises(locking.LockedError, match="not a vggfeat lock file"):
        locking.acquire(path, "x")
    assert path.read_text() == "my own notes\n"


def test_job_lock_in_one_process(tmp_path):
    path = tmp_path / "a.lock"
    with locking.job_lock(path, "x") as lock:
        assert lock is not None and path.exists()
        with pytest.raises(locking.LockedError):  # a second open file description conflicts
            locking.acquire(path, "x")
    assert not path.exists()
    with pytest.raises(RuntimeError), locking.job_lock(path, "x"):
        raise RuntimeError("the job failed")
    assert not path.exists()  # released on errors too


def test_a_folder_made_for_the_lock_goes_when_nothing_was_written(tmp_path):
    with pytest.raises(RuntimeError), locking.job_lock(tmp_path / "new" / "x.lock", "x"):
        raise RuntimeError("failed before writing anything")
    assert not (tmp_path / "new").exists()
    with locking.job_lock(tmp_path / "kept" / "x.lock", "x"):
        (tmp_path / "kept" / "result.txt").write_text("work")
    assert (tmp_path / "kept" / "result.txt").exists()
