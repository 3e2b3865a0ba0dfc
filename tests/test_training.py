"""The trainer end to end on generated JPEG folders: learning, --init-from, torchrun/DDP."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import torch_threads
from helpers_training import TINY_OPTIONS, make_image_folder, run_cli

from vggfeat.models import build_backbone, load_backbone
from vggfeat.training.trainer import init_from_net_a


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory):
    """A narrow VGG-A trained 6 epochs on 4 classes x 64 generated JPEGs (about 10 s).

    Batch 8 at lr 0.003: over seeds 0-5 the final val top-1 error was 0-25% (chance 75%);
    larger steps make this net without batch norm spike now and then.
    """
    root = make_image_folder(tmp_path_factory.mktemp("shapes"), n_train=64, n_val=12)
    out = tmp_path_factory.mktemp("runs") / "A"
    with torch_threads(1):
        result = run_cli(["train-backbone", "--data", root, "--out", out, *TINY_OPTIONS,
                          "--epochs", "6", "--batch-size", "8", "--lr", "0.003",
                          "--lr-patience", "2", "--seed", "0"])
    assert result.exit_code == 0, result.output
    return root, out


def test_narrow_vgg_a_learns_well_above_chance(learned_run):
    _, out = learned_run
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == list(range(1, 7))
    for key in ("train_loss", "train_top1_err", "val_top1_err", "val_top5_err", "lr",
                "images_per_s", "train_time_s"):
        assert all(math.isfinite(r[key]) for r in log), key
    # Chance is 75% top-1 error on 4 balanced classes.
    assert log[-1]["val_top1_err"] <= 40.0, log
    assert log[-1]["train_loss"] < 0.75 * math.log(4), log


def test_final_backbone_loads_for_extraction(learned_run):
    root, out = learned_run
    model = load_backbone(out / "backbone.pth")  # what `vggfeat extract --weights` calls
    assert model.meta["classes"] == sorted(p.name for p in (root / "train").iterdir())
    assert model.meta["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    assert model.meta["crop_size"] == 64 and model.meta["arch"] == "vgg11"
    assert model.meta["training"]["scale"] == 64
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, ckpt["model"][key]), key
    assert model.dense(torch.zeros(1, 3, 96, 128), "fc7").shape == (1, 512, 2, 3)


def test_init_from_copies_exactly_net_a_layers():
    torch.manual_seed(0)
    net_a = build_backbone("A", width=0.125, crop_size=64, num_classes=4, init="xavier")
    torch.manual_seed(1)
    net_d = build_backbone("D", width=0.125, crop_size=64, num_classes=4)
    before = {k: v.clone() for k, v in net_d.state_dict().items()}
    copied = init_from_net_a(net_d, net_a)
    # By hand from paper Table 1: A's conv1_1, conv2_1, conv3_1, conv3_2 are its
    # features.0/3/6/8; in D the same layers are features.0/5/10/12.
    mapping = {"features.0": "features.0", "features.3": "features.5",
               "features.6": "features.10", "features.8": "features.12",
               "classifier.0": "classifier.0", "classifier.3": "classifier.3",
               "classifier.6": "classifier.6"}
    expected = {f"{d}.{p}": f"{a}.{p}" for a, d in mapping.items() for p in ("weight", "bias")}
    assert sorted(copied) == sorted(expected)
    a_state = net_a.state_dict()
    for key, value in net_d.state_dict().items():
        if key in expected:
            assert torch.equal(value, a_state[expected[key]]), key
        else:
            assert torch.equal(value, before[key]), f"{key} changed"


def test_init_from_through_the_cli(tmp_path):
    root = make_image_folder(tmp_path / "data", n_train=2, n_val=1)
    assert run_cli(["train-backbone", "--data", root, "--out", tmp_path / "A", *TINY_OPTIONS,
                    "--epochs", "0", "--batch-size", "4"]).exit_code == 0
    result = run_cli(["train-backbone", "--data", root, "--out", tmp_path / "B", *TINY_OPTIONS,
                      "--arch", "B", "--epochs", "0", "--batch-size", "4",
                      "--init-from", tmp_path / "A"])
    assert result.exit_code == 0, result.output
    a = load_backbone(tmp_path / "A" / "backbone.pth").state_dict()
    b = load_backbone(tmp_path / "B" / "backbone.pth").state_dict()
    # B (vgg13): conv1_1 = features.0, conv2_1 = features.5, conv3_1/3_2 = features.10/12.
    for a_key, b_key in (("features.3.weight", "features.5.weight"),
                         ("features.8.bias", "features.12.bias"),
                         ("classifier.0.weight", "classifier.0.weight")):
        assert torch.equal(a[a_key], b[b_key])


def test_init_from_with_another_width_is_a_clear_error(tmp_path):
    root = make_image_folder(tmp_path / "data", n_train=2, n_val=1)
    assert run_cli(["train-backbone", "--data", root, "--out", tmp_path / "A", *TINY_OPTIONS,
                    "--epochs", "0", "--batch-size", "4"]).exit_code == 0
    result = run_cli(["train-backbone", "--data", root, "--out", tmp_path / "D", *TINY_OPTIONS,
                      "--arch", "D", "--width", "0.25", "--epochs", "0", "--batch-size", "4",
                      "--init-from", tmp_path / "A"])
    assert result.exit_code == 1
    assert "does not fit" in result.output and "width" in result.output


def test_finetune_from_starts_from_the_trained_net(learned_run, tmp_path):
    root, out = learned_run
    result = run_cli(["train-backbone", "--data", root, "--out", tmp_path / "ft", *TINY_OPTIONS,
                      "--epochs", "0", "--batch-size", "8", "--finetune-from", out])
    assert result.exit_code == 0, result.output
    trained = load_backbone(out / "backbone.pth").state_dict()
    start = load_backbone(tmp_path / "ft" / "backbone.pth").state_dict()
    assert all(torch.equal(trained[k], start[k]) for k in trained)
    result = run_cli(["train-backbone", "--data", root, "--out", tmp_path / "ft2", *TINY_OPTIONS,
                      "--arch", "B", "--epochs", "0", "--batch-size", "8",
                      "--finetune-from", out])
    assert result.exit_code == 1 and "another configuration" in result.output


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(tmp_path):
    """2 gloo processes x 8 images == 1 process x 16 images per step, to float rounding.

    Augmentation is seeded per image (not per rank), so only dropout differs between ranks:
    it is switched off.
    """
    root = make_image_folder(tmp_path / "data", n_train=8, n_val=4)
    common = ["train-backbone", "--data", root, *TINY_OPTIONS, "--epochs", "2",
              "--batch-size", "16", "--dropout", "0", "--lr", "0.01"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "vggfeat", *map(str, common), "--out", str(tmp_path / "ddp")],
        env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert run_cli([*common, "--out", tmp_path / "single"]).exit_code == 0
    two = torch.load(tmp_path / "ddp" / "checkpoint.pth", weights_only=True)
    one = torch.load(tmp_path / "single" / "checkpoint.pth", weights_only=True)
    assert two["step"] == one["step"] == 4
    moved = 0.0
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key], value, rtol=1e-4, atol=1e-6)
        moved = max(moved, (value - two["model"][key]).abs().max().item())
    logs = [[json.loads(x) for x in (tmp_path / d / "log.jsonl").read_text().splitlines()]
            for d in ("ddp", "single")]
    for a, b in zip(*logs, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_top1_err"] == b["val_top1_err"]
    # Only rank 0 wrote: one log line per epoch, no stray temporary files.
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == [
        "backbone.pth", "checkpoint.pth", "config.json", "log.jsonl"]
