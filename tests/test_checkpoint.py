"""Checkpoints: atomic weights_only files, RNG states, bitwise resume, refused resume."""
import json
import os
import random
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from helpers_training import TINY_OPTIONS, make_image_folder, run_cli

from vggfeat.training.checkpoint import (
    CheckpointError,
    check_resumable,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from vggfeat.utils.threads import torch_threads


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("shapes"), n_train=12, n_val=3)


def train(data, out, *extra):
    # Dropout, flips, jittered scales and colour shifts all on: every RNG must be restored.
    result = run_cli(["train-backbone", "--data", data, "--out", out, *TINY_OPTIONS,
                      "--scale-jitter", "64", "96", "--batch-size", "16", "--lr", "0.005",
                      *map(str, extra)])
    return result


def test_save_is_atomic_and_weights_only(tmp_path):
    state = {"model": {"w": torch.arange(3.0)}, "epoch": 2, "config": {"arch": "vgg11"},
             "rng": rng_state(), "classes": ["a", "b"]}
    path = save_checkpoint(state, tmp_path / "checkpoint.pth")
    # no temporary left; the sha256 recorded beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth",
                                                          "checkpoint.pth.sha256"]
    loaded = torch.load(path, weights_only=True)
    assert loaded["epoch"] == 2 and loaded["classes"] == ["a", "b"]
    assert torch.equal(loaded["model"]["w"], torch.arange(3.0))


def test_rng_state_round_trip_through_a_file(tmp_path):
    state = rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(2))
    save_checkpoint({"model": {}, "epoch": 0, "rng": state}, tmp_path / "c.pth")
    random.random(), np.random.rand(), torch.rand(5)  # move every generator on
    set_rng_state(load_checkpoint(tmp_path / "c.pth")["rng"])
    again = (random.random(), np.random.rand(), torch.rand(2))
    assert again[0] == expected[0] and again[1] == expected[1]
    assert torch.equal(again[2], expected[2])


def test_damaged_or_foreign_checkpoints_are_clear_errors(tmp_path):
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pth"):
        load_checkpoint(tmp_path / "bad.pth")
    torch.save({"w": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a vggfeat training checkpoint"):
        load_checkpoint(tmp_path / "other.pth")


def test_check_resumable_names_the_differences(tmp_path):
    saved = {"arch": "vgg11", "width": 0.125, "crop_size": 64, "num_classes": 4,
             "classes": list("abcd"), "train_digest": "x"}
    assert check_resumable(saved, {**saved, "epochs": 9}, tmp_path) == []
    with pytest.raises(CheckpointError, match="arch: 'vgg11' saved vs 'vgg13' now"):
        check_resumable(saved, {**saved, "arch": "vgg13"}, tmp_path)
    assert check_resumable(saved, {**saved, "train_digest": "y"}, tmp_path, force=True)


def test_resume_is_bitwise_exact_on_cpu(data, tmp_path):
    assert train(data, tmp_path / "full", "--epochs", "3").exit_code == 0
    assert train(data, tmp_path / "part", "--epochs", "2").exit_code == 0
    # Resume with worker processes: per-image seeds make decoding workers irrelevant.
    result = train(data, tmp_path / "part", "--epochs", "3", "--resume", "--workers", "2")
    assert result.exit_code == 0, result.output
    full = torch.load(tmp_path / "full" / "checkpoint.pth", weights_only=True)
    part = torch.load(tmp_path / "part" / "checkpoint.pth", weights_only=True)
    assert full["epoch"] == part["epoch"] == 3 and full["step"] == part["step"]
    for key, value in full["model"].items():
        assert torch.equal(value, part["model"][key]), key
    for index, buffers in full["optimizer"]["state"].items():
        assert torch.equal(buffers["momentum_buffer"],
                           part["optimizer"]["state"][index]["momentum_buffer"])
    assert full["scheduler"] == part["scheduler"]
    logs = [[json.loads(x) for x in (tmp_path / d / "log.jsonl").read_text().splitlines()]
            for d in ("full", "part")]
    assert [r["train_loss"] for r in logs[0]] == [r["train_loss"] for r in logs[1]]


def test_resume_refuses_another_configuration(data, tmp_path):
    assert train(data, tmp_path / "run", "--epochs", "1").exit_code == 0
    # Another architecture.
    result = train(data, tmp_path / "run", "--epochs", "2", "--resume", "--arch", "B")
    assert result.exit_code == 2 and "--force-resume" in result.output
    assert "arch: 'vgg11' saved vs 'vgg13' now" in result.output
    # Another dataset (one image more).
    changed = tmp_path / "changed"
    shutil.copytree(data, changed)
    first = sorted((changed / "train" / "red_disc").iterdir())[0]
    shutil.copy(first, first.with_name("extra.jpg"))
    result = train(changed, tmp_path / "run", "--epochs", "2", "--resume")
    assert result.exit_code == 2 and "train_digest" in result.output
    # Nothing was overwritten by the refused attempts.
    assert torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)["epoch"] == 1
    # Asked for explicitly, it continues.
    with pytest.warns(UserWarning, match="despite: train_digest"):
        result = train(changed, tmp_path / "run", "--epochs", "2", "--resume", "--force-resume")
    assert result.exit_code == 0, result.output
    assert torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)["epoch"] == 2


