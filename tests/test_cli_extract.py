"""`vggfeat extract`: the command end to end, several processes, kill and resume, bad images."""
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from helpers_datasets import (
    make_csv_dataset,
    make_folder_dataset,
    make_voc_action,
    slow_extract_args,
)
from helpers_features import assert_same_cache, write_bad_images

from vggfeat.cli import cli
from vggfeat.features import load_features
from vggfeat.features.cache import read_failed

TINY = ["--scales", "64,96", "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder") / "data"
    make_folder_dataset(root, classes=("a", "b", "c"), per_class=4)
    return root


def extract(*args):
    result = CliRunner().invoke(cli, ["extract", *map(str, args)])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_help():
    result = CliRunner().invoke(cli, ["extract", "--help"])
    assert result.exit_code == 0 and "--scales" in result.output and "Example" in result.output


def test_folder_dataset_end_to_end(folder, tiny_weights, tmp_path):
    out = tmp_path / "f.h5"
    result = extract("--dataset", "folder", "--root", folder, "--weights", tiny_weights,
                     "--out", out, *TINY)
    assert result.exit_code == 0, result.output
    assert "12 images (12 computed this run, 0 failed)" in result.stdout and str(out) in \
        result.stdout  # the result on stdout, progress on stderr
    with h5py.File(out) as f:
        assert f["descriptors"].shape == (12, 2, 512) and f["done"][()].all()
        assert f.attrs["dataset"] == "folder" and f.attrs["scales"].tolist() == [64, 96]
    again = extract("--dataset", "folder", "--root", folder, "--weights", tiny_weights,
                    "--out", out, *TINY, "--quiet")
    assert "0 computed this run" in again.stdout  # resumed: nothing left to do


def test_a_misspelt_trunk_setting_is_refused_before_any_file(folder, tiny_weights, tmp_path,
                                                             monkeypatch):
    monkeypatch.setenv("VGGFEAT_CPU_TRUNK", "fastest")
    out = tmp_path / "runs" / "f.h5"
    out.parent.mkdir()
    result = extract("--dataset", "folder", "--root", folder, "--weights", tiny_weights,
                     "--out", out, *TINY, "--quiet")
    assert result.exit_code == 2 and "VGGFEAT_CPU_TRUNK" in result.output, result.output
    assert list(out.parent.iterdir()) == []  # no OUT.partial, no lock left behind


def test_bad_images_are_listed_recorded_and_good_ones_kept(folder, tiny_weights, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(folder, root)
    bad = write_bad_images(root / "b")
    out = tmp_path / "bad.h5"
    result = extract("--dataset", "folder", "--root", root, "--weights", tiny_weights,
                     "--out", out, *TINY, "--quiet")
    assert result.exit_code == 3, result.output
    for name, word in bad.items():
        line = next(x for x in result.stderr.splitlines() if f"b/{name}" in x)
        assert word in line, line
    assert sorted(i for i, _ in read_failed(out)) == sorted(f"b/{n}" for n in bad)
    clean = tmp_path / "clean.h5"
    extract("--dataset", "folder", "--root", folder, "--weights", tiny_weights, "--out", clean,
            *TINY, "--quiet")
    with pytest.warns(UserWarning, match="5 rows have no descriptor"):
        ids, x = load_features(out, "stack", l2=False)
    clean_ids, clean_x = load_features(clean, "stack", l2=False)
    assert ids == clean_ids
    np.testing.assert_allclose(x, clean_x, rtol=1e-5, atol=1e-6)
    skipped = extract("--dataset", "folder", "--root", root, "--weights", tiny_weights,
                      "--out", out, *TINY, "--quiet", "--skip-bad")
    assert skipped.exit_code == 0 and "5 failed" in skipped.stdout


def test_config_mismatch_refused_unless_overwrite(folder, tiny_weights, tmp_path):
    out = tmp_path / "f.h5"
    common = ["--dataset", "folder", "--root", folder, "--weights", tiny_weights, "--out", out,
              *TINY, "--quiet"]
    assert extract(*common).exit_code == 0
    refused = extract(*common, "--layer", "fc6")
    assert refused.exit_code == 2
    assert "layer: file has 'fc7', this run 'fc6'" in refused.stderr and "--overwrite" in \
        refused.stderr
    assert extract(*common, "--layer", "fc6", "--overwrite").exit_code == 0
    with h5py.File(out) as f:
        assert f.attrs["layer"] == "fc6"


def test_user_errors_are_messages(tmp_path, tiny_weights):
    missing = extract("--dataset", "folder", "--root", tmp_path / "nowhere", "--weights",
                      tiny_weights)
    assert missing.exit_code == 2 and "nowhere" in missing.stderr
    (tmp_path / "d" / "a").mkdir(parents=True)
    scales = extract("--dataset", "folder", "--root", tmp_path / "d", "--weights", tiny_weights,
                     "--scales", "64,x")
    assert scales.exit_code == 2 and "256,384,512" in scales.stderr


def test_voc_action_boxes_and_csv(tiny_weights, tmp_path):
    data = make_voc_action(tmp_path / "voc", n_per_split={"train": 3, "val": 2})
    out = tmp_path / "action.h5"
    result = extract("--dataset", "voc2012-action", "--root", data.root, "--weights",
                     tiny_weights, "--out", out, "--scales", "64", "--quiet")
    assert result.exit_code == 0, result.stderr
    with h5py.File(out) as f:
        box_ids = [i.decode() for i in f["boxes/ids"][()]]
        assert sorted(box_ids) == sorted(data.boxes) and f["boxes/done"][()].all()
        assert f["boxes/descriptors"].shape == (len(box_ids), 1, 512)
    csv = make_csv_dataset(tmp_path / "csv", n_images=6)
    result = extract("--dataset", "csv", "--root", csv.root, "--weights", tiny_weights,
                     "--out", tmp_path / "csv.h5", "--scales", "64", "--quiet")
    assert result.exit_code == 0, result.stderr


def command(*args):
    return [sys.executable, "-m", "vggfeat", "extract", *map(str, args)]


def test_two_processes_write_the_same_file_as_one(folder, tiny_weights, tmp_path):
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    args = ["--dataset", "folder", "--root", folder, "--weights", tiny_weights, *TINY,
            "--quiet", "--batch-size", "3"]
    assert extract(*args, "--out", one).exit_code == 0
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2", "-m", "vggfeat", "extract", *map(str, args),
                "--out", str(two)]
    done = subprocess.run(torchrun, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert not list(tmp_path.glob("two.h5.partial*"))  # shards merged and removed
    assert_same_cache(one, two)


def test_killed_run_resumes_to_the_same_file(tiny_weights, tmp_path):
    root = tmp_path / "data"
    make_folder_dataset(root, classes=("a", "b"), per_class=32)
    # Enough work (a second or more even on a fast machine) for progress updates to show.
    args = ["--dataset", "folder", "--root", root, "--weights", tiny_weights,
            "--scales", "64,96,128,192", "--device", "cpu", "--batch-size", "1"]
    killed = tmp_path / "killed.h5"
    process = subprocess.Popen(command(*args, "--out", killed), stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "OMP_NUM_THREADS": "1",
                                               "TQDM_MININTERVAL": "0"})  # every update
    seen = threading.Event()

    def watch():  # kill as soon as the progress bar shows some but not all images done
        text = ""
        while not seen.is_set():
            chunk = process.stderr.read(1)
            if not chunk:
                return
            text += chunk
            counts = [int(n) for n in re.findall(r"(\d+)/64 ", text[-200:])]
            if counts and 3 <= counts[-1] < 50:
                os.kill(process.pid, signal.SIGKILL)
                seen.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    process.wait(timeout=120)
    watcher.join(timeout=5)
    assert seen.is_set() and process.returncode == -signal.SIGKILL, "the run ended before the kill"
    partial = tmp_path / "killed.h5.partial"
    assert partial.exists() and not killed.exists()  # a killed run never looks complete
    with h5py.File(partial) as f:
        done_before = int(f["done"][()].sum())
    assert 0 < done_before < 64
    time.sleep(0.1)
    resumed = extract(*args, "--out", killed, "--quiet")
    assert resumed.exit_code == 0, resumed.stderr
    assert f"{64 - done_before} computed this run" in resumed.stdout
    whole = tmp_path / "whole.h5"
    assert extract(*args, "--out", whole, "--quiet").exit_code == 0
    assert_same_cache(killed, whole)


