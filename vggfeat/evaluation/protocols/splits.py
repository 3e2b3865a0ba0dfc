"""Seeded per-class train/test splits: drawn, written as splits.csv, read back."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from vggfeat.data.readers import Labels
from vggfeat.evaluation.inputs import EvaluationInputError
from vggfeat.utils import atomic
from vggfeat.utils.tables import csv_rows


def draw_splits(labels: Labels, n_train, n_test, n_splits: int, seed: int,
                test_fraction: float | None = None,
                test_from: int | None = None) -> list[dict[str, str]]:
    """Seeded per-class random splits: ``[{id: "train" | "test"}, ...]``, one per split.

    Split s shuffles each class with seed ``seed + s``; the first ``n_train`` images train,
    the next ``n_test`` (all the rest when None) test. With ``test_fraction``, that
    fraction of each class (at least one image) is the test set instead. With
    ``test_from`` (a learning curve's largest training size), the test images are drawn
    after that many of each class instead of after ``n_train``: every size of the curve
    then trains on the first images of the same order and tests on the same images.
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
                first = n_train if test_from is None else max(test_from, n_train)
                if len(order) <= first:
                    raise EvaluationInputError(
                        f"class {name} has {len(order)} images, but the protocol trains on "
                        f"{first} per class and needs at least one more to test"
                    )
                train_part = order[:n_train]
                test_part = order[first:] if n_test is None else order[first:first + n_test]
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
    with csv_rows(path) as reader:  # a spreadsheet's BOM and CRLF too
        for lineno, row in enumerate(reader, start=2):
            if row.get("subset") not in ("train", "test") or row.get("id") not in known \
                    or not str(row.get("split", "")).strip().isdigit():
                raise EvaluationInputError(
                    f"{path}, line {lineno}: expected split,id,class,subset with a split "
                    f"number, an id of this dataset and subset train or test; found {row}"
                )
            splits.setdefault(int(row["split"]), {})[row["id"]] = row["subset"]
    return [splits[s] for s in sorted(splits)]