def test_existing_run_is_not_overwritten_without_resume(data, tmp_path):
    assert train(data, tmp_path / "run", "--epochs", "1").exit_code == 0
    result = train(data, tmp_path / "run", "--epochs", "1")
    assert result.exit_code == 2 and "pass --resume" in result.output
    result = train(data, tmp_path / "new", "--epochs", "1", "--resume")
    assert result.exit_code == 2 and "start without --resume" in result.output


def run(data, out, *extra):
    return run_cli(["train-backbone", "--data", data, "--out", out, *TINY_OPTIONS,
                    "--batch-size", "16", *map(str, extra)])


def test_resume_with_other_optimizer_options_refuses_or_applies_them(data, tmp_path):
    """A changed --lr/--momentum/--weight-decay is never silently overridden by the saved
    optimizer state while config.json records it: refused, or applied with --force-resume."""
    out = tmp_path / "run"
    assert run(data, out, "--epochs", "1", "--lr", "0.005").exit_code == 0
    changed = ["--lr", "0.001", "--momentum", "0.5", "--weight-decay", "0"]
    refused = run(data, out, "--epochs", "2", "--resume", *changed)
    assert refused.exit_code == 2
    for text in ("lr: 0.005 saved vs 0.001 now", "momentum: 0.9 saved vs 0.5 now",
                 "weight_decay: 0.0005 saved vs 0.0 now", "--force-resume"):
        assert text in refused.output, refused.output
    assert torch.load(out / "checkpoint.pth", weights_only=True)["epoch"] == 1
    with pytest.warns(UserWarning, match="despite: lr"):
        applied = run(data, out, "--epochs", "2", "--resume", "--force-resume", *changed)
    assert applied.exit_code == 0, applied.output
    assert "note: --resume applies the new lr 0.005 -> 0.001" in applied.output
    state = torch.load(out / "checkpoint.pth", weights_only=True)
    group = state["optimizer"]["param_groups"][0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.001, 0.5, 0.0)
    assert state["scheduler"]["min_lrs"] == [pytest.approx(0.001 * 0.1 ** 3)]
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in log] == [0.005, 0.001]  # what was done ...
    config = json.loads((out / "config.json").read_text())
    assert (config["lr"], config["momentum"], config["weight_decay"]) == (0.001, 0.5, 0.0)


def test_a_second_run_on_one_folder_is_refused_and_a_dead_ones_lock_taken_over(data, tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "vggfeat", "train-backbone", "--data", str(data), "--out",
            str(out), *TINY_OPTIONS, "--batch-size", "16", "--epochs", "1000"]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 60
        while not ((out / "train.lock").exists() or (out / "config.json").exists()):
            assert first.poll() is None, first.communicate()  # not ended before the check
            assert time.monotonic() < deadline, "the first run did not start in 60 s"
            time.sleep(0.05)
        second = run(data, out, "--epochs", "1")
        assert second.exit_code == 2, second.output
        assert "in use" in second.output and f"process {first.pid}" in second.output
    finally:
        first.kill()
        first.communicate(timeout=30)
    assert (out / "train.lock").exists()  # killed: its lock is left behind ...
    resume = ["--resume"] if (out / "checkpoint.pth").exists() else []
    third = run(data, out, "--epochs", "1", *resume)
    assert third.exit_code == 0, third.output  # ... and taken over, with a note
    assert f"taking over the lock {out / 'train.lock'} of process {first.pid}" in third.output
    assert not (out / "train.lock").exists()


def _stalled_training(images, out, epochs, resume=False) -> str:
    """A real run that learns nothing (lr 0, std-0.01 init); returns its stderr."""
    import contextlib
    import io

    from vggfeat.training import train as train_api

    buffer = io.StringIO()
    with contextlib.redirect_stderr(buffer):
        train_api(data=images, out=out, arch="A", width=0.125, crop_size=64, init="normal",
                  lr=0.0, epochs=epochs, batch_size=8, workers=0, device="cpu", quiet=True,
                  resume=resume)
    return buffer.getvalue()


def test_stall_warning_counts_across_resume_as_an_uninterrupted_run(tmp_path):
    images = make_image_folder(tmp_path / "data", n_train=2, n_val=2)
    out = tmp_path / "run"
    assert "learnt nothing" not in _stalled_training(images, out, epochs=2)
    # Epoch 3 is the third at ln(C): an uninterrupted run warns there, so must this one.
    resumed = _stalled_training(images, out, epochs=4, resume=True)
    assert resumed.count("learnt nothing in 3 epochs") == 1, resumed
    assert resumed.count("learnt nothing") == 1
    # Said once per run: a second resume does not say it again.
    assert "learnt nothing" not in _stalled_training(images, out, epochs=5, resume=True)
    # A checkpoint written before the state was carried resumes counting from zero.
    state = torch.load(out / "checkpoint.pth", weights_only=True)
    assert len(state["stall"]["records"]) == 5 and state["stall"]["warned"]
    del state["stall"]
    save_checkpoint(state, out / "checkpoint.pth")
    assert "learnt nothing" not in _stalled_training(images, out, epochs=6, resume=True)
