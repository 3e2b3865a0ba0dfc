"""What an evaluation starts from: feature caches, checked, and the dataset they describe.

Everything here runs before any SVM is fitted, so bad input (non-finite descriptors,
caches of different datasets or images, a dataset that moved) fails in seconds with a
message naming the file and the fix.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vggfeat.data.readers import DatasetLayoutError, DatasetReader, open_dataset
from vggfeat.features.cache import (
    BOXES_GROUP,
    ROOT_GROUP,
    TOO_BIG_FIXES,
    CachedRows,
    CacheError,
    read_failed,
    read_overview,
)
from vggfeat.utils.errors import InputError
from vggfeat.utils.memory import refuse_unless_fits
from vggfeat.utils.row_order import move_to_front


class EvaluationInputError(InputError):
    """Input that cannot be evaluated; the message names the file and the fix."""


# Paper Table 11 nets: the cache's `arch` attribute -> the paper's name.
PAPER_NETS = {"vgg16": "D", "D": "D", "vgg19": "E", "E": "E"}


@dataclass
class Features:
    """Descriptor rows by id (images, and person boxes for voc2012-action).

    X and box_X are arrays, or `CachedRows` (as `load` gives them): rows read from
    the caches when asked for, so that an evaluation holds one split's training rows, not
    every descriptor, and scores its test rows a block at a time."""

    ids: list[str]
    X: np.ndarray | CachedRows
    sources: list[Path]
    box_ids: list[str] | None = None
    box_X: np.ndarray | CachedRows | None = None
    # X and box_X are this object's own (read from caches): `front` may move their rows.
    own_rows: bool = False
    _index: dict = field(default_factory=dict, repr=False)
    _finite: set = field(default_factory=set, repr=False)  # on-demand kinds checked

    def width(self, boxes: bool = False) -> int:
        """Columns of a descriptor row."""
        return (self.box_X if boxes else self.X).shape[1]

    def rows(self, ids, what: str, boxes: bool = False) -> np.ndarray:
        """Descriptors of `ids`, in that order (a copy); a clear error if any is missing."""
        source = self.box_X if boxes else self.X
        positions = self.positions(ids, what, boxes)
        if not isinstance(source, CachedRows):
            return source[positions]
        # Refused before the first read when they cannot fit, checked finite before any
        # row is used.
        refuse_unless_fits(4 * len(positions) * source.width, f"svm-eval: the {len(positions)}"
                           f" rows x {source.width} float32 of {what}", TOO_BIG_FIXES)
        self._check_finite(boxes)
        try:
            return source.read(positions)
        except CacheError as exc:
            raise EvaluationInputError(str(exc)) from exc

    def front(self, ids, what: str, boxes: bool = False) -> np.ndarray:
        """Descriptors of `ids`, in that order, as a view: with `own_rows`, the rows are moved
        to the front of X in place instead of copied (a split's training rows: 241 MiB less
        at Caltech-256 size) and ids and positions follow; else a copy, as `rows`. Rows read
        on demand are a new array, the caller's own (its rows free to move)."""
        X = self.box_X if boxes else self.X
        if isinstance(X, CachedRows):
            return self.rows(ids, what, boxes)
        positions = self.positions(ids, what, boxes)
        if not self.own_rows or not X.flags.writeable:
            return X[positions]
        source = move_to_front(X, positions)
        if boxes:
            self.box_ids = [self.box_ids[k] for k in source]
        else:
            self.ids = [self.ids[k] for k in source]
        self._index.pop("boxes" if boxes else "images", None)
        return X[:len(positions)]

    def close(self) -> None:
        """Close the caches rows are read from on demand (nothing for arrays)."""
        for source in (self.X, self.box_X):
            if isinstance(source, CachedRows):
                source.close()

    def check_finite(self) -> None:
        """Every row read on demand finite and undamaged (one pass over the stored rows), now:
        an evaluation calls it before its protocol writes anything (`rows` would, at the
        first rows it reads)."""
        for boxes in (False, True):
            if isinstance(self.box_X if boxes else self.X, CachedRows):
                self._check_finite(boxes)

    def _check_finite(self, boxes: bool) -> None:
        """Every row read on demand finite: one pass over the stored rows, once per kind."""
        kind = "boxes" if boxes else "images"
        if kind in self._finite:
            return
        source = self.box_X if boxes else self.X
        try:
            found = source.non_finite()
        except CacheError as exc:  # damaged rows
            raise EvaluationInputError(str(exc)) from exc
        for path, bad in found:
            raise EvaluationInputError(
                f"{path}: {len(bad)} {kind} descriptor(s) contain NaN or Inf (e.g. {bad[0]!r});"
                " the extraction went wrong: delete the file and rerun `vggfeat extract` (try "
                "--precision fp32)")
        self._finite.add(kind)

    def check(self, ids, what: str, boxes: bool = False) -> None:
        """Raise the error `rows` would, without copying any descriptor: the protocols
        check every split before the first fit, then copy one split's rows at a time."""
        self.positions(ids, what, boxes)

    def positions(self, ids, what: str, boxes: bool = False) -> np.ndarray:
        """Row numbers of `ids` in X (or box_X); a clear error if any is missing."""
        key = "boxes" if boxes else "images"
        if key not in self._index:
            self._index[key] = {i: k for k, i in enumerate(self.box_ids if boxes else self.ids)}
        index = self._index[key]
        missing = [i for i in ids if i not in index]
        if missing:
            files = ", ".join(str(p) for p in self.sources)
            raise EvaluationInputError(
                f"{len(missing)} {'box' if boxes else 'image'} id(s) of {what} have no "
                f"descriptor in {files} (e.g. {missing[0]!r}): `vggfeat extract` could not "
                "read them (see its failed-image report). Fix or remove those images and rerun "
                "`vggfeat extract` (it resumes), or, without --strict, svm-eval leaves them out"
            )
        return np.fromiter((index[i] for i in ids), dtype=np.int64, count=len(ids))


