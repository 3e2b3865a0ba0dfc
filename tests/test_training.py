"""The trainer end to end on generated JPEG folders: learning, --init-from, torchrun/DDP."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers_training import TINY_OPTIONS, make_image_folder, run_cli
from PIL import Image

from vggfeat.models import build_backbone, load_backbone
from vggfeat.training.model import init_from_net_a
from vggfeat.utils.threads import torch_threads


def folder_mean_rgb(folder):
    """Mean RGB (0..255) of every image of a folder tree, each image weighted equally."""
    means = [np.asarray(Image.open(p).convert("RGB"), np.float64).mean((0, 1))
             for p in sorted(folder.rglob("*.jpg"))]
    return np.mean(means, axis=0)


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory):
    """A narrow VGG-A trained 6 epochs on 4 classes x 64 generated JPEGs (about 10 s).

    The paper's preprocessing (pixels 0..255 minus the mean, no division: inputs ~60x
    larger than torchvision's) with Glorot init: batch 8 at lr 0.001 gave a final val top-1
    error of 0% over seeds 0-3 (chance 75%); lr 0.003, fine with torchvision's [0, 1]
    inputs (0-25% over seeds 0-5), diverged on seed 2.
    """
    root = make_image_folder(tmp_path_factory.mktemp("shapes"), n_train=64, n_val=12)
    out = tmp_path_factory.mktemp("runs") / "A"
    with torch_threads(1):
        result = run_cli(["train-backbone", "--data", root, "--out", out, *TINY_OPTIONS,
                          "--epochs", "6", "--batch-size", "8", "--lr", "0.001",
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
    # The paper's preprocessing by default: 0..255, the training images' mean RGB, std 1.
    prep = model.meta["preprocessing"]
    assert prep["value_scale"] == 255.0 and prep["std"] == [1.0, 1.0, 1.0]
    assert prep["channel_order"] == "RGB" and model.meta["training"]["mean"] == "sample"
    np.testing.assert_allclose(prep["mean"], folder_mean_rgb(root / "train"), atol=4.0)
    assert model.pool_rounding == "floor" and model.meta["pool_rounding"] == "floor"
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
    assert result.exit_code == 2
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
    assert result.exit_code == 2 and "another configuration" in result.output


def test_preprocessing_options_are_recorded(tmp_path):
    root = make_image_folder(tmp_path / "data", n_train=3, n_val=1)
    runs = {"torchvision": ["--preprocessing", "torchvision"],
            "imagenet": ["--mean", "imagenet"],
            "given": ["--mean", "100,110,120", "--std", "2,2,2", "--pool-rounding", "ceil"]}
    for name, options in runs.items():
        result = run_cli(["train-backbone", "--data", root, "--out", tmp_path / name,
                          *TINY_OPTIONS, "--epochs", "0", "--batch-size", "4", *options])
        assert result.exit_code == 0, result.output
    meta = {name: load_backbone(tmp_path / name / "backbone.pth").meta for name in runs}
    assert meta["torchvision"]["preprocessing"] == {
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "channel_order": "RGB",
        "value_scale": 1.0}
    assert meta["imagenet"]["preprocessing"]["mean"] == [123.68, 116.779, 103.939]
    assert meta["imagenet"]["preprocessing"]["value_scale"] == 255.0
    assert meta["given"]["preprocessing"]["mean"] == [100.0, 110.0, 120.0]
    assert meta["given"]["preprocessing"]["std"] == [2.0, 2.0, 2.0]
    assert meta["given"]["pool_rounding"] == "ceil"
    assert load_backbone(tmp_path / "given" / "backbone.pth").pool_rounding == "ceil"
    # Fine-tuning keeps the source net's rounding unless told otherwise.
    result = run_cli(["train-backbone", "--data", root, "--out", tmp_path / "ft", *TINY_OPTIONS,
                      "--epochs", "0", "--batch-size", "4", "--finetune-from",
                      tmp_path / "given"])
    assert result.exit_code == 0, result.output
    assert load_backbone(tmp_path / "ft" / "backbone.pth").pool_rounding == "ceil"
    # ... and the input its weights were trained on.
    assert load_backbone(tmp_path / "ft" / "backbone.pth").meta["preprocessing"] == \
        meta["given"]["preprocessing"]
    bad = run_cli(["train-backbone", "--data", root, "--out", tmp_path / "bad", *TINY_OPTIONS,
                   "--epochs", "0", "--mean", "1,2"])
    assert bad.exit_code == 2 and "--mean" in bad.output
    # torchvision's [0, 1] numbers with the paper's 0..255 pixels: refused, with the fix.
    bad = run_cli(["train-backbone", "--data", root, "--out", tmp_path / "bad", *TINY_OPTIONS,
                   "--epochs", "0", "--batch-size", "4", "--mean", "0.485,0.456,0.406"])
    assert bad.exit_code == 2 and "--preprocessing torchvision" in bad.output
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(tmp_path):
    """2 gloo processes x 8 images == 1 process x 16 images per step, to float rounding.

    Augmentation is seeded per image (not per rank), so only dropout differs between ranks:
    it is switched off. The two runs add the same gradients in another order, and on some
    CPUs (an Intel Xeon with AMX, 2026-12) those last-bit differences flip ties of the max
    pools over the test's flat-coloured shapes, which moves single weights by ~1e-5: so
    each tensor is compared by how far it moved from the initial weights (a wrong gradient
    average, e.g. a sum over ranks, is off by a whole step: 100% of the movement).
    """
    root = make_image_folder(tmp_path / "data", n_train=8, n_val=4)
    same = ["train-backbone", "--data", root, *TINY_OPTIONS, "--batch-size", "16",
            "--dropout", "0", "--lr", "0.001"]
    common = [*same, "--epochs", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "vggfeat", *map(str, common), "--out", str(tmp_path / "ddp")],
        env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert run_cli([*common, "--out", tmp_path / "single"]).exit_code == 0
    assert run_cli([*same, "--epochs", "0", "--out", tmp_path / "init"]).exit_code == 0
    two = torch.load(tmp_path / "ddp" / "checkpoint.pth", weights_only=True)
    one = torch.load(tmp_path / "single" / "checkpoint.pth", weights_only=True)
    init = torch.load(tmp_path / "init" / "backbone.pth", weights_only=True)["state_dict"]
    assert two["step"] == one["step"] == 4
    for key, value in one["model"].items():
        moved = (value - init[key]).norm()
        assert moved > 0, key
        assert (two["model"][key] - value).norm() <= 0.03 * moved, key
    logs = [[json.loads(x) for x in (tmp_path / d / "log.jsonl").read_text().splitlines()]
            for d in ("ddp", "single")]
    for a, b in zip(*logs, strict=True):  # the first epoch agrees to 1e-8, the second 3e-5
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_top1_err"] == b["val_top1_err"]
    # Only rank 0 wrote: one log line per epoch, no stray temporary files.
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == [
        "backbone.pth", "backbone.pth.sha256", "checkpoint.pth", "checkpoint.pth.sha256",
        "config.json", "log.jsonl"]
