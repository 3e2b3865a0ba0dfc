"""`vggfeat doctor`: each problem is reported with its fix, and a failure exits non-zero."""
import shutil

import pytest
import torch
from click.testing import CliRunner
from helpers_datasets import make_caltech

from vggfeat.cli import cli
from vggfeat.data.digits import make_digits
from vggfeat.doctor import FAIL, OK, check_cache, check_dataset, check_weights, run_checks
from vggfeat.features.pipeline import extract_to_cache
from vggfeat.models import load_backbone, save_backbone


def doctor(*args):
    return CliRunner().invoke(cli, ["doctor", *map(str, args)], catch_exceptions=False)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A real folder dataset: 2 digits x 2 images of 64 pixels."""
    root = tmp_path_factory.mktemp("doctor") / "digits"
    return make_digits(root, split="none", digits="3,8", per_class=2, size=64).root


@pytest.fixture(scope="module")
def cache(digits, tiny_weights, tmp_path_factory):
    """A feature cache of `digits` made by the real pipeline with the tiny weights."""
    from vggfeat.data.readers import open_dataset

    path = tmp_path_factory.mktemp("cache") / "digits-tiny.h5"
    extract_to_cache(open_dataset("folder", digits).images(), path, weights=tiny_weights,
                     scales=(64,), dataset="folder", root=digits, progress=False,
                     device="cpu", log=lambda message: None)
    return path


def test_help_has_an_example():
    result = doctor("--help")
    assert result.exit_code == 0 and "Example" in result.output


def test_plain_run_reports_versions_and_device_and_passes():
    result = doctor()
    assert result.exit_code == 0, result.output
    assert f"torch: {torch.__version__}" in result.output
    assert "torchvision:" in result.output and "device: " in result.output


def test_missing_weights_file_fails_with_the_fix(tmp_path):
    missing = tmp_path / "nowhere" / "vgg16.pth"
    result = doctor("--weights", missing)
    assert result.exit_code == 1
    assert "[FAIL] weights:" in result.output and str(missing) in result.output
    assert "fix: check the path" in result.output
    assert "1 check(s) failed: weights" in result.output


def test_torchvision_name_not_downloaded_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    check, model = check_weights("vgg13")
    assert check.status == FAIL and model is None
    assert "https://download.pytorch.org/models/vgg13" in check.fix
    assert str(tmp_path / "torch-home") in check.fix


def test_damaged_weights_file_fails(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    check, _ = check_weights(str(bad))
    assert check.status == FAIL and str(bad) in check.detail
    assert "cannot be used" in check.fix


def test_good_weights_load_and_describe_themselves(tiny_weights):
    check, model = check_weights(str(tiny_weights))
    assert check.status == OK and model is not None
    assert "vgg11" in check.detail and "width 0.125" in check.detail


def test_broken_dataset_layout_fails_with_expected_path_and_fix(tmp_path):
    root = tmp_path / "caltech"
    make_caltech(root, classes=("ant", "bee"), per_class=2)
    assert doctor("--dataset", "caltech101", "--root", root).exit_code == 0
    shutil.rmtree(root / "101_ObjectCategories")
    (root / "images").mkdir()
    result = doctor("--dataset", "caltech101", "--root", root)
    assert result.exit_code == 1
    assert "[FAIL] dataset:" in result.output
    assert str(root / "101_ObjectCategories") in result.output  # the path that was expected
    assert "images/" in result.output  # what was found there
    assert "fix: lay the caltech101 files out as the message says" in result.output


def test_empty_class_folder_is_a_layout_failure(digits, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(digits, root)
    (root / "5").mkdir()
    check = check_dataset("folder", root)
    assert check.status == FAIL and str(root / "5") in check.detail


def test_good_dataset_counts_and_unreadable_images_warn(digits, tmp_path):
    check = check_dataset("folder", digits)
    assert check.status == OK and "4 images, 2 classes" in check.detail
    root = tmp_path / "copy"
    shutil.copytree(digits, root)
    broken = sorted((root / "3").iterdir())[0]
    broken.write_bytes(b"")
    check = check_dataset("folder", root, sample=4)
    assert check.status == "warn" and str(broken) in check.detail and check.fix


def test_dataset_needs_both_options():
    checks = run_checks(dataset="folder")
    assert checks[-1].status == FAIL and "--root" in checks[-1].detail


def test_cache_matches_its_own_weights(cache, tiny_weights):
    result = doctor("--weights", tiny_weights, "--cache", cache)
    assert result.exit_code == 0, result.output
    assert "matches the weights" in result.output
    assert "(4/4 rows)" in result.output


def test_cache_made_with_other_preprocessing_fails_with_the_fix(cache, tiny_weights, tmp_path):
    model = load_backbone(tiny_weights)
    model.meta["preprocessing"] = {"mean": [103.939, 116.779, 123.68], "std": [1.0, 1.0, 1.0],
                                   "channel_order": "BGR", "value_scale": 255.0}
    caffe_like = save_backbone(model, tmp_path / "caffe-like.pth")
    result = doctor("--weights", caffe_like, "--cache", cache)
    assert result.exit_code == 1
    assert "[FAIL] cache:" in result.output
    assert '"channel_order": "BGR"' in result.output and "preprocessing" in result.output
    assert f"vggfeat extract --weights {caffe_like}" in result.output


def test_cache_made_with_other_weights_fails(cache, tmp_path):
    from conftest import make_tiny_backbone

    other = save_backbone(make_tiny_backbone(seed=1), tmp_path / "other.pth")
    check = check_cache(cache, load_backbone(other))
    assert check.status == FAIL and "other weights" in check.detail


def test_unfinished_or_foreign_cache_fails(tmp_path):
    out = tmp_path / "feat.h5"
    (tmp_path / "feat.h5.partial").write_bytes(b"")
    check = check_cache(out)
    assert check.status == FAIL and "rerun the same `vggfeat extract`" in check.fix
    out.write_text("not hdf5")
    assert check_cache(out).status == FAIL


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA GPUs")
def test_asking_for_a_missing_gpu_fails():
    result = doctor("--device", "cuda")
    assert result.exit_code == 1 and "[FAIL] device:" in result.output


def test_train_val_folder_is_described_as_splits_not_two_classes(tmp_path):
    from helpers_datasets import make_folder_dataset

    data = make_folder_dataset(tmp_path / "photos", per_class=2, split_dirs=True)
    (data.root / "test").rename(data.root / "val")
    check = check_dataset("folder", data.root)
    assert check.status == OK
    assert "3 classes, splits: train, val" in check.detail


def test_mixed_folder_layout_fails_showing_the_accepted_layouts(tmp_path):
    from helpers_datasets import make_folder_dataset

    data = make_folder_dataset(tmp_path / "photos", per_class=2, split_dirs=True)
    shutil.copytree(data.root / "train" / "cat", data.root / "bird")
    check = check_dataset("folder", data.root)
    assert check.status == FAIL and "accepts two layouts" in check.detail


def test_partial_cache_given_directly_is_not_ok(cache, tmp_path):
    partial = tmp_path / "digits-tiny.h5.partial"
    shutil.copy(cache, partial)  # what an interrupted run leaves, rows all done or not
    check = check_cache(partial)
    assert check.status == FAIL and "unfinished" in check.detail
    assert "rerun the same `vggfeat extract`" in check.fix