@dataclass(frozen=True)
class CacheInfo:
    path: Path
    dataset: str
    root: str
    arch: str
    layer: str
    scales: tuple[int, ...]
    reader_options: dict
    has_boxes: bool


def read_cache_info(path, layer: str | None = None) -> CacheInfo:
    """The attributes the evaluation needs from one feature cache; `layer` (default: the
    cache's first) must be one the cache holds."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationInputError(
            f"{path}: no such feature file; create it with `vggfeat extract`"
        )
    try:
        overview = read_overview(path, counts=False)
    except OSError as exc:
        raise EvaluationInputError(f"{path}: not a readable HDF5 feature cache ({exc})") from exc
    attrs = overview.attrs
    needed = ("dataset", "root", "reader_options")
    absent = [k for k in needed if k not in attrs]
    if absent:
        raise EvaluationInputError(
            f"{path}: not a vggfeat feature cache (attributes {absent} missing); "
            "create it with `vggfeat extract`"
        )

    def text(value):
        return value.decode() if isinstance(value, bytes) else str(value)

    return CacheInfo(
        path=path, dataset=text(attrs["dataset"]), root=text(attrs["root"]),
        arch=text(attrs.get("arch", "")), layer=_chosen_layer(path, overview, layer),
        scales=tuple(int(s) for s in np.atleast_1d(attrs.get("scales", []))),
        reader_options=json.loads(text(attrs["reader_options"]) or "{}"),
        has_boxes=overview.has_boxes,
    )


def _chosen_layer(path: Path, overview, layer: str | None) -> str:
    """`layer` if the cache holds it (else an error listing what it holds), or its first."""
    held = overview.layers
    if layer is None:
        return held[0] if held else ""
    if layer not in held:
        listed = ", ".join(held) or "one unnamed layer"
        raise EvaluationInputError(
            f"{path} holds no layer {layer!r} (it holds {listed}): choose one of those with "
            f"--layer, or extract {layer} with `vggfeat extract --layer`")
    return layer


def check_same_dataset(infos: list[CacheInfo]) -> None:
    """Stacked caches (e.g. Net-D and Net-E) must describe the same dataset."""
    first = infos[0]
    for info in infos[1:]:
        for name in ("dataset", "root", "reader_options"):
            a, b = getattr(first, name), getattr(info, name)
            if name == "root":
                a, b = str(Path(a).expanduser().resolve()), str(Path(b).expanduser().resolve())
            if a != b:
                raise EvaluationInputError(
                    f"{info.path} was extracted from {name} {getattr(info, name)!r} but "
                    f"{first.path} from {getattr(first, name)!r}: only caches of the same "
                    "images can be stacked"
                )


def open_reader(info: CacheInfo, root=None) -> DatasetReader:
    """The cache's dataset (from its attributes), optionally at a new `root`."""
    where = root or info.root
    try:
        return open_dataset(info.dataset, where, **info.reader_options)
    except DatasetLayoutError as exc:
        raise EvaluationInputError(
            f"{info.path} describes {info.dataset} at {where}, but that dataset cannot be read: "
            f"{exc}. If the dataset moved, pass its new location with --root."
        ) from exc


