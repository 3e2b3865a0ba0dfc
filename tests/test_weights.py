"""Weight files: round trips, torch hub lookup, export, and every kind of bad file."""
import hashlib
import pathlib
import pickle

import pytest
import torch
import torchvision
from conftest import make_tiny_backbone

from vggfeat.models import (
    TORCHVISION_IMAGENET,
    WeightsError,
    export_torchvision,
    load_backbone,
    save_backbone,
)
from vggfeat.models.weights import check_release_hash


@pytest.mark.parametrize("arch", ["vgg11", "vgg11-lrn", "vgg13", "vgg16-1x1", "vgg16", "vgg19",
                                  "vgg11-bn", "vgg16-bn"])
def test_save_and_load_round_trip_narrow_nets(arch, tmp_path):
    model = make_tiny_backbone(seed=3, arch=arch, num_classes=5)
    model.meta["classes"] = list("abcde")
    path = save_backbone(model, tmp_path / "net.pth")
    loaded = load_backbone(path)
    x = torch.rand(2, 3, 96, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.dense(x, "fc7"), model.dense(x, "fc7"), rtol=0, atol=0)
    assert loaded.meta["arch"] == arch and loaded.meta["width"] == 0.125
    assert loaded.meta["crop_size"] == 64 and loaded.meta["classes"] == list("abcde")
    assert loaded.meta["source"] == str(path) and len(loaded.meta["sha256"]) == 64
    assert not loaded.training


def test_bare_state_dict_gets_torchvision_preprocessing(tmp_path):
    path = tmp_path / "sd.pth"
    torch.save(make_tiny_backbone().state_dict(), path)
    model = load_backbone(path)
    assert model.meta["preprocessing"] == TORCHVISION_IMAGENET
    assert model.meta["arch"] == "vgg11" and model.meta["num_classes"] == 10


def test_torchvision_name_is_found_in_the_hub_cache_and_its_hash_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError, match=r"vgg11-8a719046\.pth not found.*download\.pytorch"):
        load_backbone("vgg11")
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    # A (narrow) VGG-11 state dict under the release's name, but not the release.
    fake = checkpoints / "vgg11-8a719046.pth"
    torch.save(make_tiny_backbone().state_dict(), fake)
    digest = hashlib.sha256(fake.read_bytes()).hexdigest()
    with pytest.raises(WeightsError, match=rf"sha256 starts with 8a719046.*{digest[:8]}"):
        load_backbone("A")
    with pytest.raises(WeightsError, match="8a719046"):  # the same file given by its path
        load_backbone(fake)
    renamed = tmp_path / "my-vgg11.pth"  # renamed, it is what it holds
    fake.rename(renamed)
    model = load_backbone(renamed)
    assert model.meta["arch"] == "vgg11" and model.meta["sha256"] == digest
    assert model.meta["preprocessing"]["mean"] == [0.485, 0.456, 0.406]


def test_release_hash_check_accepts_a_matching_prefix(tmp_path):
    path = tmp_path / "x.pth"
    path.write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    named = tmp_path / f"vgg16-{digest[:8]}.pth"
    check_release_hash(named, digest)  # no error
    with pytest.raises(WeightsError, match=digest[:8]):
        check_release_hash(tmp_path / "vgg16-397923af.pth", digest)


@pytest.mark.parametrize("width", [0.1, 0.2, 0.3, 0.05])
def test_widths_that_round_unevenly_round_trip(tmp_path, width):
    # 64 * 0.1 = 6.4 -> 6 channels but 4096 * 0.1 -> 410: width is read from meta.
    model = make_tiny_backbone(width=width)
    save_backbone(model, tmp_path / "w.pth")
    loaded = load_backbone(tmp_path / "w.pth")
    assert loaded.meta["width"] == width
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


@pytest.mark.parametrize("field, value, message", [
    ("mean", [float("nan"), 0.5, 0.5], "finite"),
    ("std", [0.2, 0.0, 0.2], "positive"),
    ("std", [0.2, -1.0, 0.2], "positive"),
    ("std", [0.2, float("inf"), 0.2], "finite"),
    ("value_scale", 0.0, "positive"),
    ("mean", [0.5, 0.5], "3 values"),
])
def test_unusable_preprocessing_is_refused(tmp_path, field, value, message):
    model = make_tiny_backbone()
    model.meta["preprocessing"] = {**model.meta["preprocessing"], field: value}
    save_backbone(model, tmp_path / "pre.pth")
    with pytest.raises(WeightsError, match=rf"pre\.pth: its preprocessing.*{message}"):
        load_backbone(tmp_path / "pre.pth")


