"""What every dataset reader shares: samples, labels, the reader interface, and the
layout checks whose messages name the expected path and what was found there.

A reader only indexes files and parses label files; decoding and transforming images is
someone else's job (`vggfeat.data.images`, `vggfeat.data.transforms`). Every reader
validates its layout when it is opened, so a wrong or incomplete dataset fails at once
with the path that was expected and what was found there.

Label accessors (used by `vggfeat.evaluation.protocols`):

- ``reader.classes`` - class (or action) names, in a fixed order.
- ``reader.splits()`` - the named splits the dataset defines (``()`` for Caltech and
  split-less custom data: the protocol draws seeded splits itself).
- ``reader.labels(split=None)`` - a `Labels`: sample ids and an ``(n, n_classes)`` int8
  matrix in {1, 0, -1} (positive, difficult/ignored, negative), or ``None`` where the split
  has no public labels (VOC 2012 test).
- ``reader.split_ids(split)`` - the ids of a split, labelled or not.
- ``reader.multi_label`` - whether an image may carry several classes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vggfeat.utils.errors import InputError

VOC_SCALES = (256, 384, 512, 640, 768)
CALTECH_SCALES = (256, 384, 512)
SPLIT_NAMES = ("train", "val", "test")


class DatasetLayoutError(InputError):
    """A dataset folder does not have the layout its reader expects."""


@dataclass(frozen=True)
class Sample:
    """One image (or one person box in an image) of a dataset.

    ``id`` is unique in the dataset: the VOC image id, the path relative to the dataset
    root for folder/Caltech/csv data, or ``"<image id>#<objidx>"`` for an action box.
    ``box`` is a 0-based pixel box ``(x0, y0, x1, y1)`` with exclusive end, or None.
    """

    id: str
    path: Path
    box: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class Labels:
    """Ground truth of one split: ``y[i, k]`` is 1, 0 (difficult, ignored) or -1."""

    ids: list[str]
    classes: tuple[str, ...]
    y: np.ndarray = field(repr=False)

    def single_label(self) -> np.ndarray:
        """Class index per sample, for data where each sample has exactly one class."""
        counts = (self.y == 1).sum(axis=1)
        if not np.all(counts == 1):
            raise ValueError("these labels are multi-label; use the label matrix instead")
        return np.argmax(self.y == 1, axis=1)


def listing(path: Path, limit: int = 8) -> str:
    """Describe what is at `path`, for error messages."""
    if not path.exists():
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        return f"{path} does not exist (nearest existing folder: {parent})"
    if not path.is_dir():
        return f"{path} is a file, not a folder"
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    more = f", ... ({len(names)} entries)" if len(names) > limit else ""
    shown = ", ".join(names[:limit]) + more
    return f"{path} contains: {shown or 'nothing'}"


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetLayoutError(f"expected {what} at {path}; {listing(path)}")
    return path


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DatasetLayoutError(f"expected {what} at {path}; {listing(path.parent)}")
    return path


def read_columns(path: Path, min_cols: int) -> list[list[str]]:
    """Whitespace-separated rows of a devkit text file, blank lines skipped."""
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < min_cols:
            raise DatasetLayoutError(
                f"{path}, line {lineno}: expected {min_cols} columns, found {line!r}"
            )
        rows.append(parts)
    return rows


def one_hot_labels(ids: list[str], classes: tuple[str, ...],
                   label_of: dict[str, list[str]]) -> Labels:
    """Labels with 1 for each sample's classes and -1 elsewhere."""
    index = {c: k for k, c in enumerate(classes)}
    y = -np.ones((len(ids), len(classes)), dtype=np.int8)
    for row, sample_id in enumerate(ids):
        for name in label_of[sample_id]:
            y[row, index[name]] = 1
    return Labels(list(ids), classes, y)


class DatasetReader:
    """Base class: a dataset root, its options and its images."""

    name = ""
    default_scales: tuple[int, ...] = CALTECH_SCALES
    # How per-scale descriptors are combined by default (paper Appendix B, Table 11's protocols).
    default_aggregate = "avg"
    multi_label = False
    allowed_options: tuple[str, ...] = ()

    def __init__(self, root, **options):
        unknown = sorted(set(options) - set(self.allowed_options))
        if unknown:
            raise ValueError(
                f"dataset {self.name!r} has no option(s) {unknown}; "
                f"allowed: {list(self.allowed_options) or 'none'}"
            )
        self.root = Path(root).expanduser().resolve()
        self.options = dict(options)
        self.classes: tuple[str, ...] = ()

    def images(self) -> list[Sample]:
        """Every image the protocol needs, unique ids, sorted by id."""
        raise NotImplementedError

    def boxes(self) -> list[Sample]:
        """Person boxes (voc2012-action only); empty for other datasets."""
        return []

    def splits(self) -> tuple[str, ...]:
        """Named splits defined by the dataset; empty when the protocol draws its own."""
        return ()

    def split_ids(self, split: str) -> list[str]:
        labels = self.labels(split)
        if labels is None:
            raise DatasetLayoutError(f"{self.root}: no split {split!r}")
        return labels.ids

    def labels(self, split: str | None = None) -> Labels | None:
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}(root={str(self.root)!r}, options={self.options})"
