"""What an evaluation starts from: feature caches, checked, and the dataset they describe.

Everything here runs before any SVM is fitted, so bad input (non-finite descriptors,
caches of different datasets or images, a dataset that moved) fails in seconds with a
message naming the file and the fix.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from vggfeat.data.readers import DatasetLayoutError, DatasetReader, open_dataset


class EvaluationInputError(ValueError):
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
    _index: dict = field(default_factory=dict, repr=False)

    def rows(self, ids, what: str, boxes: bool = False) -> np.ndarray:
        """Descriptors of `ids`, in that order; a clear error if any is missing."""
        key = "boxes" if boxes else "images"
        if key not in self._index:
            self._index[key] = {i: k for k, i in enumerate(self.box_ids if boxes else self.ids)}
        index = self._index[key]
        missing = [i for i in ids if i not in index]
        if missing:
            files = ", ".join(str(p) for p in self.sources)
            raise EvaluationInputError(
                f"{len(missing)} {'box' if boxes else 'image'} id(s) of {what} have no "
                f"descriptor in {files} (e.g. {missing[0]!r}); rerun `vggfeat extract` on "
                "this dataset (it resumes) and check its failed-image report"
            )
        return (self.box_X if boxes else self.X)[[index[i] for i in ids]]


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


def read_cache_info(path) -> CacheInfo:
    """The attributes the evaluation needs from one feature cache."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationInputError(
            f"{path}: no such feature file; create it with `vggfeat extract`"
        )
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
            has_boxes = "boxes" in f
    except OSError as exc:
        raise EvaluationInputError(f"{path}: not a readable HDF5 feature cache ({exc})") from exc
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
        arch=text(attrs.get("arch", "")), layer=text(attrs.get("layer", "")),
        scales=tuple(int(s) for s in np.atleast_1d(attrs.get("scales", []))),
        reader_options=json.loads(text(attrs["reader_options"]) or "{}"),
        has_boxes=has_boxes,
    )


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


def load(paths, aggregate: str, *, block_l2: bool = False) -> tuple[list[CacheInfo], Features]:
    """Read and check caches: same dataset, same images, finite descriptors."""
    from vggfeat.features.cache import CacheError, load_features

    paths = [Path(p) for p in paths]
    infos = [read_cache_info(p) for p in paths]
    check_same_dataset(infos)
    try:
        ids, X = load_features(paths, aggregate=aggregate, l2=True, block_l2=block_l2)
        box_ids = box_X = None
        if all(info.has_boxes for info in infos):
            box_ids, box_X = load_features(paths, aggregate=aggregate, l2=True,
                                           block_l2=block_l2, group="boxes")
    except CacheError as exc:
        raise EvaluationInputError(str(exc)) from exc
    for name, block in (("images", X), ("boxes", box_X)):
        if block is not None and not np.isfinite(block).all():
            raise EvaluationInputError(_non_finite_message(paths, aggregate, name))
    return infos, Features(ids, X, paths, box_ids, box_X)


def _non_finite_message(paths, aggregate, name) -> str:
    from vggfeat.features.cache import read_descriptors

    for path in paths:
        ids, raw = read_descriptors(path, None if name == "images" else "boxes")
        bad = ~np.isfinite(raw).reshape(len(raw), -1).all(axis=1)
        if bad.any():
            first = ids[int(np.flatnonzero(bad)[0])]
            return (
                f"{path}: {int(bad.sum())} {name} descriptor(s) contain NaN or Inf "
                f"(e.g. {first!r}); the extraction went wrong: delete the file and rerun "
                "`vggfeat extract` (try --precision fp32)"
            )
    return f"{', '.join(map(str, paths))}: descriptors are not finite after {aggregate} + L2"
