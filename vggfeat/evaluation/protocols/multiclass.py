"""Caltech-101 / 256 and custom (folder / csv) data: repeated seeded splits, one C per
split for multi-class data (mean class recall), AP per class for multi-label data."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vggfeat.data.readers import Labels
from vggfeat.evaluation.inputs import Features
from vggfeat.evaluation.metrics import mean_class_recall, per_class_recall
from vggfeat.evaluation.probes import chosen_values
from vggfeat.evaluation.protocols.common import (
    Result,
    Settings,
    check_positives,
    decision_values,
    fit_probe,
    multilabel_split,
    new_result,
    record_chosen,
    result_value,
    score_rows,
)
from vggfeat.evaluation.protocols.splits import draw_splits, read_splits, write_splits

# Caltech protocols (paper Appendix B; datasets/README.md): training / test images per class.
CALTECH_SPLITS = {"caltech101": (30, 50), "caltech256": (60, None)}
# Multi-class protocols choose one C by this many stratified folds of the training images
# (choice: every training image is predicted once; 20% held out once, 6 images per class
# on Caltech-101, made the choice noisy).
MULTICLASS_FOLDS = 5
# Custom data without a split: this fraction of each class is the test set (choice).
CUSTOM_TEST_FRACTION = 0.25


def _multiclass_splits(result: Result, reader, features, settings, splits) -> None:
    labels = reader.labels()
    y_all = labels.single_label()
    index = {i: k for k, i in enumerate(labels.ids)}
    recalls, accuracies, chosen = [], [], []
    plans = []
    for s, assign in enumerate(splits):  # all lookups before fitting, no copies yet
        train = [i for i in labels.ids if assign.get(i) == "train"]
        test = [i for i in labels.ids if assign.get(i) == "test"]
        features.check(train, f"split {s} (train)")
        features.check(test, f"split {s} (test)")
        plans.append((train, test))
    for s, (train, test) in enumerate(plans):
        # one split's training rows at a time, moved to the front of the features' own rows
        # (a view; `Features.front`), else copied for its fit and freed before the next split
        train_X = features.front(train, f"split {s} (train)")
        y_train = y_all[[index[i] for i in train]]
        y_test = y_all[[index[i] for i in test]]
        # int8, and gone before the fit: in int64 it held 31 MiB at Caltech-256 size
        onehot = np.where(y_train[:, None] == np.arange(len(labels.classes)),
                          np.int8(1), np.int8(-1))
        check_positives(onehot, labels.classes, f"{reader.name} training images of split {s}")
        del onehot
        probe = fit_probe(settings, train_X, y_train, MULTICLASS_FOLDS,
                          copy_X=not features.own_rows)
        del train_X
        scores = decision_values(probe, features, test, f"split {s} (test)")
        scores = scores[:, None] if scores.ndim == 1 else scores
        if len(probe.classes_) == 2:  # one SVM: class 1 vs class 0 as two columns
            scores = np.concatenate([-scores, scores], axis=1)
        predicted = np.argmax(scores, axis=1)
        per_class = per_class_recall(y_test, predicted, range(len(labels.classes)))
        C = chosen_values(probe)
        C = C if len(C) == len(labels.classes) else np.repeat(C, 2)
        record_chosen(result, str(s), C)
        # One C for all classes (shared selection): one number per split (a single-C
        # per-class fit, e.g. --C with one value, is the same).
        chosen.append(result_value(result, C[0]) if np.all(C == C[0]) else None)
        for k, name in enumerate(labels.classes):
            result.rows.append({"split": s, "class": name,
                                result.hyperparameter: result_value(result, C[k]),
                                "n_train": int((y_train == k).sum()),
                                "n_test": int((y_test == k).sum()), "recall": per_class[k]})
        recalls.append(mean_class_recall(y_test, predicted))
        accuracies.append(float(np.mean(predicted == y_test)))
        score_rows(result, str(s), test, scores, [labels.classes[k] for k in y_test])
    ddof = 1 if len(recalls) > 1 else 0
    result.headline = {
        "mean_class_recall": float(np.mean(recalls)),
        "mean_class_recall_std": float(np.std(recalls, ddof=ddof)),
        "mean_class_recall_per_split": recalls,
        "accuracy": float(np.mean(accuracies)),
        "accuracy_std": float(np.std(accuracies, ddof=ddof)),
        "accuracy_per_split": accuracies,
        f"{result.hyperparameter}_per_split": chosen,
        "headline": "mean_class_recall",
    }


def caltech(reader, features: Features, settings: Settings, out=None) -> Result:
    """3 seeded splits (Caltech-101: 30 train, up to 50 test per class; Caltech-256: 60
    train, the rest test); one C per split, chosen by 5-fold cross-validated mean class
    recall on the training images; mean class recall per split and mean +- std. The splits
    are written to ``OUT/splits.csv``."""
    n_train, n_test = CALTECH_SPLITS[reader.name]
    n_train = settings.train_per_class or n_train
    n_test = settings.test_per_class or n_test
    result = new_result(reader.name, f"{settings.n_splits} splits, {n_train} train / "
                        f"{n_test or 'rest'} test per class", reader.classes, settings)
    labels = reader.labels()
    if settings.splits_file:
        splits = read_splits(settings.splits_file, labels)
        result.protocol += f" (read from {settings.splits_file})"
    else:
        splits = draw_splits(labels, n_train, n_test, settings.n_splits, settings.seed,
                             test_from=settings.test_from)
    if out is not None:
        result.files.append(write_splits(Path(out) / "splits.csv", splits, labels))
    _multiclass_splits(result, reader, features, settings, splits)
    return result


def custom(reader, features: Features, settings: Settings, out=None) -> Result:
    """Folder / csv data: the dataset's own train/test split when it has one (val joins
    training), else seeded splits: `train_per_class` (and `test_per_class`) images of each
    class as Caltech does when given, 25% of each class as test otherwise. Multi-class: mean class
    recall and accuracy; multi-label: AP per class and mAP."""
    labels = reader.labels()
    result = new_result(reader.name, "", reader.classes, settings)
    if {"train", "test"} <= set(reader.splits()):
        assign = {i: "test" for i in reader.split_ids("test")}
        for split in ("train", "val"):
            if split in reader.splits():
                assign.update({i: "train" for i in reader.split_ids(split)})
        splits = [assign]
        result.protocol = "the dataset's train(+val) / test split"
    elif {"train", "val"} <= set(reader.splits()):  # ImageNet layout: val is held out
        splits = [{**{i: "train" for i in reader.split_ids("train")},
                   **{i: "test" for i in reader.split_ids("val")}}]
        result.protocol = "the dataset's train / val split (val as the test set)"
    elif settings.splits_file:
        splits = read_splits(settings.splits_file, labels)
        result.protocol = f"splits from {settings.splits_file}"
    elif reader.multi_label:
        splits = []
        for s in range(settings.n_splits):
            rng = np.random.default_rng(settings.seed + s)
            order = rng.permutation(len(labels.ids))
            n_test = max(1, int(round(CUSTOM_TEST_FRACTION * len(order))))
            splits.append({labels.ids[j]: ("test" if r < n_test else "train")
                           for r, j in enumerate(order)})
        result.protocol = f"{settings.n_splits} seeded splits, 25% test"
    elif settings.train_per_class:  # the Caltech protocol on one's own data
        n_train, n_test = settings.train_per_class, settings.test_per_class
        splits = draw_splits(labels, n_train, n_test, settings.n_splits, settings.seed,
                             test_from=settings.test_from)
        result.protocol = (f"{settings.n_splits} seeded splits, {n_train} train / "
                           f"{n_test or 'rest'} test per class")
    else:
        splits = draw_splits(labels, None, None, settings.n_splits, settings.seed,
                             test_fraction=CUSTOM_TEST_FRACTION)
        result.protocol = f"{settings.n_splits} seeded splits, 25% of each class as test"
    if out is not None:
        result.files.append(write_splits(Path(out) / "splits.csv", splits, labels))
    if not reader.multi_label:
        _multiclass_splits(result, reader, features, settings, splits)
        return result
    maps = []
    for s, assign in enumerate(splits):
        rows = {sub: [k for k, i in enumerate(labels.ids) if assign.get(i) == sub]
                for sub in ("train", "test")}
        part = {sub: Labels([labels.ids[k] for k in r], labels.classes, labels.y[r])
                for sub, r in rows.items()}
        maps.append(multilabel_split(result, features, part["train"], part["test"], str(s),
                                      settings, 3, train_name=f"split {s} training")[1])
    result.headline = {"mAP_voc10": float(np.mean(maps)),
                       "mAP_voc10_std": float(np.std(maps, ddof=1 if len(maps) > 1 else 0)),
                       "headline": "mAP_voc10"}
    return result
