"""The command group, `--version`, `info` and `--help` of every command."""
import pytest
from click.testing import CliRunner

from vggfeat import __version__
from vggfeat.cli import COMMANDS, cli


def test_version_and_help():
    runner = CliRunner()
    assert runner.invoke(cli, ["--version"]).output.strip() == f"vggfeat, version {__version__}"
    result = runner.invoke(cli, ["-h"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_has_help_with_an_example(name):
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output


def test_info_lists_versions_devices_archs_and_weights_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    result = CliRunner().invoke(cli, ["info"])
    assert result.exit_code == 0, result.output
    for expected in ("torch:", "torchvision:", "devices: cpu", "vgg16-1x1 (C)", "vgg11-lrn (A-LRN)",
                     str(tmp_path / "hub" / "checkpoints")):
        assert expected in result.output


def test_info_lists_the_families_and_the_release_files_present(tmp_path, monkeypatch):
    from vggfeat.models import torchvision_load

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "resnet50-11ad3fa6.pth").write_bytes(b"")  # named like the release: listed
    (folder / "notes.pth").write_bytes(b"")  # not a release: not listed
    torchvision_load.release_files.cache_clear()
    result = CliRunner().invoke(cli, ["info"])
    assert result.exit_code == 0, result.output
    for expected in ("ResNet (resnet*, default layer layer4)", "ConvNeXt", "Inception v3",
                     "AlexNet (alexnet*, default layer fc7)",
                     "releases_found: resnet50-11ad3fa6.pth"):
        assert expected in result.output
    assert "notes.pth" not in result.output
