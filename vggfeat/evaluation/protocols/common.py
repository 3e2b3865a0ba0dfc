"""What every protocol shares: its settings, its `Result`, and the steps from labels and
descriptors to fitted probes (SVMs, logistic regression or kNN: `fit_probe`) and scored
rows."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vggfeat.data.readers import Labels
from vggfeat.evaluation.inputs import EvaluationInputError
from vggfeat.evaluation.metrics import precision_recall, voc07_ap, voc_ap
from vggfeat.evaluation.probes import HYPERPARAMETER, K_GRID, chosen_values, make_probe
from vggfeat.evaluation.svm import C_GRID
from vggfeat.utils import atomic


@dataclass
class Settings:
    """How to fit and split. ``cv=None`` uses the protocol's default (VOC: 3 folds of the
    training images, C per class; Caltech and custom multi-class: 5 stratified folds, one
    C for all classes). ``probe``: "svm", "logreg" (grid ``C``) or "knn" (grid ``k``).
    ``test_from``: a learning curve's largest training size; each class's test images are
    drawn after that many, so every size of the curve is tested on the same images."""

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
    probe: str = "svm"
    k: tuple[int, ...] = K_GRID
    test_from: int | None = None

    def build_probe(self, default_cv):
        return make_probe(
            self.probe, C=self.C, k=self.k, cv=default_cv if self.cv is None else self.cv,
            solver=self.solver, device=self.device, difficult=self.difficult,
            random_state=self.seed, verbose=self.verbose,
        )

    @property
    def grid(self) -> tuple:
        """The values the probe's hyper-parameter is chosen from."""
        return self.k if self.probe == "knn" else self.C


@dataclass
class ScoreBlock:
    """One split's scored samples: ids, true labels (None where the split has no public
    labels) and (n, K) float64 decision values, one column per class."""

    split: str
    ids: list[str]
    truth: list[str] | None
    values: np.ndarray


@dataclass
class Result:
    """What a protocol measured.

    ``rows``: one dict per class and split (results.csv). ``headline``: the dataset's
    metric(s). ``chosen_C``: split -> class -> the chosen value of the probe's
    hyper-parameter (``hyperparameter``: C, or k for ``probe`` "knn"). ``scores``: one
    dict per test sample and split with the decision value of each class (scores.csv).
    ``score_blocks``: the same per split as arrays.
    ``curves``: split -> class -> (precision, recall). ``files``: server submission files
    and split lists written.
    """

    dataset: str
    protocol: str
    classes: tuple[str, ...]
    rows: list[dict] = field(default_factory=list)
    headline: dict = field(default_factory=dict)
    chosen_C: dict = field(default_factory=dict)
    score_blocks: list[ScoreBlock] = field(default_factory=list)
    curves: dict = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    probe: str = "svm"
    hyperparameter: str = "C"

    @property
    def scores(self) -> list[dict]:
        """scores.csv's rows as dicts (split, id, true, one value per class): built on
        demand from `score_blocks`, which hold them as arrays (a few bytes per value
        rather than a Python dict per row)."""
        return [{"split": b.split, "id": sample_id, "true": "" if b.truth is None else b.truth[i],
                 **{c: float(b.values[i, k]) for k, c in enumerate(self.classes)}}
                for b in self.score_blocks for i, sample_id in enumerate(b.ids)]


def check_positives(y: np.ndarray, classes, where: str) -> None:
    """Refuse training labels (one column per class) where a class has no positive."""
    empty = [classes[k] for k in range(y.shape[1]) if not (y[:, k] == 1).any()]
    if empty:
        raise EvaluationInputError(
            f"{where}: class(es) {', '.join(empty)} have no positive training example; "
            "an SVM cannot be trained for them (check the split files / labels, or drop the "
            "class from the dataset)"
        )


def new_result(dataset: str, protocol: str, classes, settings: Settings) -> Result:
    """An empty `Result` that knows the probe it reports."""
    return Result(dataset, protocol, classes, probe=settings.probe,
                  hyperparameter=HYPERPARAMETER[settings.probe])


def fit_probe(settings: Settings, X, y, default_cv, copy_X=True):
    """The probe `settings` describe, fitted (`default_cv`: the protocol's folds;
    ``copy_X=False``: X's rows may move during the fit, as `LinearSVMProbe` says)."""
    _check_folds(settings, y, default_cv)
    probe = settings.build_probe(default_cv)
    if not copy_X and "copy_X" in probe.get_params():
        probe.set_params(copy_X=False)
    return probe.fit(X, y)


