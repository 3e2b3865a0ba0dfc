"""`vggfeat compare`: svm-eval result folders side by side, numbers as the folders hold them."""
import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers_datasets import make_csv_dataset, make_folder_dataset
from PIL import Image

from vggfeat.cli import cli
from vggfeat.data.readers import open_dataset
from vggfeat.evaluation import protocols, report
from vggfeat.evaluation.inputs import Features


def _result_folder(reader, out: Path, noise: float, seed: int = 0) -> Path:
    """A real svm-eval result (protocol + report) on descriptors made of class directions
    plus noise: more noise, a worse run."""
    labels = reader.labels()
    rng = np.random.default_rng(1)
    x = (labels.y == 1) @ rng.normal(size=(len(labels.classes), 16))
    x = x + noise * np.random.default_rng(2).normal(size=x.shape)
    features = Features(list(labels.ids), x.astype(np.float32), [Path("synthetic.h5")])
    settings = protocols.Settings(C=(1.0,), device="cpu", n_splits=2, seed=seed)
    result = protocols.run_protocol(reader, features, settings, out)
    sources = [{"path": f"noise{noise}.h5", "arch": "vgg16", "layer": "fc7", "scales": [256]}]
    report.write_report(result, out, {"aggregate": "avg", "n_splits": 2}, sources, None)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    make_folder_dataset(tmp / "data", classes=("ant", "bee", "cat"), per_class=8, size=(16, 16))
    reader = open_dataset("folder", tmp / "data")
    return [_result_folder(reader, tmp / name, noise)
            for name, noise in (("clean", 0.2), ("noisy", 3.0))]


def run(*args):
    return CliRunner().invoke(cli, ["compare", *map(str, args)])


def _summary(folder):
    return json.loads((folder / "summary.json").read_text())


def test_table_shows_each_run_as_its_folder_says(runs, tmp_path):
    result = run(*runs, "--out", tmp_path / "cmp")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # same dataset, same splits: nothing to warn about
    lines = result.stdout.splitlines()
    for folder in runs:
        h = _summary(folder)["headline"]
        line = next(x for x in lines if x.startswith(folder.name + " "))
        expected = (f"{100 * h['mean_class_recall']:.1f} +- "
                    f"{100 * h['mean_class_recall_std']:.1f}")
        assert expected in line and "vgg16 fc7 Q=256 (avg)" in line
    # Per class: the mean of results.csv's recall over the splits, for each run.
    for c in ("ant", "bee", "cat"):
        line = next(x for x in lines if x.startswith(c + " "))
        shown = [float(v) for v in line.split()[1:3]]
        for folder, value in zip(runs, shown, strict=True):
            with (folder / "results.csv").open() as fh:
                recalls = [float(r["recall"]) for r in csv.DictReader(fh) if r["class"] == c]
            assert value == pytest.approx(100 * np.mean(recalls), abs=0.05)
    # The files written are listed on stdout, and the csv holds the same numbers.
    assert lines[-2:] == [str(tmp_path / "cmp" / "compare.csv"),
                          str(tmp_path / "cmp" / "compare.png")]
    with (tmp_path / "cmp" / "compare.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert [r["run"] for r in table] == ["clean", "noisy"]
    # A folder without "probe" (every one written before the other probes) is the SVM's.
    assert [(r["probe"], r["arch"], r["layer"]) for r in table] == [("svm", "vgg16", "fc7")] * 2
    assert float(table[0]["value"]) > float(table[1]["value"])  # the noise shows
    image = Image.open(tmp_path / "cmp" / "compare.png")
    assert image.size[0] >= 1000


def test_refuses_to_replace_its_files_without_overwrite(runs, tmp_path):
    assert run(*runs, "--out", tmp_path).exit_code == 0
    again = run(*runs, "--out", tmp_path)
    assert again.exit_code == 2 and "--overwrite" in again.stderr
    assert run(*runs, "--out", tmp_path, "--overwrite").exit_code == 0


def test_warns_when_runs_are_not_comparable(runs, tmp_path):
    make_csv_dataset(tmp_path / "csv", n_images=24, size=(16, 16))
    other = _result_folder(open_dataset("csv", tmp_path / "csv"), tmp_path / "other", 0.2)
    result = run(runs[0], other, "--no-per-class")
    assert result.exit_code == 0, result.output
    assert "warning: other is on csv, clean on folder" in result.stderr
    assert "per class" not in result.stdout
    reseeded = _result_folder(open_dataset("folder", runs[0].parent / "data"),
                              tmp_path / "reseeded", 0.2, seed=5)
    result = run(runs[0], reseeded)
    assert re.search(r"different train/test splits", result.stderr)


def test_a_folder_without_results_is_one_clear_line(tmp_path):
    result = run(tmp_path)
    assert result.exit_code == 2 and "no summary.json" in result.stderr
    assert "Traceback" not in result.output


def test_one_run_has_no_spread_shown_as_a_dash_not_nan(runs, tmp_path):
    result = run(runs[0], "--out", tmp_path / "one")
    assert result.exit_code == 0, result.output
    assert "nan" not in result.stdout
    for c in ("ant", "bee", "cat"):
        line = next(x for x in result.stdout.splitlines() if x.startswith(c + " "))
        assert line.split()[-1] == "-"
