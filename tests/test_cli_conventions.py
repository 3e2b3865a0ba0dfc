"""Conventions every command keeps, checked on every command the `vggfeat` group lists (so
a command added later is covered without touching this file):

- every option has help text and every command an example;
- a single-value option given twice is refused (not last-wins); multiple options accumulate;
- one name per concept: --root (alias --data), --device auto, -q/--quiet, --workers that
  fits the machine;
- results and file paths on stdout, progress and warnings on stderr.
"""
import ast
import io
import json
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from helpers_datasets import make_folder_dataset
from helpers_training import make_image_folder

import vggfeat
from vggfeat.cli import cli
from vggfeat.cli import options as cli_options
from vggfeat.utils.progress import LOG_INTERVAL, progress_bar
from vggfeat.utils.threads import torch_threads

# Commands that run long enough to want a progress bar (and so -q/--quiet).
LONG = {"extract", "svm-eval", "train-backbone", "eval-backbone", "eval-localisation",
        "datasets make-digits"}

# Files of the repository that `pip install vggfeat` does not install.
NOT_INSTALLED = re.compile(r"README|SPEC|CONTRIBUTING|STYLE\.md|NOTES\.md|benchmarks/|datasets/")


def walk(group=cli, prefix=()):
    """(name path, command) of every command and subcommand, found from the group."""
    ctx = click.Context(group, info_name="vggfeat")
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        path = (*prefix, name)
        yield path, command
        if isinstance(command, click.Group):
            yield from walk(command, path)


COMMANDS = list(walk())
IDS = [" ".join(path) for path, _ in COMMANDS]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _options(command):
    return [p for p in command.params if isinstance(p, click.Option) and p.name != "help"]


def test_the_walk_finds_the_commands():
    assert {"extract", "svm-eval", "features", "features info", "compare",
            "datasets make-digits"} <= set(IDS)


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=IDS)
def test_help_text_for_every_option_and_an_example(path, command):
    result = run(*path, "--help")
    assert result.exit_code == 0, result.output
    missing = [p.opts[0] for p in _options(command) if not (p.help or "").strip()]
    assert not missing, f"vggfeat {' '.join(path)}: options without help: {missing}"
    assert "Example" in result.output, f"vggfeat {' '.join(path)} --help has no example"
    assert not NOT_INSTALLED.search(result.output), "help points at a file not installed"


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=IDS)
def test_a_single_value_option_given_twice_is_refused(path, command):
    for option in _options(command):
        if option.multiple or option.count or option.is_eager:
            continue
        flag = option.opts[0]
        values = [] if option.is_flag else ["1"] * option.nargs
        twice = [flag, *values, flag, *values]
        result = run(*path, *twice)
        assert result.exit_code == 2, (path, flag, result.output)
        assert "given more than once" in result.stderr, (path, flag, result.output)


def test_multiple_options_accumulate():
    result = run("extract", "--option", "a=1", "--option", "b=2", "--help")
    assert result.exit_code == 0 and "given more than once" not in result.output


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=IDS)
def test_one_name_per_concept(path, command):
    options = {o.opts[0] if o.opts[0] != "--data" else "--data": o for o in _options(command)}
    for option in _options(command):
        if "--data" in option.opts:  # the dataset's location is --root everywhere
            assert "--root" in option.opts, f"{path}: --data without --root"
        if "--quiet" in option.opts:
            assert "-q" in option.opts, f"{path}: --quiet without -q"
        if option.name == "device":
            assert option.default == "auto", f"{path}: --device defaults to {option.default}"
        if option.name == "workers":  # decided when the command runs, from the machine
            assert option.default is None or option.default <= cli_options.cpu_count()
    if " ".join(path) in LONG:
        assert any("--quiet" in o.opts for o in options.values()), f"{path}: no -q/--quiet"


def test_device_auto_takes_the_gpu_when_there_is_one(monkeypatch):
    import torch

    from vggfeat.evaluation.run import device_name as _device
    from vggfeat.features.engine import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _device("auto") == "cuda" and resolve_device("auto").type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _device("auto") == "cpu" and _device("cuda:1") == "cuda:1"


def test_workers_default_never_exceeds_the_cores(monkeypatch):
    for cores in (1, 2, 4, 64):
        monkeypatch.setattr(cli_options, "cpu_count", lambda c=cores: c)
        for cap in (4, 8):
            assert 0 <= cli_options.default_workers(cap) <= min(cap, cores - 1)
    monkeypatch.setattr(cli_options, "cpu_count", lambda: 64)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")  # torchrun: 16 processes share 64 cores
    assert cli_options.default_workers(8) == 3


def test_progress_is_throttled_when_stderr_is_not_a_terminal(monkeypatch):
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    to_log = progress_bar(total=3, file=io.StringIO())
    to_terminal = progress_bar(total=3, file=Terminal())
    assert to_log.mininterval == LOG_INTERVAL >= 5 and to_terminal.mininterval < 1
    log = io.StringIO()
    for _ in progress_bar(range(1000), file=log, desc="work"):
        pass
    assert log.getvalue().count("work") <= 3  # first, (maybe one), last: not 1000 lines


