"""`python -m vggfeat.demo`: the transfer story at reduced size, through the real CLI steps.

Two runs: `--quick` (a smoke run of every step: commands, files, resuming) and the full
demo, marked slow (every image, 20 epochs, 3 scales; minutes on 2 CPU cores): the claim
the demo makes, trained backbone > untrained backbone > raw pixels by more than the
split-to-split spread.
"""
import csv
import json
import subprocess
import sys

import pytest

from vggfeat.cli import cli
from vggfeat.demo import (
    FULL,
    QUICK,
    RESULTS_CSV,
    RESULTS_MD,
    RESULTS_PNG,
    DemoError,
    check_state,
    command_line,
    format_markdown,
    run_demo,
    table_rows,
    train_args,
)


def demo_run(out, cfg):
    lines = []
    rows = run_demo(out, cfg, quiet=True, echo=lines.append)
    return out, lines, rows


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """One --quick run: (output folder, printed lines, table rows)."""
    return demo_run(tmp_path_factory.mktemp("demo") / "demo_out", QUICK)


@pytest.mark.slow
def test_trained_beats_untrained_beats_pixels_by_more_than_the_spread(tmp_path):
    _, _, rows = demo_run(tmp_path / "demo_out", FULL)
    recall = {r["method"]: (r["mean_class_recall"], r["std"]) for r in rows}
    assert set(recall) == {"trained", "random", "pixels"}
    for better, worse in (("trained", "random"), ("random", "pixels")):
        (high, high_std), (low, low_std) = recall[better], recall[worse]
        assert high - low > max(high_std, low_std), rows


def test_every_step_is_a_printed_cli_command(quick_demo):
    out, lines, _ = quick_demo
    commands = [line for line in lines if line.startswith("$ vggfeat ")]
    kinds = [c.split()[2] for c in commands]
    assert kinds == ["datasets", "train-backbone", "train-backbone", "extract", "svm-eval",
                     "extract", "svm-eval"]
    assert "--clutter" in commands[0]
    assert "--epochs 0" in commands[2] and "--init xavier" in commands[1]
    assert "--preprocessing torchvision" in commands[1]  # pinned, whatever the default
    assert f"--root {out / 'digits' / 'transfer'}" in commands[3]  # the unseen digits
    recall = {r["method"]: r["mean_class_recall"] for r in quick_demo[2]}
    assert set(recall) == {"trained", "random", "pixels"}
    # A smoke run: too small to learn much (every row is near chance, 20%), so only that the
    # figures are percentages; the slow test checks the claim.
    assert all(0.0 <= value <= 100.0 for value in recall.values())


def test_outputs_table_plot_and_shared_splits(quick_demo):
    out, lines, rows = quick_demo
    with (out / RESULTS_CSV).open() as fh:
        saved = list(csv.DictReader(fh))
    assert [r["method"] for r in saved] == [r["method"] for r in rows]
    assert (out / RESULTS_MD).read_text() in "\n".join(lines) + "\n"
    assert (out / RESULTS_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # All three rows are evaluated on the same splits: svm-eval read the demo's file.
    for method in ("trained", "random"):
        summary = json.loads((out / "svm" / method / "summary.json").read_text())
        assert summary["settings"]["splits_file"] == str(out / "splits.csv")
        assert len(summary["headline"]["mean_class_recall_per_split"]) == QUICK.splits
    splits = (out / "splits.csv").read_text().splitlines()
    n_train = sum(line.endswith(",train") for line in splits)
    assert n_train == QUICK.splits * 5 * QUICK.train_per_class


def test_rerun_reuses_every_step_and_gives_the_same_table(quick_demo):
    out, _, rows = quick_demo
    lines = []
    again = run_demo(out, QUICK, quiet=True, echo=lines.append)
    assert not [line for line in lines if line.startswith("$ ")]
    assert again == rows


def test_other_settings_in_the_same_folder_are_refused(quick_demo, tmp_path):
    out, _, _ = quick_demo
    from dataclasses import replace

    with pytest.raises(DemoError, match="seed"):
        check_state(replace(QUICK, seed=1), out)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DemoError, match="not empty"):
        check_state(QUICK, foreign)


def test_table_rows_from_summaries():
    summaries = {
        "trained": {"headline": {"mean_class_recall": 0.9, "mean_class_recall_std": 0.02,
                                 "mean_class_recall_per_split": [0.88, 0.9, 0.92]}},
        "pixels": {"headline": {"mean_class_recall": 0.5, "mean_class_recall_std": 0.0,
                                "mean_class_recall_per_split": [0.5, 0.5, 0.5]}},
    }
    rows = table_rows(QUICK, summaries, {"trained": 1536, "pixels": 1024})
    assert rows[0]["mean_class_recall"] == 90.0 and rows[0]["std"] == 2.0
    assert rows[0]["per_split"] == "88.0 90.0 92.0"
    text = format_markdown(rows, QUICK)
    assert "| 90.0 +- 2.0 |" in text and "| 1024 |" in text


def test_command_line_is_copyable():
    line = command_line(["extract", "--root", "my photos/"])
    assert line == "vggfeat extract --root 'my photos/'"


def test_help_has_an_example():
    done = subprocess.run([sys.executable, "-m", "vggfeat.demo", "--help"], capture_output=True,
                          text=True, check=True)
    assert "Example" in done.stdout and "--quick" in done.stdout


def example_options(text: str, start: str) -> dict[str, tuple[str, ...]]:
    """The options of the first example line that starts with `start` (`vggfeat CMD ...`),
    continued over backslash line ends, in a help text or the README."""
    joined = text.replace("\\\n", " ")
    line = next(ln for ln in joined.splitlines() if start in ln)
    words = line.split(start, 1)[1].split()
    options: dict[str, tuple[str, ...]] = {}
    for word in words:
        if word.startswith("--"):
            options[word] = ()
            last = word
        elif options:
            options[last] += (word,)
    return options


def demo_training_options() -> dict[str, tuple[str, ...]]:
    args = [str(a) for a in train_args(FULL, "DATA", "RUN", FULL.epochs)]
    shown = example_options("vggfeat " + " ".join(args), "vggfeat train-backbone")
    for where in ("--root", "--out", "--workers", "--device", "--seed"):  # not learning
        shown.pop(where)
    return shown


@pytest.mark.parametrize("source", ["datasets --help", "README"])
def test_small_data_training_examples_are_the_demos_settings(source):
    """The examples a user copies for a small dataset are the settings the slow test above
    shows to learn (plain A with the same settings stayed at loss ln 5 on this task)."""
    from pathlib import Path

    from click.testing import CliRunner

    if source == "README":
        text = (Path(__file__).parent.parent / "README.md").read_text()
    else:
        text = CliRunner().invoke(cli, ["datasets", "--help"]).output
    example = example_options(text, "vggfeat train-backbone --root digits/backbone")
    assert {k: v for k, v in example.items() if k not in ("--root", "--out")} == \
        demo_training_options()
    make = example_options(text, "vggfeat datasets make-digits digits/")
    assert "--clutter" in make and make["--size"] == (str(FULL.size),)
