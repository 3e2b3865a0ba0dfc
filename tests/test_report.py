"""Reports a person reads: true labels in scores.csv, per-class recall and confusion matrix
for multi-class data, labelled PR plots, every file listed, n_splits as run."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from helpers_datasets import make_csv_dataset, make_folder_dataset
from PIL import Image

from vggfeat.data.readers import open_dataset
from vggfeat.evaluation import protocols, report
from vggfeat.evaluation.inputs import Features


def _features(reader, noise: float, seed: int = 0) -> Features:
    """Descriptors that are the class's direction plus noise: an SVM gets most right, and
    the noise makes some mistakes for the confusion matrix to show."""
    labels = reader.labels()
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(labels.classes), 16))
    x = (labels.y == 1) @ centres + noise * rng.normal(size=(len(labels.ids), 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return Features(list(labels.ids), x.astype(np.float32), [Path("synthetic.h5")])


def _run(reader, out, noise=0.9, **settings):
    settings = protocols.Settings(C=(1.0,), device="cpu", **settings)
    result = protocols.run_protocol(reader, _features(reader, noise), settings, out)
    files = report.write_report(result, out, {"n_splits": settings.n_splits}, [], None)
    return result, files


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("report") / "data"
    make_folder_dataset(root, classes=("ant", "bee", "cat", "dog"), per_class=8, size=(16, 16))
    return open_dataset("folder", root)


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_multiclass_report_has_truth_recall_and_confusion(folder, tmp_path):
    result, files = _run(folder, tmp_path, n_splits=3)
    scores = _read_csv(tmp_path / "scores.csv")
    truth = {i: c for i, c in zip(folder.labels().ids, np.array(folder.classes)[
        folder.labels().single_label()], strict=True)}
    assert all(row["true"] == truth[row["id"]] for row in scores)
    # The confusion matrix, recomputed from scores.csv by hand.
    classes = list(folder.classes)
    expected = np.zeros((4, 4), int)
    for row in scores:
        predicted = int(np.argmax([float(row[c]) for c in classes]))
        expected[classes.index(row["true"]), predicted] += 1
    counts = report.confusion_matrix(result)
    np.testing.assert_array_equal(counts, expected)
    assert counts.sum() == len(scores) == 3 * 4 * 2  # 3 splits, 25% of 8 images per class
    table = _read_csv(tmp_path / "confusion.csv")
    assert [r["true_class"] for r in table] == classes
    assert [[int(r[c]) for c in classes] for r in table] == expected.tolist()
    # Its diagonal over the row sums is each class's recall, summed over the splits.
    recall = {c: [float(r["recall"]) for r in _read_csv(tmp_path / "results.csv")
                  if r["class"] == c] for c in classes}
    for k, c in enumerate(classes):
        assert expected[k, k] / expected[k].sum() == pytest.approx(np.mean(recall[c]))
    assert 0 < np.trace(expected) < expected.sum()  # some mistakes: the plot shows something
    for name in ("recall.png", "confusion.png"):
        image = Image.open(tmp_path / name)
        assert image.size[0] > 300 and image.size[1] > 200


def test_summary_lists_every_file_and_the_splits_that_ran(folder, tmp_path):
    _run(folder, tmp_path, n_splits=3)
    summary = json.loads((tmp_path / "summary.json").read_text())
    on_disk = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert summary["files"] == on_disk
    assert {"results.csv", "scores.csv", "splits.csv", "summary.json", "recall.png",
            "confusion.png", "confusion.csv"} <= set(on_disk)
    assert summary["n_splits"] == 3


def test_n_splits_is_what_ran_not_what_was_asked(tmp_path):
    root = tmp_path / "data"
    make_folder_dataset(root, classes=("a", "b"), per_class=4, split_dirs=True, size=(16, 16))
    reader = open_dataset("folder", root)
    _run(reader, tmp_path / "out", n_splits=5)  # the dataset's own split: one split runs
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["n_splits"] == 1 and summary["settings"]["n_splits"] == 5


def test_multilabel_report_has_labelled_pr_plots_and_no_confusion(tmp_path):
    root = tmp_path / "data"
    make_csv_dataset(root, n_images=24, multi_label=True, size=(16, 16))
    reader = open_dataset("csv", root)
    result, _ = _run(reader, tmp_path / "out", noise=0.5)
    out = tmp_path / "out"
    assert report.confusion_matrix(result) is None
    assert not (out / "confusion.png").exists() and not (out / "recall.png").exists()
    [plot] = out.glob("pr_*.png")  # one split: the csv's own train/test
    assert plot.stat().st_size > 5000
    scores = _read_csv(out / "scores.csv")
    truth = {i: ";".join(np.array(reader.classes)[row == 1])
             for i, row in zip(reader.labels().ids, reader.labels().y, strict=True)}
    assert all(row["true"] == truth[row["id"]] for row in scores)
    assert any(";" in row["true"] for row in scores)  # several labels kept


def test_pr_plot_axes_are_labelled(tmp_path, monkeypatch):
    """The labels are read back from the figure matplotlib drew (before it is closed)."""
    import matplotlib.pyplot as plt

    root = tmp_path / "data"
    make_csv_dataset(root, n_images=24, multi_label=True, size=(16, 16))
    reader = open_dataset("csv", root)
    seen = []
    monkeypatch.setattr(plt, "close", lambda fig: seen.append(fig))
    _run(reader, tmp_path / "out", noise=0.5)
    [fig] = seen
    axes = [ax for ax in fig.axes if ax.axison]
    assert {ax.get_xlabel() for ax in axes[-3:]} == {"recall"}
    assert axes[0].get_ylabel() == "precision"
    assert min(ax.title.get_fontsize() for ax in axes) >= 9


def test_recall_plot_of_a_class_with_the_same_recall_on_every_split(tmp_path):
    """The mean of three equal recalls can differ from them in the last bit (0.1 does):
    the plot's error bar is then 0, not a negative bar that matplotlib refuses."""
    rows = [{"split": s, "class": c, "C": 1.0, "n_train": 15, "n_test": 30, "recall": r}
            for s in range(3) for c, r in (("5", 0.1), ("6", [0.2, 0.3, 0.4][s]))]
    result = protocols.Result("folder", "", ("5", "6"), rows=rows,
                              headline={"mean_class_recall": 0.2})
    assert np.mean([0.1] * 3) != 0.1  # the case that made a negative bar
    assert report.plot_recall(result, tmp_path).stat().st_size > 1000