def test_export_to_torchvision_round_trip(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.vgg13().eval()
    torch.save(reference.state_dict(), tmp_path / "a.pth")
    model = load_backbone(tmp_path / "a.pth")
    save_backbone(model, tmp_path / "own.pth")
    export_torchvision(load_backbone(tmp_path / "own.pth"), tmp_path / "back.pth")
    again = torchvision.models.vgg13()
    again.load_state_dict(torch.load(tmp_path / "back.pth", weights_only=True))
    for key, value in reference.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    with pytest.raises(ValueError, match="torchvision has no model for vgg11"):
        export_torchvision(make_tiny_backbone(), tmp_path / "tiny.pth")


class _RunsCode:
    """Unpickling this touches a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_pickle_that_runs_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"features.0.weight": torch.zeros(1), "payload": _RunsCode(marker)}, path)
    with pytest.raises(WeightsError, match=r"refused to load .*evil\.pth: the file contains "
                                           r"code.*vggfeat will not run") as error:
        load_backbone(path)
    assert not marker.exists()
    assert "weights_only" not in str(error.value) and "damaged" not in str(error.value)


def test_bare_pickle_that_runs_code_is_called_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "raw.pkl"
    path.write_bytes(pickle.dumps(_RunsCode(marker), protocol=4))
    with pytest.raises(WeightsError, match=r"raw\.pkl: the file contains code") as error:
        load_backbone(path)
    assert not marker.exists() and "weights_only" not in str(error.value)


def test_truncated_file(tmp_path):
    path = tmp_path / "cut.pth"
    save_backbone(make_tiny_backbone(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WeightsError, match=r"cut\.pth is damaged.*incomplete"):
        load_backbone(path)  # its recorded sha256 says so first
    path.with_name("cut.pth.sha256").unlink()  # a file without one: torch's reading says it
    with pytest.raises(WeightsError, match=r"cannot read .*cut\.pth.*truncated"):
        load_backbone(path)


def test_empty_file(tmp_path):
    (tmp_path / "empty.pth").touch()
    with pytest.raises(WeightsError, match=r"empty\.pth is empty"):
        load_backbone(tmp_path / "empty.pth")


def test_foreign_files(tmp_path):
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    with pytest.raises(WeightsError, match=r"cannot read .*notes\.pth"):
        load_backbone(tmp_path / "notes.pth")
    torch.save(torchvision.models.alexnet().state_dict(), tmp_path / "alexnet.pth")
    with pytest.raises(WeightsError, match=r"alexnet\.pth has no 'features\.0\.weight'|"
                                           r"alexnet\.pth.*not a VGG|alexnet\.pth: no VGG"):
        load_backbone(tmp_path / "alexnet.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(WeightsError, match=r"list\.pth is not a VGG state dict .*found a list"):
        load_backbone(tmp_path / "list.pth")


def test_wrong_architecture_lists_the_keys(tmp_path):
    path = tmp_path / "vgg19.pth"
    torch.save(make_tiny_backbone(arch="vgg19").state_dict(), path)
    with pytest.raises(WeightsError) as error:
        load_backbone(path, arch="vgg16")
    message = str(error.value)
    assert "vgg19.pth does not fit vgg16" in message
    assert "unexpected: features.25.bias" in message or "unexpected:" in message
    save_backbone(make_tiny_backbone(arch="vgg19"), tmp_path / "own19.pth")
    with pytest.raises(WeightsError, match="holds vgg19 weights, not vgg16"):
        load_backbone(tmp_path / "own19.pth", arch="D")


def test_wrong_shape_is_named(tmp_path):
    state = make_tiny_backbone().state_dict()
    state["features.3.weight"] = state["features.3.weight"][:, :4]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match=r"wrong shape: features\.3\.weight \(16, 4, 3, 3\) "
                                           r"\(expected \(16, 8, 3, 3\)\)"):
        load_backbone(tmp_path / "bad.pth", arch="vgg11")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights(tmp_path, bad):
    model = make_tiny_backbone()
    with torch.no_grad():
        model.classifier[3].weight[0, 0] = bad
    save_backbone(model, tmp_path / "diverged.pth")
    with pytest.raises(WeightsError, match=r"diverged\.pth has NaN or Inf values in "
                                           r"\['classifier\.3\.weight'\]"):
        load_backbone(tmp_path / "diverged.pth")


def test_missing_file_and_unknown_name():
    with pytest.raises(WeightsError, match="'nope.pth': no such file"):
        load_backbone("nope.pth")
