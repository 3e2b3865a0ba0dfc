"""train-backbone / eval-backbone command lines: help, bad input, synthetic data."""
import json
import shutil

import pytest
import torch
from helpers_training import TINY_OPTIONS, make_image_folder, run_cli

from vggfeat.utils.threads import torch_threads


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


@pytest.fixture
def data(tmp_path):
    return make_image_folder(tmp_path / "data", n_train=8, n_val=2)


def train(data, out, *extra):
    return run_cli(["train-backbone", "--data", data, "--out", out, *TINY_OPTIONS,
                    "--batch-size", "8", *map(str, extra)])


@pytest.mark.parametrize("command", ["train-backbone", "eval-backbone"])
def test_help(command):
    result = run_cli([command, "--help"])
    assert result.exit_code == 0 and "Example" in result.output


def test_defaults_are_the_library_ones():
    """One source of truth: every train-backbone option named like a training option
    defaults to `DEFAULTS` (or, for the localisation options, `LOC_DEFAULTS`)."""
    import click.core

    from vggfeat.cli.train import train_backbone
    from vggfeat.localisation.config import LOC_DEFAULTS
    from vggfeat.training.config import DEFAULTS

    unset = getattr(click.core, "UNSET", None)  # click >= 8.3: "no default given"
    checked = 0
    for param in train_backbone.params:
        if param.name in ("lr", "workers"):  # resolved when the command runs (task, cores)
            continue
        default = None if param.default is unset else param.default
        for defaults in (DEFAULTS, LOC_DEFAULTS):
            if param.name in defaults and not getattr(param, "is_flag", False):
                assert default == defaults[param.name], param.name
                checked += 1
    assert checked >= 25


def test_needs_data_or_synthetic(tmp_path):
    result = run_cli(["train-backbone", "--out", tmp_path / "run"])
    assert result.exit_code == 2 and "--synthetic" in result.output


def test_empty_class_folder_is_an_error_at_start(data, tmp_path):
    (data / "train" / "purple_star").mkdir()
    (data / "val" / "purple_star").mkdir()
    (data / "val" / "purple_star" / "a.jpg").write_bytes(
        (next((data / "val" / "red_disc").iterdir())).read_bytes())
    result = train(data, tmp_path / "run", "--epochs", "1")
    assert result.exit_code == 2
    assert "without images" in result.output and "purple_star" in result.output
    assert not (tmp_path / "run").exists()  # nothing was started


def test_mismatched_train_val_classes_is_an_error_at_start(data, tmp_path):
    shutil.rmtree(data / "val" / "red_disc")
    result = train(data, tmp_path / "run", "--epochs", "1")
    assert result.exit_code == 2
    assert "only in train: ['red_disc']" in result.output


def test_unreadable_images_are_skipped_and_counted(data, tmp_path):
    (data / "train" / "red_disc" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (data / "train" / "red_disc" / "empty.jpg").write_bytes(b"")
    result = train(data, tmp_path / "run", "--epochs", "2", "--max-bad-fraction", "0.1")
    assert result.exit_code == 0, result.output
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    # 34 training images, 32 per epoch (4 batches of 8): each epoch meets some of the two.
    assert all(0 <= r["bad_images"] <= 2 for r in log)
    assert sum(r["bad_images"] for r in log) >= 1


def test_too_many_unreadable_images_abort(data, tmp_path):
    for i in range(6):
        (data / "train" / "red_disc" / f"broken{i}.jpg").write_bytes(b"garbage")
    result = train(data, tmp_path / "run", "--epochs", "1", "--max-bad-fraction", "0.01")
    assert result.exit_code == 2
    assert "could not be decoded" in result.output and "broken" in result.output
    assert "--max-bad-fraction" in result.output


def test_divergence_stops_without_saving_the_diverged_net(data, tmp_path):
    result = train(data, tmp_path / "run", "--epochs", "1", "--lr", "1e6")
    assert result.exit_code == 1 and "diverged" in result.output
    assert not (tmp_path / "run" / "checkpoint.pth").exists()


def test_synthetic_data_with_max_steps(tmp_path):
    result = run_cli(["train-backbone", "--synthetic", "--synthetic-size", "64",
                      "--num-classes", "5", "--out", tmp_path / "run", *TINY_OPTIONS,
                      "--batch-size", "16", "--epochs", "1", "--max-steps", "2"])
    assert result.exit_code == 0, result.output
    [record] = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert record["step"] == 2 and record["images_per_s"] > 0
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    assert ckpt["classes"] == [f"class{i:04d}" for i in range(5)]
    assert ckpt["config"]["synthetic"] is True


def test_eval_backbone_rejects_unsafe_weights(data, tmp_path):
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pth")
    result = run_cli(["eval-backbone", "--data", data, "--weights", tmp_path / "pickled.pth",
                      "--device", "cpu", "--quiet"])
    assert result.exit_code == 2 and "pickled.pth" in result.output


def test_uneven_width_round_trips_through_every_command(data, tmp_path):
    # 64 * 0.1 = 6.4 -> 6 channels but 4096 * 0.1 -> 410: the width must come from the
    # checkpoint, not from one tensor's shape (0.2, 0.3: tests/test_weights.py).
    width = "0.1"
    run = tmp_path / "run"
    result = train(data, run, "--epochs", "1", "--width", width, "--max-steps", "1")
    assert result.exit_code == 0, result.output
    backbone = run / "backbone.pth"
    result = run_cli(["eval-backbone", "--root", data, "--weights", backbone, "--scales", "64",
                      "--method", "dense", "--device", "cpu", "--workers", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    result = run_cli(["doctor", "--weights", backbone, "--device", "cpu"])
    assert f"width {float(width)}" in result.output, result.output
    cache = tmp_path / "f.h5"
    result = run_cli(["extract", "--dataset", "folder", "--root", data / "val", "--weights",
                      backbone, "--scales", "64", "--device", "cpu", "--quiet", "--out", cache])
    assert result.exit_code == 0, result.output
    result = train(data, tmp_path / "tuned", "--epochs", "1", "--width", width, "--max-steps",
                   "1", "--finetune-from", run)
    assert result.exit_code == 0, result.output
