"""Faults: kill -9 at random moments during every kind of write, and a full disk.

Kills are real SIGKILLs at seeded random moments, of forked writers (fast: the writes
themselves, looped) or of real `vggfeat` processes. A full disk is a real write failure:
the process runs with RLIMIT_FSIZE (ulimit -f; SIGXFSZ ignored, so writes fail with EFBIG),
which needs no root and hits every write the way ENOSPC does.
"""
import json
import multiprocessing
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers_datasets import make_folder_dataset, slow_extract_args, small_voc_cache
from helpers_features import assert_same_cache, write_bad_images
from helpers_training import TINY_OPTIONS, make_image_folder, run_cli

from vggfeat.cli import cli
from vggfeat.features import cache
from vggfeat.training.checkpoint import load_checkpoint, save_checkpoint
from vggfeat.utils.threads import torch_threads

FORK = multiprocessing.get_context("fork")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def kill_at_random(target, delays, args=()):
    """Run `target(*args)` in a forked process and SIGKILL it after each delay in turn."""
    for delay in delays:
        child = FORK.Process(target=target, args=args, daemon=True)
        child.start()
        time.sleep(delay)
        assert child.is_alive(), "the writer ended before the kill"
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        yield


def hidden_tmp(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp"))


# -- cache finalisation: failures table and shard merges, killed mid-rewrite ---------------

IDS = [f"img{k}" for k in range(400)]
PRE = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "channel_order": "RGB",
       "value_scale": 1.0}


def _attrs():
    from vggfeat.features.descriptor import DescriptorConfig

    config = DescriptorConfig(arch="vgg16", weights_sha256="ab" * 32, preprocessing=PRE,
                              scales=(64, 96))
    return cache.cache_attributes(config, dataset="folder")


def _finalising_forever(out: Path, attrs: dict):
    """What the end of every run does, again and again: record failures, merge a shard."""
    partial, k = cache.partial_path(out), 0
    while True:
        writer = cache.RowWriter(partial)
        writer.fail(5, f"reason {k}")
        writer.close()
        shard = cache.create_shard(out, 1, "/", attrs, IDS, [6], 2048)
        writer = cache.RowWriter(shard)
        writer.fail(6, f"shard reason {k}")
        writer.close()
        cache.merge_shards(out, lambda m: None)
        k += 1


def test_kill_during_cache_finalisation_always_leaves_a_loadable_file(tmp_path):
    out, attrs = tmp_path / "f.h5", _attrs()
    rows = np.random.default_rng(0).random((len(IDS), 2, 2048)).astype(np.float32)
    partial = cache.open_for_writing(out, attrs, {"/": IDS}, 2048, log=lambda m: None)
    writer = cache.RowWriter(partial, flush_every=100)
    for k in range(len(IDS)):
        if k not in (5, 6):
            writer.put(k, rows[k])
    writer.close()  # a 13 MB file: kills land mid-journal and mid-change
    delays = np.random.default_rng(1).uniform(0.05, 0.6, 6)
    for _ in kill_at_random(_finalising_forever, delays, (out, attrs)):
        # the next run resumes it (undoing a change the kill cut short, `cache.inplace`);
        # leftovers of the killed writer are cleared ...
        again = cache.open_for_writing(out, attrs, {"/": IDS}, 2048, log=lambda m: None)
        assert cache.pending(again) == [5, 6]
        with h5py.File(partial) as f:  # ... and the previous state opens, every row intact
            done = f["done"][()]
            assert done.sum() == len(IDS) - 2 and not done[5] and not done[6]
            np.testing.assert_array_equal(f["descriptors"][()][done], rows[done])
            failed = dict((i.decode(), r.decode()) for i, r in f["failed"][()])
            assert set(failed) <= {"img5", "img6"}
        assert not hidden_tmp(tmp_path) and not cache.shard_paths(out)
    writer = cache.RowWriter(partial)
    writer.put(5, rows[5])
    writer.put(6, rows[6])
    writer.close()
    assert cache.finalize(out)
    np.testing.assert_array_equal(cache.read_descriptors(out)[1], rows)
    assert cache.read_failed(out) == []


# -- checkpoint save -----------------------------------------------------------------------

def _state(epoch: int) -> dict:
    torch.manual_seed(epoch)
    return {"model": {"w": torch.randn(300_000)}, "epoch": epoch, "config": {}}


