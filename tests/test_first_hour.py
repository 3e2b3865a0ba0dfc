"""The traps of a user's first hour (issue 10): each one, as a user would fall into it.

A backbone that learnt nothing, descriptors that do not vary, C at the edge of its grid, a
cache written by the Python API, default cache names of training runs, svm-eval's output
folder, run folders as weights, and an interrupted extraction: each must be said clearly
where it happens, never pass in silence.
"""
import json
import math

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import make_tiny_backbone
from helpers_datasets import make_folder_dataset
from helpers_training import make_image_folder

from vggfeat.cli import cli
from vggfeat.cli.extract import default_out
from vggfeat.data.readers import open_dataset
from vggfeat.doctor import FAIL, check_cache
from vggfeat.evaluation.diagnostics import grid_edge_warning
from vggfeat.features import cache as cache_mod
from vggfeat.features.pipeline import extract_to_cache
from vggfeat.models import WeightsError, load_backbone, save_backbone
from vggfeat.training import train
from vggfeat.training.config import make_config
from vggfeat.training.stall import training_stalled

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Three classes of 8 coloured-box images each (a folder dataset)."""
    return make_folder_dataset(tmp_path_factory.mktemp("first") / "photos", per_class=8)


@pytest.fixture(scope="module")
def stalled_run(tmp_path_factory):
    """A real training run that learns nothing (lr 0, std-0.01 init): loss stays ln(4)."""
    root = tmp_path_factory.mktemp("stall")
    images = make_image_folder(root / "data", n_train=4, n_val=3)
    run = root / "stalled"
    stderr = []
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stderr(buffer):
        train(data=images, out=run, arch="A", width=0.125, crop_size=64, init="normal",
              lr=0.0, epochs=3, batch_size=8, workers=0, device="cpu", quiet=True)
    stderr.append(buffer.getvalue())
    return run, stderr[0]


def _constant_backbone(path):
    """A real net whose fc6 ignores its input: fc7 is the same for every image."""
    model = make_tiny_backbone(seed=1)
    with torch.no_grad():
        model.classifier[0].weight.zero_()
        model.classifier[0].bias.fill_(0.5)
    save_backbone(model, path)
    return path


# -- a backbone that learnt nothing ---------------------------------------------------------


def test_trainer_warns_when_the_loss_stays_at_ln_classes(stalled_run):
    run, stderr = stalled_run
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert all(abs(r["train_loss"] - math.log(4)) < 0.05 for r in records)  # it did stall
    assert "learnt nothing in 3 epochs" in stderr and "--arch vgg11-bn" in stderr
    assert stderr.count("learnt nothing") == 1  # said once, even with quiet=True


def test_stall_check_spares_a_run_that_learns():
    learning = [{"train_loss": 1.38, "val_top1_err": 75.0}, {"train_loss": 1.2, "val_top1_err": 60},
                {"train_loss": 0.9, "val_top1_err": 40.0}]
    assert training_stalled(learning, 4) is None
    flat = [{"train_loss": 1.386, "val_top1_err": 75.0}] * 3
    assert training_stalled(flat, 4) and not training_stalled(flat[:2], 4)
    better_than_chance = [*flat[:2], {"train_loss": 1.386, "val_top1_err": 50.0}]
    assert training_stalled(better_than_chance, 4) is None


def test_scale_follows_the_crop_unless_given(tmp_path):
    assert make_config(out=tmp_path, crop_size=64)["scale"] == 73  # 64 * 256 / 224
    assert make_config(out=tmp_path)["scale"] == 256  # the paper's S for 224 crops
    assert make_config(out=tmp_path, crop_size=64, scale=96)["scale"] == 96


def test_constant_descriptors_are_flagged_by_extract_svm_eval_and_doctor(data, tmp_path):
    weights = _constant_backbone(tmp_path / "flat.pth")
    out = tmp_path / "flat.h5"
    result = invoke("extract", "--dataset", "folder", "--root", data.root, "--weights", weights,
                    "--scales", "64", "--out", out, "-q")
    assert result.exit_code == 0, result.output
    assert "barely vary" in result.stderr
    assert cache_mod.read_variation(out) < cache_mod.LOW_VARIATION
    evaluation = invoke("svm-eval", out, "--out", tmp_path / "res", "--C", "1", "-q")
    assert evaluation.exit_code == 0
    assert "barely vary" in evaluation.stderr and "chance level" in evaluation.stderr
    assert check_cache(out).status == "warn"


def test_an_informative_cache_draws_no_warning(data, tiny_weights, tmp_path):
    out = tmp_path / "good.h5"
    result = invoke("extract", "--dataset", "folder", "--root", data.root, "--weights",
                    tiny_weights, "--scales", "64", "--out", out, "-q")
    assert result.exit_code == 0 and "warning" not in result.stderr
    with h5py.File(out) as f:
        stored = float(f.attrs[cache_mod.VARIATION_ATTR])
        x = f["descriptors"][()].mean(axis=1)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)  # independent: every pair explicitly
    pairs = [1 - u[i] @ u[j] for i in range(len(u)) for j in range(len(u)) if i != j]
    assert stored == pytest.approx(np.mean(pairs), rel=1e-6) and stored > 1e-3
    evaluation = invoke("svm-eval", out, "--out", tmp_path / "res", "--C", "1", "-q")
    assert evaluation.exit_code == 0 and "warning" not in evaluation.stderr


def test_c_at_the_edge_of_its_grid_is_said(data, tiny_weights, tmp_path):
    out = tmp_path / "c.h5"
    invoke("extract", "--dataset", "folder", "--root", data.root, "--weights", tiny_weights,
           "--scales", "64", "--out", out, "-q")
    # C this small barely fits unit-norm descriptors: every value scores the same on the
    # held-out images and the tie goes to the smallest.
    result = invoke("svm-eval", out, "--out", tmp_path / "res", "--C", "1e-6,1e-5,1e-4", "-q")
    assert result.exit_code == 0
    summary = json.loads((tmp_path / "res" / "summary.json").read_text())
    chosen = [c for split in summary["chosen_C"].values() for c in split.values()]
    assert set(chosen) == {1e-6}
    assert "edge of its grid" in result.stderr
    assert f"smallest C (1e-06) for {len(chosen)} of {len(chosen)}" in result.stderr
    assert "--C 1e-08,1e-07,1e-06,1e-05,0.0001" in result.stderr


def test_grid_edge_warning_needs_an_interior():
    chosen = {"0": {"a": 1.0, "b": 10.0}}
    assert grid_edge_warning(chosen, [1.0, 10.0]) is None  # no interior value
    assert grid_edge_warning({"0": {"a": 1.0}}, [0.1, 1, 10]) is None
    assert "smallest C (0.1)" in grid_edge_warning({"0": {"a": 0.1}}, [0.1, 1, 10])
    high = grid_edge_warning({"0": {"a": 10.0, "b": 1.0}}, [0.1, 1, 10])
    assert "largest C (10) for 1 of 2 classifiers" in high and "--C 0.1,1,10,100,1000" in high


# -- a cache written by the Python API -------------------------------------------------------


def test_api_cache_with_labels_is_evaluated_by_svm_eval(data, tiny_weights, tmp_path):
    samples = open_dataset("folder", data.root).images()
    paths = [str(s.path) for s in samples]
    labels = [s.id.split("/")[0] for s in samples]
    out = tmp_path / "api.h5"
    extract_to_cache(paths, out, weights=tiny_weights, scales=(64,), device="cpu",
                     progress=False, labels=labels)
    assert check_cache(out).status == "ok"
    result = invoke("svm-eval", out, "--out", tmp_path / "res", "--C", "1", "-q")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "res" / "summary.json").read_text())
    assert summary["classes"] == ["cat", "dog", "fish"]
    assert "25% of each class as test" in summary["protocol"]
    # Given splits are the protocol's split.
    splits = ["test" if k % 4 == 0 else "train" for k in range(len(paths))]
    extract_to_cache(paths, out, weights=tiny_weights, scales=(64,), device="cpu",
                     progress=False, labels=labels, splits=splits)
    result = invoke("svm-eval", out, "--out", tmp_path / "res2", "--C", "1", "-q")
    assert result.exit_code == 0
    scores = (tmp_path / "res2" / "scores.csv").read_text().splitlines()[1:]
    assert len(scores) == splits.count("test")


def test_api_cache_without_labels_is_refused_clearly_by_svm_eval_and_doctor(data, tiny_weights,
                                                                            tmp_path):
    paths = [str(s.path) for s in open_dataset("folder", data.root).images()]
    out = tmp_path / "api.h5"
    extract_to_cache(paths, out, weights=tiny_weights, scales=(64,), device="cpu",
                     progress=False)
    result = invoke("svm-eval", out, "--out", tmp_path / "res")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "without labels" in result.stderr and "labels=" in result.stderr
    check = check_cache(out)
    assert check.status == FAIL and "without labels" in check.detail


def test_labels_are_checked(tiny_weights, tmp_path):
    with pytest.raises(ValueError, match="one per item"):
        extract_to_cache(["a.png"], tmp_path / "x.h5", weights=tiny_weights, labels=["a", "b"])
    with pytest.raises(ValueError, match="at least two"):
        extract_to_cache(["a.png", "b.png"], tmp_path / "x.h5", weights=tiny_weights,
                         labels=["a", "a"])


# -- training runs as weights, and their cache names ------------------------------------------


def test_run_folder_is_accepted_as_weights_and_names_the_cache(data, stalled_run, tmp_path,
                                                                monkeypatch):
    run, _ = stalled_run
    other = tmp_path / "other-run"
    other.mkdir()
    save_backbone(make_tiny_backbone(seed=3, num_classes=4), other / "backbone.pth")
    monkeypatch.chdir(tmp_path)
    for weights in (run, other / "backbone.pth"):  # a folder, and the file inside another run
        result = invoke("extract", "--dataset", "folder", "--root", data.root, "--weights",
                        weights, "--scales", "64", "-q")
        assert result.exit_code == 0, result.output
    assert (tmp_path / "folder-stalled-fc7.h5").is_file()
    assert (tmp_path / "folder-other-run-fc7.h5").is_file()
    assert default_out("folder", str(run / "backbone.pth"), "fc7").name == "folder-stalled-fc7.h5"
    assert load_backbone(run).meta["sha256"] == load_backbone(run / "backbone.pth").meta["sha256"]


def test_training_checkpoint_as_weights_names_the_right_file(stalled_run):
    run, _ = stalled_run
    with pytest.raises(WeightsError, match="training checkpoint") as error:
        load_backbone(run / "checkpoint.pth")
    assert str(run / "backbone.pth") in str(error.value)
    assert "download" not in str(error.value)


def test_top_level_help_example_uses_the_real_default_name():
    assert f"svm-eval {default_out('voc2007', 'vgg16', 'fc7').name}" in cli.help


# -- svm-eval's output folder ---------------------------------------------------------------


def test_svm_eval_refuses_other_options_in_an_existing_folder(data, tiny_weights, tmp_path):
    features = tmp_path / "f.h5"
    invoke("extract", "--dataset", "folder", "--root", data.root, "--weights", tiny_weights,
           "--scales", "64", "--out", features, "-q")
    res = tmp_path / "res"
    assert invoke("svm-eval", features, "--out", res, "--C", "1", "-q").exit_code == 0
    before = (res / "summary.json").read_text()
    refused = invoke("svm-eval", features, "--out", res, "--C", "10", "-q")
    assert refused.exit_code == 2 and "other options" in refused.stderr
    assert "C: folder has [1.0], this run [10.0]" in refused.stderr
    assert (res / "summary.json").read_text() == before  # nothing replaced
    assert invoke("svm-eval", features, "--out", res, "--C", "1").exit_code == 0  # same: fine
    replaced = invoke("svm-eval", features, "--out", res, "--C", "10", "--overwrite", "-q")
    assert replaced.exit_code == 0
    assert json.loads((res / "summary.json").read_text())["settings"]["C"] == [10.0]


# -- an interrupted extraction ----------------------------------------------------------------


def test_interrupted_extraction_is_described_the_same_way_everywhere(data, tiny_weights,
                                                                    tmp_path):
    """What a killed `extract` leaves: OUT.partial with some rows done (written through the
    cache's own writer, as the pipeline does) and no OUT."""
    from vggfeat.features.descriptor import DescriptorConfig

    model = load_backbone(tiny_weights)
    reader = open_dataset("folder", data.root)
    ids = [s.id for s in reader.images()]
    config = DescriptorConfig.from_model(model, (64,))
    attrs = cache_mod.cache_attributes(config, dataset="folder", root=reader.root)
    out = tmp_path / "feat.h5"
    partial = cache_mod.open_for_writing(out, attrs, {"/": ids}, model.feature_dim("fc7"))
    writer = cache_mod.RowWriter(partial)
    for k in range(5):
        writer.put(k, np.ones((1, model.feature_dim("fc7")), np.float32))
    writer.close()
    expected = f"5 of {len(ids)} images done"
    messages = [check_cache(out).detail, check_cache(partial).detail]
    for target in (out, partial):
        result = invoke("svm-eval", target, "--out", tmp_path / "res")
        assert result.exit_code == 2
        messages.append(result.stderr)
    for message in messages:
        assert "unfinished" in message and expected in message
        assert "rerun the same `vggfeat extract`" in message
        assert "failed table" not in message and "no such file" not in message


def test_train_val_folder_is_evaluated_on_its_val_split(tiny_weights, tmp_path):
    data = make_folder_dataset(tmp_path / "photos", per_class=4, split_dirs=True)
    (data.root / "test").rename(data.root / "val")  # the ImageNet layout, no test/
    out = tmp_path / "f.h5"
    assert invoke("extract", "--dataset", "folder", "--root", data.root, "--weights",
                  tiny_weights, "--scales", "64", "--out", out, "-q").exit_code == 0
    result = invoke("svm-eval", out, "--out", tmp_path / "res", "--C", "1", "-q")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "res" / "summary.json").read_text())
    assert summary["classes"] == ["cat", "dog", "fish"]
    assert "val as the test set" in summary["protocol"]
    scored = [line.split(",")[1] for line in
              (tmp_path / "res" / "scores.csv").read_text().splitlines()[1:]]
    assert sorted(scored) == sorted(i.replace("test/", "val/") for i in data.ids["test"])