# -- data loss (issue 9): files vggfeat did not write, and files in use ----------------------

@pytest.mark.parametrize("kind", ["text", "hdf5", "weights"])
def test_out_that_is_not_a_cache_is_refused_and_kept(folder, tiny_weights, tmp_path, kind):
    if kind == "text":
        out = tmp_path / "notes.h5"
        out.write_text("a week of notes\n")
    elif kind == "hdf5":
        out = tmp_path / "other.h5"
        with h5py.File(out, "w") as f:
            f["measurements"] = np.arange(10.0)
    else:
        out = tmp_path / "weights-copy.pth"
        shutil.copy(tiny_weights, out)
    before = out.read_bytes()
    common = ["--dataset", "folder", "--root", folder, "--out", out, *TINY, "--quiet"]
    weights = out if kind == "weights" else tiny_weights
    refused = extract(*common, "--weights", weights)
    assert refused.exit_code == 2, refused.output
    assert str(out) in refused.stderr and "Traceback" not in refused.output
    assert out.read_bytes() == before
    replaced = extract(*common, "--weights", weights, "--overwrite")
    if kind == "weights":  # never, whatever the options
        assert replaced.exit_code == 2 and "--weights file" in replaced.stderr
        assert out.read_bytes() == before
    else:
        assert replaced.exit_code == 0, replaced.output
        assert load_features(out)[1].shape == (12, 512)


@pytest.mark.slow
def test_two_runs_on_one_out_do_not_destroy_each_other(tiny_weights, tmp_path):
    args = slow_extract_args(tmp_path / "data", tiny_weights, per_class=24)
    out = tmp_path / "f.h5"
    first = subprocess.Popen(command(*args, "--out", out), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    lock = tmp_path / "f.h5.lock"
    deadline = time.monotonic() + 60
    while not (tmp_path / "f.h5.partial").exists():  # the first run is writing
        assert first.poll() is None, first.communicate()  # not ended before the check
        assert time.monotonic() < deadline, "no partial file after 60 s"
        time.sleep(0.05)
    second = extract(*args, "--out", out)
    assert second.exit_code == 2, second.output
    assert "in use" in second.stderr and f"process {first.pid}" in second.stderr
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr[-2000:]
    assert "Traceback" not in stderr and "48 computed this run" in stdout + stderr
    assert not lock.exists()
    whole = tmp_path / "whole.h5"
    assert extract(*args, "--out", whole).exit_code == 0
    assert_same_cache(out, whole)
