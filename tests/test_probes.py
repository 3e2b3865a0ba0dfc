"""The probes beside the SVM (`svm-eval --probe logreg|knn`) and learning curves, checked
against scikit-learn pipelines written here: LogisticRegression and
KNeighborsClassifier(metric="cosine", weights=similarity) fitted with the same grids, on
the same folds, on the same cache and splits (descriptors read in float64, as the probes
work)."""
import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from helpers_datasets import (
    class_descriptors,
    make_folder_dataset,
    small_voc_cache,
    write_feature_cache,
)
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.utils.estimator_checks import parametrize_with_checks

from vggfeat.cli import cli
from vggfeat.data.readers import open_dataset
from vggfeat.evaluation import inputs
from vggfeat.evaluation.metrics import voc_ap
from vggfeat.evaluation.probes import K_GRID, KNNProbe, LogisticRegressionProbe
from vggfeat.evaluation.protocols import C_GRID, MULTICLASS_FOLDS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def similarity(distance):
    """The vote of a neighbour at cosine distance d = 1 - cos: its similarity, floored at 0
    (scikit-learn's "distance" weighting would be 1 / d)."""
    return np.maximum(1.0 - distance, 0.0)


def reference_model(probe, value, n_rows):
    """The scikit-learn model of `probe` at one grid value (k capped at the rows)."""
    if probe == "logreg":
        return LogisticRegression(C=value, max_iter=1000)
    return KNeighborsClassifier(n_neighbors=min(int(value), n_rows), metric="cosine",
                                weights=similarity)


def reference_scores(model, X):
    """Per-class scores: decision values (logistic regression), weighted vote shares (kNN)."""
    if isinstance(model, LogisticRegression):
        return model.decision_function(X)
    return model.predict_proba(X)


def capped(grid, n):
    return sorted({min(int(k), n) for k in grid})


def _invoke(*args):
    return CliRunner().invoke(cli, ["svm-eval", *map(str, args)])


def _ok(result):
    assert result.exit_code == 0, result.output
    return result


@parametrize_with_checks([LogisticRegressionProbe(C=(0.1, 1.0), cv=2), KNNProbe(k=(1, 3), cv=2)])
def test_sklearn_compatible(estimator, check):
    check(estimator)


# --------------------------------------------------------------------------------------
# single-label data: one value for all classes, by cross-validated mean class recall
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A folder dataset (3 classes x 11 images) and a cache whose descriptors carry the
    labels noisily (so the grid's choice matters)."""
    base = tmp_path_factory.mktemp("folder")
    make_folder_dataset(base / "data", classes=("ant", "bee", "cat"), per_class=11,
                        size=(16, 16))
    labels = open_dataset("folder", base / "data").labels()
    x = class_descriptors(labels.y, dim=12, noise=1.5, seed=3)
    cache = write_feature_cache(base / "f.h5", dataset="folder", root=base / "data",
                                ids=labels.ids, descriptors=x)
    return cache, labels


def _multiclass_reference(probe, grid, X, y, X_test, seed):
    """Choose the grid value by the mean class recall of out-of-fold predictions (5
    stratified folds), refit on all training rows, score the test rows."""
    folds = list(StratifiedKFold(MULTICLASS_FOLDS, shuffle=True, random_state=seed).split(X, y))
    grid = capped(grid, len(y)) if probe == "knn" else sorted(grid)
    recalls = []
    for value in grid:
        predicted = np.empty_like(y)
        for train, val in folds:
            model = reference_model(probe, value, len(train)).fit(X[train], y[train])
            predicted[val] = model.predict(X[val])
        recalls.append(balanced_accuracy_score(y, predicted))
    best = grid[int(np.argmax(recalls))]
    return best, reference_scores(reference_model(probe, best, len(y)).fit(X, y), X_test)


@pytest.mark.parametrize("probe", ["logreg", "knn"])
def test_multiclass_probe_equals_scikit_learn(folder, probe, tmp_path):
    cache, labels = folder
    out = tmp_path / probe
    _ok(_invoke(cache, "--probe", probe, "--train-per-class", 6, "--splits", 2,
                "--aggregate", "avg", "--out", out, "-q"))
    _, features = inputs.load([cache], "avg")
    splits = pd.read_csv(out / "splits.csv")
    scores = pd.read_csv(out / "scores.csv")
    summary = json.loads((out / "summary.json").read_text())
    param, grid = ("k", K_GRID) if probe == "knn" else ("C", C_GRID)
    assert summary["probe"] == probe and "chosen_C" not in summary
    classes = list(labels.classes)
    index = {i: k for k, i in enumerate(labels.ids)}
    for s in (0, 1):
        part = splits[splits["split"] == s]
        train = sorted(part[part["subset"] == "train"]["id"])
        test = sorted(part[part["subset"] == "test"]["id"])
        y = np.argmax(labels.y[[index[i] for i in train]], axis=1)
        X = features.rows(train, "train").astype(np.float64)
        X_test = features.rows(test, "test").astype(np.float64)
        best, expected = _multiclass_reference(probe, grid, X, y, X_test, seed=0)
        assert summary["chosen"][str(s)] == {c: {param: best} for c in classes}
        assert summary["headline"][f"{param}_per_split"][s] == best
        ours = scores[scores["split"] == s].set_index("id").loc[test, classes].to_numpy()
        np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-12)
        y_test = np.argmax(labels.y[[index[i] for i in test]], axis=1)
        recall = balanced_accuracy_score(y_test, np.argmax(expected, axis=1))
        assert summary["headline"]["mean_class_recall_per_split"][s] == pytest.approx(recall)
    rows = pd.read_csv(out / "results.csv")
    assert param in rows.columns and "C" not in rows.columns.drop(param, errors="ignore")


