"""Checkpoints: atomic weights_only files, RNG states, bitwise resume, refused resume."""
import json
import random
import shutil

import numpy as np
import pytest
import torch
from conftest import torch_threads
from helpers_training import TINY_OPTIONS, make_image_folder, run_cli

from vggfeat.training.checkpoint import (
    CheckpointError,
    check_resumable,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


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
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]  # no temporary left
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
    assert result.exit_code == 1 and "--force-resume" in result.output
    assert "arch: 'vgg11' saved vs 'vgg13' now" in result.output
    # Another dataset (one image more).
    changed = tmp_path / "changed"
    shutil.copytree(data, changed)
    first = sorted((changed / "train" / "red_disc").iterdir())[0]
    shutil.copy(first, first.with_name("extra.jpg"))
    result = train(changed, tmp_path / "run", "--epochs", "2", "--resume")
    assert result.exit_code == 1 and "train_digest" in result.output
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
    assert result.exit_code == 1 and "pass --resume" in result.output
    result = train(data, tmp_path / "new", "--epochs", "1", "--resume")
    assert result.exit_code == 1 and "start without --resume" in result.output
