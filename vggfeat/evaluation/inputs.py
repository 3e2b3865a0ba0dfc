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
    CacheError,
    load_features,
    read_descriptors,
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
    """Descriptor rows by id (images, and person boxes for voc2012-action)."""

    ids: list[str]
    X: np.ndarray
    sources: list[Path]
    box_ids: list[str] | None = None
    box_X: np.ndarray | None = None
    # X and box_X are this object's own (read from caches): `front` may move their rows.
    own_rows: bool = False
    _index: dict = field(default_factory=dict, repr=False)

    def rows(self, ids, what: str, boxes: bool = False) -> np.ndarray:
        """Descriptors of `ids`, in that order (a copy); a clear error if any is missing."""
        return (self.box_X if boxes else self.X)[self.positions(ids, what, boxes)]

    def front(self, ids, what: str, boxes: bool = False) -> np.ndarray:
        """Descriptors of `ids`, in that order, as a view: with `own_rows`, the rows are moved
        to the front of X in place instead of copied (a split's training rows: 241 MiB less
        at Caltech-256 size) and ids and positions follow; else a copy, as `rows`."""
        X = self.box_X if boxes else self.X
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
    """Read and check caches: same dataset, same images, finite descriptors; `layer` as in
    `read_cache_info`."""
    paths = [Path(p) for p in paths]
    infos = [read_cache_info(p, layer) for p in paths]
    check_same_dataset(infos)
    refuse_unless_fits(fit_bytes(paths, aggregate, layer), f"svm-eval on {paths[0]}",
                       TOO_BIG_FIXES)
    try:
        ids, X = load_features(paths, aggregate=aggregate, l2=True, block_l2=block_l2,
                               layer=layer)
        box_ids = box_X = None
        if all(info.has_boxes for info in infos):
            box_ids, box_X = load_features(paths, aggregate=aggregate, l2=True, layer=layer,
                                           block_l2=block_l2, group=BOXES_GROUP)
    except CacheError as exc:
        raise EvaluationInputError(str(exc)) from exc
    for name, block in (("images", X), ("boxes", box_X)):
        if block is not None and not _all_finite(block):
            raise EvaluationInputError(_non_finite_message(paths, aggregate, name, layer))
    return infos, Features(ids, X, paths, box_ids, box_X, own_rows=True)


# What svm-eval holds at its peak, in float32 descriptors: all of them (a split's and a
# fold's training rows are views of them, `Features.front`, `RowOrder`) and the solver's
# scratch, at least a quarter more (2.2-2.4x measured at Caltech-256 size, averaged scales,
# beside the process's fixed start). A lower bound: a run refused by it cannot fit.
FIT_MEMORY_FACTOR = 1.25


def fit_bytes(paths, aggregate: str, layer: str | None = None) -> int:
    """Memory an evaluation of `paths` needs at least (`FIT_MEMORY_FACTOR`), from the
    caches' headers, before anything is read."""
    rows, width = 0, 0
    for k, path in enumerate(paths):
        overview = read_overview(path)
        images = overview.counts.get("images", {})
        dim = overview.layer_dims.get(layer, images.get("dimension", 0)) if layer \
            else images.get("dimension", 0)
        width += dim * (images.get("scales", 1) if aggregate == "stack" else 1)
        rows = images.get("done", 0) if k == 0 else rows
    return int(FIT_MEMORY_FACTOR * 4 * rows * width)


def _all_finite(X: np.ndarray) -> bool:
    """np.isfinite(X).all() without a boolean array the size of X."""
    step = max(1, 2**22 // max(1, X.shape[1]))
    return all(np.isfinite(X[k:k + step]).all() for k in range(0, len(X), step))


def _non_finite_message(paths, aggregate, name, layer=None) -> str:
    for path in paths:
        ids, raw = read_descriptors(path, None if name == "images" else BOXES_GROUP, layer)
        bad = ~np.isfinite(raw).reshape(len(raw), -1).all(axis=1)
        if bad.any():
            first = ids[int(np.flatnonzero(bad)[0])]
            return (
                f"{path}: {int(bad.sum())} {name} descriptor(s) contain NaN or Inf "
                f"(e.g. {first!r}); the extraction went wrong: delete the file and rerun "
                "`vggfeat extract` (try --precision fp32)"
            )
    return f"{', '.join(map(str, paths))}: descriptors are not finite after {aggregate} + L2"


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