# --------------------------------------------------------------------------------------
# multi-label VOC: each class its own value, by held-out AP (difficult images ignored)
# --------------------------------------------------------------------------------------


def _per_class_reference(probe, grid, X, Y, X_test, seed=0):
    """For each class: held-out VOC AP over 3 shuffled folds at each grid value (rows of a
    difficult image left out of the class's training), best value refit on all rows."""
    folds = list(KFold(3, shuffle=True, random_state=seed).split(X))
    grid = capped(grid, len(Y)) if probe == "knn" else sorted(grid)
    chosen, scores = [], []
    for k in range(Y.shape[1]):
        y = Y[:, k]
        aps = np.zeros(len(grid))
        counted = 0
        for train, val in folds:
            if not (y[val] == 1).any():
                continue
            counted += 1
            rows = train[y[train] != 0]
            for g, value in enumerate(grid):
                aps[g] += voc_ap(_binary_scores(probe, value, X[rows], y[rows] == 1, X[val]),
                                 y[val])
        best = grid[int(np.argmax(aps))] if counted else grid[len(grid) // 2]
        rows = np.flatnonzero(y != 0)
        chosen.append(best)
        scores.append(_binary_scores(probe, best, X[rows], y[rows] == 1, X_test))
    return chosen, np.stack(scores, axis=1)


def _binary_scores(probe, value, X, positive, X_test):
    if positive.all() or not positive.any():  # one kind of training label: no information
        return np.full(len(X_test), 0.0 if probe == "logreg" else float(positive.all()))
    model = clone(reference_model(probe, value, len(X))).fit(X, positive)
    scores = reference_scores(model, X_test)
    return scores if probe == "logreg" else scores[:, 1]


@pytest.mark.parametrize("probe", ["logreg", "knn"])
def test_voc_probe_equals_scikit_learn_per_class(probe, tmp_path):
    cache = small_voc_cache(tmp_path)
    reader = open_dataset("voc2007", json.loads(_info(cache))["root"])
    out = tmp_path / "out"
    _ok(_invoke(cache, "--probe", probe, "--out", out, "-q"))
    summary = json.loads((out / "summary.json").read_text())
    _, features = inputs.load([cache], "avg")
    train, test = reader.labels("trainval"), reader.labels("test")
    param, grid = ("k", K_GRID) if probe == "knn" else ("C", C_GRID)
    chosen, expected = _per_class_reference(
        probe, grid, features.rows(train.ids, "t").astype(np.float64), train.y,
        features.rows(test.ids, "t").astype(np.float64))
    assert summary["chosen"]["test"] == {c: {param: v} for c, v in zip(reader.classes, chosen,
                                                                         strict=True)}
    scores = pd.read_csv(out / "scores.csv", dtype={"id": str}).set_index("id")
    scores = scores.loc[test.ids, list(reader.classes)]
    np.testing.assert_allclose(scores.to_numpy(), expected, rtol=1e-9, atol=1e-12)
    rows = pd.read_csv(out / "results.csv")
    for k, name in enumerate(reader.classes):
        if (test.y[:, k] == 1).any():
            row = rows[rows["class"] == name].iloc[0]
            assert row["ap_voc10"] == pytest.approx(voc_ap(expected[:, k], test.y[:, k]))
            assert row[param] == chosen[k]


def _info(cache):
    import h5py

    with h5py.File(cache, "r") as f:
        return json.dumps({"root": f.attrs["root"]})


def test_knn_caps_k_at_the_training_rows_and_votes_by_similarity():
    X = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    y = np.array([0, 0, 1, 1])
    probe = KNNProbe(k=(1, 50)).fit(X, y)
    assert probe.grid_.tolist() == [1, 4]
    # k = 4 (all rows): class 1's share of the similarity-weighted vote, minus class 0's.
    x = np.array([[0.6, 0.8]])
    sims = np.maximum((X / np.linalg.norm(X, axis=1, keepdims=True)) @ x[0], 0)
    share = sims[2:].sum() / sims.sum()
    assert KNNProbe(k=50).fit(X, y).decision_function(x)[0] == pytest.approx(2 * share - 1)


# --------------------------------------------------------------------------------------
# learning curves
# --------------------------------------------------------------------------------------


def test_learning_curve_files_and_separate_runs_agree(folder, tmp_path):
    cache, _ = folder
    common = ["--splits", 2, "--test-per-class", 4, "--aggregate", "avg", "--C", "0.1,1,10",
              "-q"]
    out = tmp_path / "curve"
    _ok(_invoke(cache, "--probe", "svm,knn", "--train-per-class", "1,3,6", "--out", out,
                *common))
    with (out / "learning_curve.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 3 * 2 and list(rows[0]) == ["probe", "train_per_class", "split",
                                                        "mean_class_recall"]
    assert (out / "learning_curve.png").stat().st_size > 0
    tests = set()
    for row in rows:
        folder_ = out / row["probe"] / f"n{row['train_per_class']}"
        summary = json.loads((folder_ / "summary.json").read_text())
        assert summary["settings"]["train_per_class"] == int(row["train_per_class"])
        per_split = summary["headline"]["mean_class_recall_per_split"]
        assert float(row["mean_class_recall"]) == per_split[int(row["split"])]
        splits = pd.read_csv(folder_ / "splits.csv")
        tests.add(tuple(sorted(zip(splits[splits.subset == "test"]["split"],
                                   splits[splits.subset == "test"]["id"], strict=True))))
        assert (splits[splits.subset == "train"].groupby(["split", "class"]).size()
                == int(row["train_per_class"])).all()
    assert len(tests) == 1  # every size and probe tested on the same images
    # The largest size is an ordinary run at that size; a smaller one equals a run given
    # the curve's splits.
    alone = tmp_path / "alone"
    _ok(_invoke(cache, "--probe", "knn", "--train-per-class", 6, "--out", alone, *common))
    again = tmp_path / "again"
    _ok(_invoke(cache, "--train-per-class", 3, "--splits-file", out / "svm" / "n3" / "splits.csv",
                "--out", again, *common))
    for separate, inside in ((alone, out / "knn" / "n6"), (again, out / "svm" / "n3")):
        for name in ("results.csv", "scores.csv", "splits.csv"):
            pd.testing.assert_frame_equal(pd.read_csv(separate / name),
                                          pd.read_csv(inside / name), obj=name)


def test_learning_curve_needs_drawn_training_images(tmp_path, folder):
    voc = small_voc_cache(tmp_path / "voc")
    result = _invoke(voc, "--train-per-class", "1,2", "--out", tmp_path / "o", "-q")
    assert result.exit_code == 2 and "learning curves work on Caltech" in result.output
    assert not (tmp_path / "o").exists()
    cache, _ = folder
    splits = tmp_path / "splits.csv"
    splits.write_text("split,id,class,subset\n0,ant/000.jpg,ant,train\n")
    result = _invoke(cache, "--train-per-class", "1,2", "--splits-file", splits, "-q",
                     "--out", tmp_path / "p")
    assert result.exit_code == 2 and "--splits-file" in result.output


def test_curve_folder_is_compared_as_its_runs(folder, tmp_path):
    cache, _ = folder
    out = tmp_path / "curve"
    _ok(_invoke(cache, "--probe", "svm,logreg", "--train-per-class", "2,4", "--splits", 2,
                "--test-per-class", 3, "--C", "0.1,1", "--aggregate", "avg", "--out", out, "-q"))
    result = _ok(CliRunner().invoke(cli, ["compare", str(out), "--out", str(tmp_path / "cmp"),
                                          "--no-per-class"]))
    assert result.stderr == ""  # the same test images: nothing to warn about
    table = pd.read_csv(tmp_path / "cmp" / "compare.csv")
    assert list(table["run"]) == [f"curve/{p}/n{n}" for p in ("svm", "logreg") for n in (2, 4)]
    assert list(table["probe"]) == ["svm", "svm", "logreg", "logreg"]
    assert list(table["train_per_class"]) == [2, 4, 2, 4]
    assert set(table["arch"]) == {"vgg16"} and set(table["layer"]) == {"fc7"}
    for run, value in zip(table["run"], table["value"], strict=True):
        summary = json.loads((tmp_path / Path(run) / "summary.json").read_text())
        assert value == pytest.approx(100 * summary["headline"]["mean_class_recall"], abs=0.01)