def _saving_forever(path: Path):
    epoch = 1
    while True:
        save_checkpoint(_state(epoch), path)
        epoch += 1


def test_kill_during_checkpoint_save_always_leaves_the_previous_or_the_new(tmp_path):
    path = tmp_path / "checkpoint.pth"
    save_checkpoint(_state(0), path)
    delays = np.random.default_rng(2).uniform(0.05, 0.8, 6)
    for _ in kill_at_random(_saving_forever, delays, (path,)):
        state = load_checkpoint(path)
        assert torch.equal(state["model"]["w"], _state(state["epoch"])["model"]["w"])


# -- svm-eval outputs ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def voc_cache(tmp_path_factory):
    return small_voc_cache(tmp_path_factory.mktemp("voc"))


SVM = ["--C", "1", "--cv", "2", "--quiet"]


def svm_eval(*args):
    return CliRunner().invoke(cli, ["svm-eval", *map(str, args)])


def _reporting_forever(features, out):
    while True:
        svm_eval(features, "--out", out, *SVM)


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


def test_kill_while_svm_eval_writes_leaves_only_whole_files(voc_cache, tmp_path):
    reference = tmp_path / "reference"
    assert svm_eval(voc_cache, "--out", reference, *SVM).exit_code == 0
    expected = files_of(reference)
    assert "summary.json" in expected and "pr_test.png" in expected
    out = tmp_path / "out"
    start = time.perf_counter()
    assert svm_eval(voc_cache, "--out", out, *SVM).exit_code == 0
    one_run = time.perf_counter() - start
    delays = np.random.default_rng(3).uniform(0.2 * one_run, 1.2 * one_run, 3)
    for _ in kill_at_random(_reporting_forever, delays, (voc_cache, out)):
        for name, content in files_of(out).items():  # every file whole: the old or new
            assert content == expected[name], name
    assert svm_eval(voc_cache, "--out", out, *SVM).exit_code == 0  # the rerun
    assert files_of(out) == expected


# -- extraction, killed as a whole process at random moments -------------------------------

def extract_command(*args):
    return [sys.executable, "-m", "vggfeat", "extract", *map(str, args)]


