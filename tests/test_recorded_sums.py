"""The sha256 vggfeat records beside the checkpoints and backbone files it writes
(`<file>.sha256`, as sha256sum writes it) and checks on load: a damaged file is refused
naming the file and the fix, never loaded as garbage; files without a sum load as before."""
import hashlib
import shutil
import subprocess

import pytest
import torch
from conftest import make_tiny_backbone
from helpers_datasets import make_folder_dataset
from helpers_training import run_cli

from vggfeat.models import WeightsError, load_backbone, save_backbone
from vggfeat.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from vggfeat.utils.atomic import ForeignFileError


def flip(path, offset: int) -> None:
    """XOR 8 bytes at `offset` (negative: from the end) in place: a failing disk's damage."""
    data = bytearray(path.read_bytes())
    offset %= len(data)
    for k in range(offset, offset + 8):
        data[k] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def backbone(tmp_path):
    return save_backbone(make_tiny_backbone(), tmp_path / "backbone.pth")


def test_saved_backbone_records_its_sha256_as_sha256sum_does(backbone):
    record = backbone.with_name("backbone.pth.sha256")
    digest = hashlib.sha256(backbone.read_bytes()).hexdigest()
    assert record.read_text() == f"{digest}  backbone.pth\n"
    check = subprocess.run(["sha256sum", "-c", record.name], cwd=backbone.parent,
                           capture_output=True, text=True)
    assert check.returncode == 0 and "backbone.pth: OK" in check.stdout
    assert load_backbone(backbone).meta["sha256"] == digest


@pytest.mark.parametrize("where", ["tensor data", "zip directory"])
def test_damaged_backbone_is_refused_naming_file_and_fix(backbone, where):
    # The middle of the file is inside a tensor: memory-mapped, it loaded as other weights
    # without a word. The end is the zip directory: torch failed with its own error.
    flip(backbone, backbone.stat().st_size // 2 if where == "tensor data" else -40)
    with pytest.raises(WeightsError) as error:
        load_backbone(backbone)
    message = str(error.value)
    assert f"{backbone} is damaged" in message and "backbone.pth.sha256" in message
    assert "write it again" in message and "\n" not in message


def test_damaged_backbone_is_one_line_from_the_cli(backbone, tmp_path):
    flip(backbone, backbone.stat().st_size // 2)
    root = make_folder_dataset(tmp_path / "photos", per_class=2).root
    result = run_cli(["extract", "--dataset", "folder", "--root", root, "--weights",
                      backbone, "--out", tmp_path / "x.h5", "--quiet"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{backbone} is damaged" in result.output


def test_files_without_a_recorded_sum_load_as_before(backbone, tmp_path):
    backbone.with_name("backbone.pth.sha256").unlink()  # as older vggfeat wrote them
    assert load_backbone(backbone).meta["arch"] == "vgg11"
    plain = tmp_path / "plain.pth"  # a torchvision-style state dict: never had one
    torch.save(make_tiny_backbone().state_dict(), plain)
    assert load_backbone(plain, arch="vgg11").meta["sha256"] == hashlib.sha256(
        plain.read_bytes()).hexdigest()


def test_a_moved_pair_still_checks_and_an_unreadable_record_is_named(backbone, tmp_path):
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("backbone.pth", "backbone.pth.sha256"):
        shutil.move(tmp_path / name, moved / name)
    assert load_backbone(moved / "backbone.pth").meta["arch"] == "vgg11"
    (moved / "backbone.pth.sha256").write_text("garbage\n")
    with pytest.raises(WeightsError, match=r"backbone.pth.sha256 is not a sha256 line"):
        load_backbone(moved / "backbone.pth")


def test_a_users_own_file_at_the_record_name_is_never_replaced(tmp_path):
    users = tmp_path / "net.pth.sha256"
    users.write_text("my notes about net.pth\n")
    with pytest.raises(ForeignFileError, match="net.pth.sha256"):
        save_backbone(make_tiny_backbone(), tmp_path / "net.pth")
    assert users.read_text() == "my notes about net.pth\n"
    assert not (tmp_path / "net.pth").exists()


def test_resaving_replaces_the_record_with_the_new_files(backbone):
    save_backbone(make_tiny_backbone(seed=3), backbone)
    digest = hashlib.sha256(backbone.read_bytes()).hexdigest()
    assert backbone.with_name("backbone.pth.sha256").read_text().startswith(digest)
    assert load_backbone(backbone).meta["sha256"] == digest


def _checkpoint(tmp_path):
    state = {"model": {"w": torch.arange(50_000.0)}, "epoch": 2, "config": {"arch": "vgg11"}}
    return save_checkpoint(state, tmp_path / "checkpoint.pth")


@pytest.mark.parametrize("where", ["tensor data", "zip directory"])
def test_damaged_training_checkpoint_is_refused(tmp_path, where):
    path = _checkpoint(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth",
                                                          "checkpoint.pth.sha256"]
    assert load_checkpoint(path)["epoch"] == 2
    flip(path, path.stat().st_size // 2 if where == "tensor data" else -40)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert f"{path} is damaged" in message and "checkpoint.pth.sha256" in message
    assert "Resume from a good copy" in message and "\n" not in message


def test_training_checkpoint_without_a_record_loads_as_before(tmp_path):
    path = _checkpoint(tmp_path)
    path.with_name("checkpoint.pth.sha256").unlink()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.arange(50_000.0))
