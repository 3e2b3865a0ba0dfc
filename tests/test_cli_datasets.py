"""`vggfeat datasets`: the command group and make-digits, through click's runner."""
import json

from click.testing import CliRunner

from vggfeat.cli import cli


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_help_of_every_command_has_an_example():
    for args in (["datasets"], ["datasets", "make-digits"]):
        result = run(*args, "--help")
        assert result.exit_code == 0
        assert "Example" in result.output


def test_make_digits_writes_and_reports(tmp_path):
    out = tmp_path / "digits"
    result = run("datasets", "make-digits", str(out), "--per-class", "5", "--size", "24",
                 "--transfer-digits", "7-9", "--backbone-digits", "0,1")
    assert result.exit_code == 0, result.output
    assert f"{out / 'transfer'}: 15 images (7: 5, 8: 5, 9: 5)" in result.output
    assert f"{out / 'backbone' / 'train'}: 8 images (0: 4, 1: 4)" in result.output
    manifest = json.loads((out / "digits.json").read_text())
    assert manifest["options"]["size"] == 24
    assert manifest["options"]["transfer_digits"] == [7, 8, 9]
    assert len(list((out / "transfer").rglob("*.png"))) == 15


def test_existing_output_is_a_clear_error_then_overwrite_works(tmp_path):
    out = tmp_path / "digits"
    assert run("datasets", "make-digits", str(out), "--per-class", "2", "-q").exit_code == 0
    again = run("datasets", "make-digits", str(out), "--per-class", "2")
    assert again.exit_code == 2
    assert "--overwrite" in again.output and str(out) in again.output
    done = run("datasets", "make-digits", str(out), "--per-class", "3", "--overwrite", "-q")
    assert done.exit_code == 0 and done.output == ""
    assert len(list((out / "transfer" / "5").iterdir())) == 3


def test_bad_digits_are_a_usage_error_naming_the_fix(tmp_path):
    result = run("datasets", "make-digits", str(tmp_path / "d"), "--backbone-digits", "0-5")
    assert result.exit_code == 2
    assert "overlap" in result.output
    result = run("datasets", "make-digits", str(tmp_path / "d"), "--split", "thirds")
    assert result.exit_code == 2