# Rows scored at a time: the probe converts them to float64 (2x their float32 bytes), so
# scoring holds a block, not the whole test set twice. Never fewer than this many rows:
# BLAS takes another path for a handful of rows, whose last bits differ, whereas blocks of
# a thousand rows or more give the whole matrix's numbers exactly.
SCORE_BLOCK_BYTES = 64 * 2**20
SCORE_BLOCK_MIN_ROWS = 1024


def decision_values(probe, features, ids, what: str, boxes: bool = False) -> np.ndarray:
    """`probe.decision_function` of the rows of `ids`, copied and scored a block at a time
    (each sample's value depends on its own row only)."""
    width = features.width(boxes)
    rows = max(SCORE_BLOCK_MIN_ROWS, SCORE_BLOCK_BYTES // (8 * max(1, width)))
    blocks = max(1, len(ids) // rows)  # equal blocks of at least `rows` rows
    bounds = np.linspace(0, len(ids), blocks + 1).astype(int)
    return np.concatenate([probe.decision_function(features.rows(ids[a:b], what, boxes))
                           for a, b in zip(bounds[:-1], bounds[1:], strict=True)])


def record_chosen(result: Result, split: str, values) -> None:
    """The chosen hyper-parameter of each class (k as an int, C as a float)."""
    kind = int if result.hyperparameter == "k" else float
    result.chosen_C[split] = dict(zip(result.classes, map(kind, values), strict=True))


def _check_folds(settings: Settings, y, default_cv) -> None:
    """k-fold selection of C needs every class in every fold: at least k positives each."""
    cv = settings.cv  # the protocols' defaults fall back to unstratified folds instead
    if cv is None or isinstance(cv, float) or len(settings.grid) < 2:
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


def result_value(result: Result, value):
    """A chosen value as results.csv writes it (k an int, C a float)."""
    return int(value) if result.hyperparameter == "k" else float(value)


def _true_labels(y: np.ndarray, classes) -> list[str]:
    """Each row's positive classes joined by ';' (one name for multi-class data); a VOC
    "difficult" class (0) is written with a trailing '?'."""
    return [";".join([classes[k] for k in np.flatnonzero(row == 1)]
                     + [f"{classes[k]}?" for k in np.flatnonzero(row == 0)]) for row in y]


def score_rows(result: Result, split: str, ids, scores: np.ndarray, truth=None) -> None:
    """One scores.csv row per sample: split, id, its true label(s) ('' where the split has
    no public labels) and the decision value of every class."""
    values = np.array(scores, dtype=np.float64)  # a copy; float32 widens without rounding
    result.score_blocks.append(ScoreBlock(split, list(ids), None if truth is None
                                          else list(truth), values))


def _ap_rows(result: Result, split: str, scores: np.ndarray, y: np.ndarray, C) -> tuple:
    """Both AP variants per class; returns (mAP VOC07, mAP VOC2010+) over scored classes."""
    ap07, ap10 = [], []
    result.curves[split] = {}
    for k, name in enumerate(result.classes):
        row = {"split": split, "class": name, result.hyperparameter: result_value(result, C[k]),
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


def multilabel_split(result, features, train: Labels, test: Labels, split, settings,
                      default_cv, train_X=None, test_X=None, train_name="train") -> tuple:
    """Fit on `train`, score `test` (reported as `split`) with both AP variants."""
    if train_X is None:  # both checked before the fit, copied one at a time
        features.check(train.ids, f"split {split} (training)")
    if test_X is None:
        features.check(test.ids, f"split {split} (test)")
    copy_X = train_X is not None or not features.own_rows  # our own rows may move
    if train_X is None:  # a view of the rows moved to the front where features own them
        train_X = features.front(train.ids, f"split {split} (training)")
    check_positives(train.y, result.classes, f"{result.dataset} {train_name} images")
    probe = fit_probe(settings, train_X, train.y, default_cv, copy_X)
    del train_X  # a copy of the training rows is freed before the test rows are scored
    scores = decision_values(probe, features, test.ids, f"split {split} (test)") \
        if test_X is None else probe.decision_function(test_X)
    record_chosen(result, split, chosen_values(probe))
    score_rows(result, split, test.ids, scores, _true_labels(test.y, result.classes))
    return _ap_rows(result, split, scores, test.y, chosen_values(probe))


def trainval_labels(reader) -> Labels:
    """The trainval labels, or train and val joined where no trainval files exist."""
    if "trainval" in reader.splits():
        return reader.labels("trainval")
    train, val = reader.labels("train"), reader.labels("val")
    ids = train.ids + val.ids
    order = np.argsort(ids, kind="stable")
    return Labels([ids[i] for i in order], train.classes,
                  np.concatenate([train.y, val.y])[order])


def write_server_files(out: Path | None, pattern: str, classes, ids, scores, line) -> list:
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
