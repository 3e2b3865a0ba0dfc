"""What a cache file holds, read without its descriptors: attributes, row counts, labels,
failures. The one place (besides the writer) that opens a cache to describe it."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import h5py

from vggfeat.features.cache.layout import (
    BOXES_GROUP,
    CLASSES_ATTR,
    LABELS,
    ROOT_GROUP,
    SPLITS,
    layer_rows,
    stored_layers,
    text,
)

# The names `Overview.counts` gives the row groups (as `vggfeat features info` shows them).
GROUP_LABELS = {ROOT_GROUP: "images", BOXES_GROUP: "boxes"}


@dataclass(frozen=True)
class Overview:
    """A cache file's header and row counts.

    attrs: the root attributes (byte strings decoded): dataset, root, arch, layer,
        weights_sha256, scales, flip, precision, dtype, preprocessing and reader_options
        (JSON), vggfeat_version, config and config_key.
    has_boxes: the file has the person-box group of voc2012-action.
    has_rows: the root group holds ids and descriptors (it is laid out as a cache).
    counts: "images" (and "boxes") -> rows, done, failed, pending, scales, dimension; only
        for groups with a done flag, and only when asked for.
    has_splits: `write_labels` stored train/val/test splits.
    failed_examples: (id, reason) of the first images of the root group that failed.
    layer_dims: layer -> descriptor length per scale, for every layer the file holds (only
        when counts are asked for).
    """

    attrs: dict
    has_boxes: bool
    has_rows: bool
    counts: dict = field(default_factory=dict)
    has_splits: bool = False
    failed_examples: list = field(default_factory=list)
    layer_dims: dict = field(default_factory=dict)

    @property
    def classes(self) -> list | None:
        """The class names stored by `write_labels`, or None."""
        stored = self.attrs.get(CLASSES_ATTR)
        return None if stored is None else json.loads(text(stored))

    @property
    def layers(self) -> list[str]:
        """The layers the cache holds, in order (one, except ``--layer a,b`` caches)."""
        return stored_layers(self.attrs)

    @property
    def rows(self) -> int:
        """Rows of the root group (0 when it has no done flag)."""
        return self.counts["images"]["rows"] if "images" in self.counts else 0

    @property
    def done(self) -> int:
        return self.counts["images"]["done"] if "images" in self.counts else 0


def read_overview(path: str | os.PathLike, *, counts: bool = True,
                  failed_examples: int = 0) -> Overview:
    """The `Overview` of the cache (or ``.partial``) at `path`.

    Raises OSError for a file HDF5 cannot open. With `counts` False only the attributes and
    the groups' names are read (nothing that a damaged row dataset could break).
    """
    with h5py.File(path, "r") as f:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        return Overview(
            attrs=attrs, has_boxes=BOXES_GROUP in f,
            has_rows="ids" in f and "descriptors" in f,
            counts=_counts(f) if counts else {}, has_splits=SPLITS in f,
            failed_examples=[(text(i), text(r)) for i, r in f["failed"][:failed_examples]]
            if failed_examples and "failed" in f else [],
            layer_dims=_layer_dims(f) if counts and "descriptors" in f else {})


def _layer_dims(f: h5py.File) -> dict:
    names = stored_layers(f.attrs) or [""]
    return {name: int(layer_rows(f, ROOT_GROUP, name if k else None).shape[2])
            for k, name in enumerate(names)}


def _counts(f: h5py.File) -> dict:
    out = {}
    for group in (ROOT_GROUP, BOXES_GROUP):
        g = f[group] if group in f else None
        if g is None or "done" not in g:
            continue
        done = g["done"][()]
        failed = len(g["failed"]) if "failed" in g else 0
        n = int(done.shape[0])
        n_scales, dim = g["descriptors"].shape[1:] if "descriptors" in g else (0, 0)
        out[GROUP_LABELS[group]] = {
            "rows": n, "done": int(done.sum()), "failed": int(failed),
            "pending": int(n - done.sum() - failed), "scales": int(n_scales),
            "dimension": int(dim)}
    return out


def read_failed(path: str | os.PathLike, group: str = ROOT_GROUP) -> list[tuple[str, str]]:
    """(id, reason) of each image that could not be read."""
    with h5py.File(path, "r") as f:
        return [(text(i), text(r)) for i, r in f[group]["failed"][()]]


def read_labels(path: str | os.PathLike):
    """(ids, classes, y, splits or None) stored by `write_labels`, or None if none were."""
    with h5py.File(path, "r") as f:
        if LABELS not in f or CLASSES_ATTR not in f.attrs:
            return None
        ids = [text(i) for i in f["ids"][()]]
        splits = [text(s) for s in f[SPLITS][()]] if SPLITS in f else None
        return ids, tuple(json.loads(text(f.attrs[CLASSES_ATTR]))), f[LABELS][()], splits
