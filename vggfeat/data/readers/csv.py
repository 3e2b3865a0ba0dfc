"""Labels given as tables: a CSV file of paths and labels, or the labels stored in a cache."""
from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np

from vggfeat.data.readers.base import (
    SPLIT_NAMES,
    DatasetLayoutError,
    DatasetReader,
    Labels,
    Sample,
    one_hot_labels,
    require_file,
)
from vggfeat.utils.tables import csv_rows


class CSVReader(DatasetReader):
    """Custom data listed in a CSV file with a header row.

    Columns: ``path`` (relative to the CSV's folder, or absolute), then ``label`` (a path
    may appear on several rows for several labels) or ``labels`` (separated by ``;``), and
    optionally ``split`` (train, val or test; val joins training). ``root`` is the CSV file,
    or a folder holding ``labels.csv`` (option ``csv`` names another file in it).
    """

    name = "csv"
    allowed_options = ("csv",)

    def __init__(self, root, **options):
        super().__init__(root, **options)
        self.csv_path = self.root
        if self.root.is_dir():
            self.csv_path = self.root / options.get("csv", "labels.csv")
        require_file(self.csv_path, "a CSV file with columns path,label[,split]")
        self.base = self.csv_path.parent
        self._label_of: dict[str, list[str]] = {}
        self._path_of: dict[str, Path] = {}
        self._split_of: dict[str, str] = {}
        self._read()
        self.classes = tuple(sorted({c for labels in self._label_of.values() for c in labels}))
        if len(self.classes) < 2:
            raise DatasetLayoutError(f"{self.csv_path}: need at least two classes")
        self.multi_label = any(len(v) != 1 for v in self._label_of.values())

    def _read(self) -> None:
        with csv_rows(self.csv_path) as reader:  # a spreadsheet's BOM and CRLF too
            header = [h.strip() for h in (reader.fieldnames or [])]
            label_col = "labels" if "labels" in header else "label"
            if "path" not in header or label_col not in header:
                raise DatasetLayoutError(
                    f"{self.csv_path}: expected a header with columns path,label[,split] "
                    f"(or labels separated by ';'); found {header}"
                )
            for lineno, row in enumerate(reader, start=2):
                row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
                self._add_row(row, label_col, lineno)
        if not self._label_of:
            raise DatasetLayoutError(f"{self.csv_path}: no rows")
        if self._split_of and len(self._split_of) != len(self._label_of):
            raise DatasetLayoutError(f"{self.csv_path}: the split column is empty on some rows")

    def _add_row(self, row: dict, label_col: str, lineno: int) -> None:
        where = f"{self.csv_path}, line {lineno}"
        sample_id = PurePosixPath(row["path"].replace("\\", "/")).as_posix()
        labels = [x.strip() for x in row[label_col].split(";") if x.strip()]
        if not sample_id or not labels:
            raise DatasetLayoutError(f"{where}: empty path or label")
        path = Path(sample_id) if Path(sample_id).is_absolute() else self.base / sample_id
        if not path.is_file():
            raise DatasetLayoutError(f"{where}: image {path} does not exist")
        split = row.get("split", "")
        if split:
            if split not in SPLIT_NAMES:
                raise DatasetLayoutError(
                    f"{where}: split must be one of {SPLIT_NAMES}, not {split!r}"
                )
            if self._split_of.setdefault(sample_id, split) != split:
                raise DatasetLayoutError(f"{where}: {sample_id} is in two splits")
        known = self._label_of.setdefault(sample_id, [])
        known += [c for c in labels if c not in known]
        self._path_of[sample_id] = path

    def images(self) -> list[Sample]:
        return [Sample(i, self._path_of[i]) for i in sorted(self._label_of)]

    def splits(self) -> tuple[str, ...]:
        return tuple(s for s in SPLIT_NAMES if s in set(self._split_of.values()))

    def split_ids(self, split: str) -> list[str]:
        ids = sorted(i for i, s in self._split_of.items() if s == split)
        if not ids:
            raise DatasetLayoutError(f"{self.csv_path}: no rows with split {split!r}")
        return ids

    def labels(self, split: str | None = None) -> Labels | None:
        ids = sorted(self._label_of) if split is None else self.split_ids(split)
        return one_hot_labels(ids, self.classes, self._label_of)


class LabelTableReader(DatasetReader):
    """Labels given as a table rather than read from files: the labels that
    `extract_to_cache(..., labels=, splits=)` stores in a cache (ids are the items' ids).

    Evaluated with the folder/csv protocol (``protocol = "csv"``): the given train(+val) /
    test split when there is one, else seeded splits.
    """

    protocol = "csv"

    def __init__(self, name: str, root, ids, classes, y, splits=None):
        super().__init__(root or ".")
        self.name = name
        self.classes = tuple(classes)
        self._labels = Labels(list(ids), self.classes, np.asarray(y, dtype=np.int8))
        self._split_of = dict(zip(ids, splits, strict=True)) if splits is not None else {}
        self.multi_label = bool(((self._labels.y == 1).sum(axis=1) != 1).any())

    def images(self) -> list[Sample]:
        return [Sample(i, Path(i)) for i in self._labels.ids]

    def splits(self) -> tuple[str, ...]:
        return tuple(s for s in SPLIT_NAMES if s in set(self._split_of.values()))

    def split_ids(self, split: str) -> list[str]:
        ids = [i for i in self._labels.ids if self._split_of.get(i) == split]
        if not ids:
            raise DatasetLayoutError(f"{self.name}: no items with split {split!r}")
        return ids

    def labels(self, split: str | None = None) -> Labels | None:
        if split is None:
            return self._labels
        keep = set(self.split_ids(split))
        rows = [k for k, i in enumerate(self._labels.ids) if i in keep]
        return Labels([self._labels.ids[k] for k in rows], self.classes, self._labels.y[rows])