def test_messages_never_point_at_files_that_are_not_installed():
    """Every string in the package that is not a docstring (messages, help texts)."""
    found = []
    for path in Path(vggfeat.__file__).parent.rglob("*.py"):
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                           ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and id(node) not in docstrings and NOT_INSTALLED.search(node.value):
                found.append(f"{path.name}:{node.lineno}: {node.value[:60]!r}")
    assert not found, found


def test_every_progress_bar_goes_through_the_one_helper():
    package = Path(vggfeat.__file__).parent
    direct = [str(p.relative_to(package)) for p in package.rglob("*.py")
              if p.name != "progress.py" and re.search(r"^\s*(from|import) tqdm", p.read_text(),
                                                       flags=re.M)]
    assert not direct, f"use vggfeat.utils.progress.progress_bar instead of tqdm in {direct}"


# -- stdout / stderr ---------------------------------------------------------------------

PROGRESS_MARKS = ("\r", "it/s", "img/s", "%|")


def assert_separated(result, *on_stdout: str):
    """`on_stdout` (results, paths) on stdout; stdout holds no progress bar."""
    assert result.exit_code == 0, result.output
    for text in on_stdout:
        assert str(text) in result.stdout, (text, result.stdout)
    for mark in PROGRESS_MARKS:
        assert mark not in result.stdout, (mark, result.stdout)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_weights):
    """A tiny folder dataset, its cache and an svm-eval result, made through the CLI
    (without -q, so the progress bars are drawn)."""
    tmp = tmp_path_factory.mktemp("conventions")
    make_folder_dataset(tmp / "data", classes=("a", "b", "c"), per_class=4, size=(32, 32))
    runs = {}
    with torch_threads(1):
        runs["extract"] = run("extract", "--dataset", "folder", "--root", tmp / "data",
                              "--weights", tiny_weights, "--scales", "64", "--device", "cpu",
                              "--out", tmp / "f.h5")
        runs["svm-eval"] = run("svm-eval", tmp / "f.h5", "--C", "1", "--splits", "2",
                               "--out", tmp / "svm")
    return tmp, runs


def test_extract_and_svm_eval_separate_results_from_progress(workspace):
    tmp, runs = workspace
    extract = runs["extract"]
    assert_separated(extract, "12 images", tmp / "f.h5")
    assert "extract images" in extract.stderr  # the bar went to stderr
    svm = runs["svm-eval"]
    assert_separated(svm, "mean class recall", f"files to {tmp / 'svm'}")
    assert "SVMs" in svm.stderr


def test_features_and_compare_print_results_on_stdout(workspace):
    tmp, _ = workspace
    assert_separated(run("features", "info", tmp / "f.h5"), "fc7", "12 rows")
    out = tmp / "f.npy"
    assert_separated(run("features", "export", tmp / "f.h5", "--to", "npy", "--out", out), out)
    compared = run("compare", tmp / "svm", tmp / "svm", "--out", tmp / "cmp")
    assert_separated(compared, "mean_class_recall", tmp / "cmp" / "compare.png")


def test_doctor_and_info_print_results_on_stdout(workspace, tiny_weights):
    tmp, _ = workspace
    doctor = run("doctor", "--weights", tiny_weights, "--dataset", "folder",
                 "--root", tmp / "data", "--device", "cpu")
    assert_separated(doctor, "all checks passed")
    assert_separated(run("info"), "torch")


def test_training_commands_print_the_result_on_stdout(workspace, tiny_weights, tmp_path):
    tmp, _ = workspace
    tiny = ["--arch", "A", "--width", "0.125", "--crop-size", "64", "--scale", "64",
            "--init", "xavier", "--workers", "0", "--device", "cpu"]
    images = make_image_folder(tmp_path / "images", n_train=2, n_val=1)
    with torch_threads(1):
        trained = run("train-backbone", "--root", images, "--batch-size", "4", "--epochs", "1",
                      "--out", tmp_path / "run", *tiny)
        assert_separated(trained, f"backbone: {tmp_path / 'run' / 'backbone.pth'}")
        assert "epoch 1" in trained.stderr  # the per-epoch line is progress: stderr
        evaluated = run("eval-backbone", "--root", images, "--weights", tmp_path / "run",
                        "--scales", "64", "--method", "dense", "--workers", "0",
                        "--device", "cpu")
    assert_separated(evaluated, "top-1")
    refused = run("export-torchvision", tiny_weights, tmp_path / "tv.pth")  # a narrow net
    assert refused.exit_code == 2 and refused.stdout == "" and "torchvision" in refused.stderr


def test_make_digits_prints_what_it_wrote_on_stdout(tmp_path):
    made = run("datasets", "make-digits", tmp_path / "d", "--split", "none", "--per-class",
               "1", "--size", "8")
    assert_separated(made, tmp_path / "d")
    assert json.loads((tmp_path / "d" / "digits.json").read_text())
