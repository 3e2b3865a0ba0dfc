"""The paper's transfer protocols (Appendix B, SPEC section 6), one function per benchmark.

Each protocol takes a dataset reader, the descriptors and `Settings`, fits one-vs-rest
linear SVMs on training data only and returns a `Result`: per-class rows, the headline
metric, chosen C,
test decision values and PR curves. Checks on the labels (a class without a positive
training example, ids without a descriptor) run before anything is fitted.

C is chosen by cross-validation inside the training data, on the protocol's own metric:
per class by AP for the multi-label VOC protocols (each class its own problem), and one C
for all classes of a split by mean class recall for the multi-class protocols (Caltech,
single-label folder/csv data), whose argmax compares the classes' scores.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vggfeat.data.readers import DatasetReader, Labels
from vggfeat.evaluation.inputs import EvaluationInputError, Features
from vggfeat.evaluation.metrics import (
    mean_class_recall,
    per_class_recall,
    precision_recall,
    voc07_ap,
    voc_ap,
)
from vggfeat.evaluation.svm import C_GRID, LinearSVMProbe
from vggfeat.utils import atomic

# Caltech protocols (SPEC section 6): training / test images per class.
CALTECH_SPLITS = {"caltech101": (30, 50), "caltech256": (60, None)}
# Multi-class protocols choose one C by this many stratified folds of the training images
# (choice: every training image is predicted once; 20% held out once, 6 images per class
# on Caltech-101, made the choice noisy).
MULTICLASS_FOLDS = 5
# Custom data without a split: this fraction of each class is the test set (choice).
CUSTOM_TEST_FRACTION = 0.25


@dataclass
class Settings:
    """How to fit and split. ``cv=None`` uses the protocol's default (VOC: 3 folds of the
    training images, C per class; Caltech and custom multi-class: 5 stratified folds, one
    C for all classes)."""

    C: tuple[float, ...] = C_GRID
    cv: int | float | None = None
    solver: str = "torch"
    device: str = "cpu"
    difficult: str = "ignore"
    seed: int = 0
    n_splits: int = 3
    train_per_class: int | None = None
    test_per_class: int | None = None
    splits_file: Path | None = None
    verbose: bool = False

    def probe(self, default_cv) -> LinearSVMProbe:
        return LinearSVMProbe(
            C=self.C, cv=default_cv if self.cv is None else self.cv, solver=self.solver,
            device=self.device, difficult=self.difficult, random_state=self.seed,
            verbose=self.verbose,
        )


@dataclass
class Result:
    """What a protocol measured.

    ``rows``: one dict per class and split (results.csv). ``headline``: the dataset's
    metric(s). ``chosen_C``: split -> class -> C. ``scores``: one dict per test sample and
    split with the decision value of each class (scores.csv). ``curves``: split -> class ->
    (precision, recall). ``files``: server submission files and split lists written.
    """

    dataset: str
    protocol: str
    classes: tuple[str, ...]
    rows: list[dict] = field(default_factory=list)
    headline: dict = field(default_factory=dict)
    chosen_C: dict = field(default_factory=dict)
    scores: list[dict] = field(default_factory=list)
    curves: dict = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


# --------------------------------------------------------------------------------------
# Shared steps
# --------------------------------------------------------------------------------------


def _check_positives(y: np.ndarray, classes, where: str) -> None:
    empty = [classes[k] for k in range(y.shape[1]) if not (y[:, k] == 1).any()]
    if empty:
        raise EvaluationInputError(
            f"{where}: class(es) {', '.join(empty)} have no positive training example; "
            "an SVM cannot be trained for them (check the split files / labels, or drop the "
            "class from the dataset)"
        )


def _fit(settings: Settings, X, y, default_cv) -> LinearSVMProbe:
    _check_folds(settings, y, default_cv)
    return settings.probe(default_cv).fit(X, y)


def _check_folds(settings: Settings, y, default_cv) -> None:
    """k-fold selection of C needs every class in every fold: at least k positives each."""
    cv = settings.cv  # the protocols' defaults fall back to unstratified folds instead
    if cv is None or isinstance(cv, float) or len(settings.C) < 2:
        return
    y = np.asarray(y)
    counts = np.bincount(y) if y.ndim == 1 else (y == 1).sum(axis=0)
    fewest = int(counts.min(initial=len(y)))
    if fewest < cv:
        fewer = f"--cv {fewest} or less, or " if fewest >= 2 else ""
        raise EvaluationInputError(
            f"--cv {cv}: a class has only {fewest} training example(s), too few for {cv} "
            f"folds; give {fewer}a held-out fraction such as --cv 0.2"
        )


def _true_labels(y: np.ndarray, classes) -> list[str]:
    """Each row's positive classes joined by ';' (one name for multi-class data); a VOC
    "difficult" class (0) is written with a trailing '?'."""
    return [";".join([classes[k] for k in np.flatnonzero(row == 1)]
                     + [f"{classes[k]}?" for k in np.flatnonzero(row == 0)]) for row in y]


def _score_rows(result: Result, split: str, ids, scores: np.ndarray, truth=None) -> None:
    """One scores.csv row per sample: split, id, its true label(s) ('' where the split has
    no public labels) and the decision value of every class."""
    for i, sample_id in enumerate(ids):
        row = {"split": split, "id": sample_id, "true": "" if truth is None else truth[i]}
        row.update({c: float(scores[i, k]) for k, c in enumerate(result.classes)})
        result.scores.append(row)


def _ap_rows(result: Result, split: str, scores: np.ndarray, y: np.ndarray, C) -> tuple:
    """Both AP variants per class; returns (mAP VOC07, mAP VOC2010+) over scored classes."""
    ap07, ap10 = [], []
    result.curves[split] = {}
    for k, name in enumerate(result.classes):
        row = {"split": split, "class": name, "C": float(C[k]),
               "n_pos": int((y[:, k] == 1).sum()), "n_difficult": int((y[:, k] == 0).sum())}
        if row["n_pos"]:
            row["ap_voc07"] = voc07_ap(scores[:, k], y[:, k])
            row["ap_voc10"] = voc_ap(scores[:, k], y[:, k])
            ap07.append(row["ap_voc07"])
            ap10.append(row["ap_voc10"])
            result.curves[split][name] = precision_recall(scores[:, k], y[:, k])
        else:  # no positive to find: AP undefined, left out of the mean
            row["ap_voc07"] = row["ap_voc10"] = float("nan")
        result.rows.append(row)
    return float(np.mean(ap07)), float(np.mean(ap10))


def _multilabel_split(result, features, train: Labels, test: Labels, split, settings,
                      default_cv, train_X=None, test_X=None, train_name="train") -> tuple:
    """Fit on `train`, score `test` (reported as `split`) with both AP variants."""
    train_X = features.rows(train.ids, f"split {split} (training)") if train_X is None else train_X
    test_X = features.rows(test.ids, f"split {split} (test)") if test_X is None else test_X
    _check_positives(train.y, result.classes, f"{result.dataset} {train_name} images")
    probe = _fit(settings, train_X, train.y, default_cv)
    scores = probe.decision_function(test_X)
    result.chosen_C[split] = dict(zip(result.classes, map(float, probe.C_), strict=True))
    _score_rows(result, split, test.ids, scores, _true_labels(test.y, result.classes))
    return _ap_rows(result, split, scores, test.y, probe.C_)


def _trainval(reader) -> Labels:
    """The trainval labels, or train and val joined where no trainval files exist."""
    if "trainval" in reader.splits():
        return reader.labels("trainval")
    train, val = reader.labels("train"), reader.labels("val")
    ids = train.ids + val.ids
    order = np.argsort(ids, kind="stable")
    return Labels([ids[i] for i in order], train.classes,
                  np.concatenate([train.y, val.y])[order])


def _write_server_files(out: Path | None, pattern: str, classes, ids, scores, line) -> list:
    if out is None:
        return []
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for k, name in enumerate(classes):
        path = out / pattern.format(name)
        atomic.write_text(path, "".join(line(i, s) for i, s in zip(ids, scores[:, k],
                                                                   strict=True)))
        written.append(path)
    return written


# --------------------------------------------------------------------------------------
# PASCAL VOC 2007 / 2012 classification
# --------------------------------------------------------------------------------------


def voc_classification(reader, features: Features, settings: Settings, out=None) -> Result:
    """VOC 2007: trainval -> test. VOC 2012: train -> val, and trainval -> test server files
    ``comp1_cls_test_<class>.txt`` when the test images are present."""
    result = Result(reader.name, "", reader.classes)
    if reader.name == "voc2007":
        train_split, eval_split = "trainval", "test"
    else:
        train_split, eval_split = "train", "val"
    result.protocol = f"SVMs on {train_split}, AP on {eval_split} (difficult: {settings.difficult})"
    train, test = reader.labels(train_split), reader.labels(eval_split)
    features.rows(train.ids, f"split {train_split}")  # all inputs checked before fitting
    features.rows(test.ids, f"split {eval_split}")
    server = reader.name == "voc2012" and "test" in reader.splits()
    if server:
        full = _trainval(reader)
        test_ids = reader.split_ids("test")
        features.rows(test_ids, "split test")
        _check_positives(full.y, result.classes, "voc2012 trainval")
    m07, m10 = _multilabel_split(result, features, train, test, eval_split, settings, 3,
                                 train_name=train_split)
    result.headline = {"mAP_voc07": m07, "mAP_voc10": m10,
                       "headline": "mAP_voc07" if reader.name == "voc2007" else "mAP_voc10"}
    if server:
        probe = _fit(settings, features.rows(full.ids, "trainval"), full.y, 3)
        scores = probe.decision_function(features.rows(test_ids, "split test"))
        result.chosen_C["trainval"] = dict(zip(result.classes, map(float, probe.C_), strict=True))
        _score_rows(result, "test", test_ids, scores)
        result.files += _write_server_files(
            out, "comp1_cls_test_{}.txt", result.classes, test_ids, scores,
            lambda i, s: f"{i} {s:.6f}\n",
        )
    return result


# --------------------------------------------------------------------------------------
# VOC 2012 action classification
# --------------------------------------------------------------------------------------


def _action_X(features: Features, box_ids, with_boxes: bool, what: str) -> np.ndarray:
    """Image descriptor of each person's image, stacked with the person box's own (ii)."""
    image_X = features.rows([b.split("#")[0] for b in box_ids], what)
    if not with_boxes:
        return image_X
    box_X = features.rows(box_ids, what, boxes=True)
    stacked = np.concatenate([image_X, box_X], axis=1)
    return stacked / np.linalg.norm(stacked, axis=1, keepdims=True)


def voc_action(reader, features: Features, settings: Settings, out=None) -> Result:
    """(i) whole-image descriptors; (ii) whole-image and person-box descriptors stacked.

    SVMs on train, AP per action on val; with test persons present, trainval -> test
    server files ``comp9_action_test_<action>.txt`` (``<id> <objidx> <score>``) for the
    best variant available.
    """
    variants = ["image"] + (["image+box"] if features.box_ids is not None else [])
    result = Result(reader.name, f"SVMs on train, AP on val; variants: {', '.join(variants)}",
                    reader.classes)
    train, val = reader.labels("train"), reader.labels("val")
    server = "test" in reader.splits()
    inputs = {}
    for variant in variants:  # every lookup before any fitting
        boxes = variant == "image+box"
        inputs[variant] = [_action_X(features, lab.ids, boxes, f"voc2012-action {name}")
                           for name, lab in (("train", train), ("val", val))]
        if server:
            _action_X(features, reader.split_ids("test"), boxes, "voc2012-action test")
    for variant in variants:
        train_X, val_X = inputs[variant]
        m07, m10 = _multilabel_split(result, features, train, val, f"val:{variant}", settings,
                                     3, train_X, val_X)
        result.headline[f"mAP_voc10[{variant}]"] = m10
        result.headline[f"mAP_voc07[{variant}]"] = m07
    result.headline["headline"] = f"mAP_voc10[{variants[-1]}]"
    if server:
        full = _trainval(reader)
        test_ids = reader.split_ids("test")
        boxes = variants[-1] == "image+box"
        probe = _fit(settings, _action_X(features, full.ids, boxes, "trainval"), full.y, 3)
        scores = probe.decision_function(_action_X(features, test_ids, boxes, "test"))
        _score_rows(result, f"test:{variants[-1]}", test_ids, scores)
        result.files += _write_server_files(
            out, "comp9_action_test_{}.txt", result.classes, test_ids, scores,
            lambda i, s: "{} {} {:.6f}\n".format(*i.split("#"), s),
        )
    return result


# --------------------------------------------------------------------------------------
# Caltech-101 / 256 and custom multi-class data: repeated seeded splits
# --------------------------------------------------------------------------------------


def draw_splits(labels: Labels, n_train, n_test, n_splits: int, seed: int,
                test_fraction: float | None = None) -> list[dict[str, str]]:
    """Seeded per-class random splits: ``[{id: "train" | "test"}, ...]``, one per split.

    Split s shuffles each class with seed ``seed + s``; the first ``n_train`` images train,
    the next ``n_test`` (all the rest when None) test. With ``test_fraction``, that
    fraction of each class (at least one image) is the test set instead.
    """
    y = labels.single_label()
    ids = np.asarray(labels.ids)
    splits = []
    for s in range(n_splits):
        rng = np.random.default_rng(seed + s)
        assign = {}
        for k, name in enumerate(labels.classes):
            members = ids[y == k]
            order = members[rng.permutation(len(members))]
            if test_fraction is not None:
                n_te = max(1, int(round(test_fraction * len(order))))
                train_part, test_part = order[n_te:], order[:n_te]
            else:
                if len(order) <= n_train:
                    raise EvaluationInputError(
                        f"class {name} has {len(order)} images, but the protocol trains on "
                        f"{n_train} per class and needs at least one more to test"
                    )
                train_part = order[:n_train]
                test_part = order[n_train:] if n_test is None else order[n_train:n_train + n_test]
            if len(train_part) == 0:
                raise EvaluationInputError(f"class {name} has too few images to train on")
            assign.update({i: "train" for i in train_part})
            assign.update({i: "test" for i in test_part})
        splits.append(assign)
    return splits


def write_splits(path: Path, splits: list[dict[str, str]], labels: Labels) -> Path:
    """``split,id,class,subset`` rows, so a run can be repeated exactly (`read_splits`).

    ``class`` lists the image's classes (separated by ``;`` for multi-label data)."""
    class_of = {i: ";".join(labels.classes[k] for k in np.flatnonzero(row == 1))
                for i, row in zip(labels.ids, labels.y, strict=True)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.open_text(path, newline="") as fh:  # whole or absent, even if killed
        writer = csv.writer(fh)
        writer.writerow(["split", "id", "class", "subset"])
        for s, assign in enumerate(splits):
            for sample_id in sorted(assign):
                writer.writerow([s, sample_id, class_of[sample_id], assign[sample_id]])
    return path


def read_splits(path: Path, labels: Labels) -> list[dict[str, str]]:
    """Splits written by `write_splits`, checked against the dataset's images."""
    known = set(labels.ids)
    splits: dict[int, dict[str, str]] = {}
    with Path(path).open(newline="") as fh:
        for lineno, row in enumerate(csv.DictReader(fh), start=2):
            if row.get("subset") not in ("train", "test") or row.get("id") not in known \
                    or not str(row.get("split", "")).strip().isdigit():
                raise EvaluationInputError(
                    f"{path}, line {lineno}: expected split,id,class,subset with a split "
                    f"number, an id of this dataset and subset train or test; found {row}"
                )
            splits.setdefault(int(row["split"]), {})[row["id"]] = row["subset"]
    return [splits[s] for s in sorted(splits)]


def _multiclass_splits(result: Result, reader, features, settings, splits) -> None:
    labels = reader.labels()
    y_all = labels.single_label()
    index = {i: k for k, i in enumerate(labels.ids)}
    recalls, accuracies, chosen = [], [], []
    plans = []
    for s, assign in enumerate(splits):  # all lookups before fitting
        train = [i for i in labels.ids if assign.get(i) == "train"]
        test = [i for i in labels.ids if assign.get(i) == "test"]
        plans.append((train, test, features.rows(train, f"split {s} (train)"),
                      features.rows(test, f"split {s} (test)")))
    for s, (train, test, train_X, test_X) in enumerate(plans):
        y_train = y_all[[index[i] for i in train]]
        y_test = y_all[[index[i] for i in test]]
        onehot = np.where(y_train[:, None] == np.arange(len(labels.classes)), 1, -1)
        _check_positives(onehot, labels.classes, f"{reader.name} training images of split {s}")
        probe = _fit(settings, train_X, y_train, MULTICLASS_FOLDS)
        scores = probe.decision_function(test_X)
        scores = scores[:, None] if scores.ndim == 1 else scores
        if len(probe.classes_) == 2:  # one SVM: class 1 vs class 0 as two columns
            scores = np.concatenate([-scores, scores], axis=1)
        predicted = np.argmax(scores, axis=1)
        per_class = per_class_recall(y_test, predicted, range(len(labels.classes)))
        C = probe.C_ if len(probe.C_) == len(labels.classes) else np.repeat(probe.C_, 2)
        result.chosen_C[str(s)] = dict(zip(labels.classes, map(float, C), strict=True))
        # One C for all classes (shared selection): one number per split (a single-C
        # per-class fit, e.g. --C with one value, is the same).
        chosen.append(float(C[0]) if np.all(C == C[0]) else None)
        for k, name in enumerate(labels.classes):
            result.rows.append({"split": s, "class": name, "C": float(C[k]),
                                "n_train": int((y_train == k).sum()),
                                "n_test": int((y_test == k).sum()), "recall": per_class[k]})
        recalls.append(mean_class_recall(y_test, predicted))
        accuracies.append(float(np.mean(predicted == y_test)))
        _score_rows(result, str(s), test, scores, [labels.classes[k] for k in y_test])
    ddof = 1 if len(recalls) > 1 else 0
    result.headline = {
        "mean_class_recall": float(np.mean(recalls)),
        "mean_class_recall_std": float(np.std(recalls, ddof=ddof)),
        "mean_class_recall_per_split": recalls,
        "accuracy": float(np.mean(accuracies)),
        "accuracy_std": float(np.std(accuracies, ddof=ddof)),
        "accuracy_per_split": accuracies,
        "C_per_split": chosen,
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
    result = Result(reader.name, f"{settings.n_splits} splits, {n_train} train / "
                    f"{n_test or 'rest'} test per class", reader.classes)
    labels = reader.labels()
    if settings.splits_file:
        splits = read_splits(settings.splits_file, labels)
        result.protocol += f" (read from {settings.splits_file})"
    else:
        splits = draw_splits(labels, n_train, n_test, settings.n_splits, settings.seed)
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
    result = Result(reader.name, "", reader.classes)
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
        splits = draw_splits(labels, n_train, n_test, settings.n_splits, settings.seed)
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
        maps.append(_multilabel_split(result, features, part["train"], part["test"], str(s),
                                      settings, 3, train_name=f"split {s} training")[1])
    result.headline = {"mAP_voc10": float(np.mean(maps)),
                       "mAP_voc10_std": float(np.std(maps, ddof=1 if len(maps) > 1 else 0)),
                       "headline": "mAP_voc10"}
    return result


PROTOCOLS = {
    "voc2007": voc_classification,
    "voc2012": voc_classification,
    "voc2012-action": voc_action,
    "caltech101": caltech,
    "caltech256": caltech,
    "folder": custom,
    "csv": custom,
}


def run_protocol(reader: DatasetReader, features: Features, settings: Settings | None = None,
                 out=None) -> Result:
    """Evaluate `features` on `reader`'s dataset with its protocol (see `PROTOCOLS`; a
    reader may name another dataset's protocol in ``reader.protocol``, as labels stored in
    a cache by the Python API use the folder/csv one)."""
    protocol = PROTOCOLS[getattr(reader, "protocol", None) or reader.name]
    return protocol(reader, features, settings or Settings(), None if out is None else Path(out))