@pytest.mark.slow
def test_extraction_killed_at_random_moments_finishes_equal(tiny_weights, tmp_path):
    root = tmp_path / "data"
    make_folder_dataset(root, classes=("a", "b"), per_class=6)
    write_bad_images(root / "b")  # the end of each run writes a failed table
    args = ["--dataset", "folder", "--root", root, "--weights", tiny_weights,
            "--scales", "64,96", "--device", "cpu", "--batch-size", "1", "--quiet",
            "--skip-bad"]
    whole = tmp_path / "whole.h5"
    assert CliRunner().invoke(cli, ["extract", *map(str, args), "--out", str(whole)]
                              ).exit_code == 0
    out, lock = tmp_path / "killed.h5", tmp_path / "killed.h5.lock"
    rng = random.Random(4)
    for _ in range(3):
        process = subprocess.Popen(extract_command(*args, "--out", out), env=ENV,
                                   stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        while not lock.exists() and process.poll() is None:
            time.sleep(0.01)  # the writing starts once the lock is taken
        time.sleep(rng.uniform(0.0, 2.0))
        process.kill()
        process.wait()
        for path in (out, cache.partial_path(out)):
            if path.exists():  # whatever is there opens, and its done rows are right
                with h5py.File(path) as f:
                    assert f["done"].shape == (17,)
    rerun = CliRunner().invoke(cli, ["extract", *map(str, args), "--out", str(out)])
    assert rerun.exit_code == 0, rerun.output
    assert_same_cache(out, whole)
    assert not hidden_tmp(tmp_path) and not cache.partial_path(out).exists()


# -- a full disk ---------------------------------------------------------------------------

def limited(size: int):
    """preexec_fn: files of this process may not grow past `size` bytes (ulimit -f)."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    return apply


def run_limited(size: int, *args):
    return subprocess.run([sys.executable, "-m", "vggfeat", *map(str, args)], env=ENV,
                          capture_output=True, text=True, timeout=300,
                          preexec_fn=limited(size))


def assert_disk_full_message(done, path_part: str):
    assert done.returncode == 1, done.stderr[-2000:]
    assert "no space left to write" in done.stderr and path_part in done.stderr
    assert "rerun the same command" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_disk_full_during_extraction(tiny_weights, tmp_path):
    root = tmp_path / "data"
    make_folder_dataset(root, classes=("a", "b"), per_class=8)
    args = ["extract", "--dataset", "folder", "--root", root, "--weights", tiny_weights,
            "--scales", "64,96", "--device", "cpu", "--quiet"]
    out = tmp_path / "full.h5"
    done = run_limited(40_000, *args, "--out", out)  # the cache needs 16 x 2 x 512 x 4 bytes
    assert_disk_full_message(done, "full.h5.partial")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing a rerun trusts
    assert run_cli([*args, "--out", out]).exit_code == 0  # space freed: the same command
    whole = tmp_path / "whole.h5"
    assert run_cli([*args, "--out", whole]).exit_code == 0
    assert_same_cache(out, whole)


@pytest.mark.slow
def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(tmp_path):
    data = make_image_folder(tmp_path / "data", n_train=4, n_val=2)
    args = ["train-backbone", "--data", data, *TINY_OPTIONS, "--batch-size", "8"]
    run = tmp_path / "run"
    assert run_cli([*args, "--out", run, "--epochs", "1"]).exit_code == 0
    before = (run / "checkpoint.pth").read_bytes()
    done = run_limited(200_000, *args, "--out", run, "--epochs", "2", "--resume")
    assert_disk_full_message(done, "checkpoint.pth")
    assert (run / "checkpoint.pth").read_bytes() == before and not hidden_tmp(run)
    assert run_cli([*args, "--out", run, "--epochs", "2", "--resume"]).exit_code == 0
    assert run_cli([*args, "--out", tmp_path / "straight", "--epochs", "2"]).exit_code == 0
    resumed = torch.load(run / "checkpoint.pth", weights_only=True)
    straight = torch.load(tmp_path / "straight" / "checkpoint.pth", weights_only=True)
    assert resumed["epoch"] == straight["epoch"] == 2
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]


@pytest.mark.slow
def test_disk_full_while_svm_eval_writes(voc_cache, tmp_path):
    reference = tmp_path / "reference"
    assert svm_eval(voc_cache, "--out", reference, *SVM).exit_code == 0
    out = tmp_path / "out"
    done = run_limited(3_000, "svm-eval", voc_cache, "--out", out, *SVM)
    assert_disk_full_message(done, str(out))
    expected = files_of(reference)
    for name, content in files_of(out).items():  # what was written is whole
        assert content == expected[name], name
    assert not hidden_tmp(out) and "summary.json" not in files_of(out)
    assert svm_eval(voc_cache, "--out", out, *SVM).exit_code == 0
    assert files_of(out) == expected


# -- torchrun with one rank killed ---------------------------------------------------------

def children_with_rank(parent: int) -> dict[int, int]:
    """RANK -> pid of the processes whose parent is `parent` (torchrun's workers)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent:
            for item in environ:
                if item.startswith(b"RANK="):
                    found[int(item[5:])] = int(entry.name)
    return found


@pytest.mark.slow
def test_torchrun_with_a_killed_rank_stops_with_a_message_and_resumes(tiny_weights, tmp_path):
    args = slow_extract_args(tmp_path / "data", tiny_weights, per_class=12)
    out = tmp_path / "two.h5"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2", "-m", "vggfeat", "extract", *map(str, args),
                "--out", str(out)]
    agent = subprocess.Popen(torchrun, env={**ENV, "VGGFEAT_DIST_TIMEOUT": "20"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    shard = tmp_path / "two.h5.partial.rank1.images"
    deadline = time.monotonic() + 120
    while not shard.exists():  # both ranks are computing rows
        assert agent.poll() is None, agent.communicate()
        assert time.monotonic() < deadline, "the job did not start in 120 s"
        time.sleep(0.05)
    workers = children_with_rank(agent.pid)
    os.kill(workers[1], signal.SIGKILL)
    killed_at = time.monotonic()
    _, stderr = agent.communicate(timeout=90)
    assert agent.returncode != 0
    assert time.monotonic() - killed_at < 60  # stopped, not hung (timeout 20 s + grace)
    assert "rank 0: the torchrun job stopped" in stderr, stderr[-3000:]
    assert "rerun the same command to resume" in stderr
    rerun = subprocess.run(torchrun, env=ENV, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    whole = tmp_path / "whole.h5"
    assert CliRunner().invoke(cli, ["extract", *map(str, args), "--out", str(whole)]
                              ).exit_code == 0
    assert_same_cache(out, whole)