def load(paths, aggregate: str, *, block_l2: bool = False, layer: str | None = None,
         ) -> tuple[list[CacheInfo], Features]:
    """Open and check caches (same dataset, same images; `layer` as in `read_cache_info`):
    `Features` whose rows are read when asked for, checked finite before the first is used.
    Close them (`Features.close`) when done."""
    paths = [Path(p) for p in paths]
    infos = [read_cache_info(p, layer) for p in paths]
    check_same_dataset(infos)
    box_ids = box_X = None
    try:
        X = CachedRows(paths, aggregate, True, block_l2=block_l2, layer=layer)
        if all(info.has_boxes for info in infos):
            box_X = CachedRows(paths, aggregate, True, BOXES_GROUP, block_l2=block_l2,
                               layer=layer)
            box_ids = box_X.ids
    except CacheError as exc:
        raise EvaluationInputError(str(exc)) from exc
    return infos, Features(X.ids, X, paths, box_ids, box_X, own_rows=True)


# -- images without a descriptor (extract --skip-bad) ----------------------------------

# How many left-out ids a message names.
SHOWN_LEFT_OUT = 5


@dataclass(frozen=True)
class LeftOut:
    """Ids the dataset lists but the caches hold no descriptor of, with the reasons known."""

    ids: list[str]
    reasons: dict[str, str]

    def message(self) -> str:
        shown = ", ".join(f"{i} ({self.reasons[i]})" if i in self.reasons else i
                          for i in self.ids[:SHOWN_LEFT_OUT])
        more = f", ... ({len(self.ids)} in all)" if len(self.ids) > SHOWN_LEFT_OUT else ""
        return (f"{len(self.ids)} image(s) without a descriptor are left out of training and "
                f"scoring: {shown}{more}; fix or remove them and rerun `vggfeat extract` to "
                "include them, or pass --strict to refuse such caches")

    def record(self) -> dict:
        """What summary.json keeps: the count and every id with its reason."""
        return {"count": len(self.ids),
                "ids": {i: self.reasons.get(i, "no descriptor") for i in self.ids}}


class PresentOnly:
    """A dataset reader whose splits and labels list only the ids that have descriptors.

    Wraps the real reader (every other attribute is the reader's own), so the protocols
    run unchanged: an image that failed to decode is simply not in the dataset they see.
    """

    def __init__(self, reader, present):
        self._reader, self._present = reader, present

    def __getattr__(self, name):
        return getattr(self._reader, name)

    def labels(self, split: str | None = None):
        labels = self._reader.labels(split)
        if labels is None:
            return None
        keep = [k for k, i in enumerate(labels.ids) if self._present(i)]
        return type(labels)([labels.ids[k] for k in keep], labels.classes, labels.y[keep])

    def split_ids(self, split: str) -> list[str]:
        return [i for i in self._reader.split_ids(split) if self._present(i)]


def leave_out_missing(reader, features: Features, *, strict: bool = False):
    """(reader, LeftOut or None): the ids of `reader`'s splits without a descriptor left out.

    With `strict` the reader is returned as it is, so a missing descriptor stops the
    evaluation with the error that names it (`Features.rows`).
    """
    boxes = "#" if reader.name == "voc2012-action" else None
    image_ids = set(features.ids)
    box_ids = set(features.box_ids) if features.box_ids is not None else None

    def present(sample_id: str) -> bool:
        if boxes and boxes in sample_id:
            image = sample_id.split(boxes)[0]
            return image in image_ids and (box_ids is None or sample_id in box_ids)
        return sample_id in image_ids

    listed = _listed_ids(reader)
    missing = sorted(i for i in listed if not present(i))
    if strict or not missing:
        return reader, None
    return PresentOnly(reader, present), LeftOut(missing, _failure_reasons(features.sources))


def _listed_ids(reader) -> set[str]:
    """Every id the dataset's splits (or, without splits, its labels) list."""
    if not reader.splits():
        labels = reader.labels()
        return set(labels.ids) if labels is not None else set()
    return {i for split in reader.splits() for i in reader.split_ids(split)}


def _failure_reasons(paths) -> dict[str, str]:
    """id -> why extraction failed, from the caches' `failed` tables."""
    reasons = {}
    for path in paths:
        for group in (ROOT_GROUP, BOXES_GROUP):
            try:
                failed = read_failed(path, group)
            except (KeyError, OSError, ValueError):
                continue
            for sample_id, reason in failed:
                reasons.setdefault(sample_id, reason.splitlines()[0] if reason else "failed")
    return reasons
