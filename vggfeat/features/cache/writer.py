"""Rows into a cache file: the row writer, failures, shards, the final rename, labels.

Crash safety: a row's ``done`` flag is set only after its descriptor is written; every
change to the file's structure (the ``failed`` table, labels, attributes) is made on a copy
that replaces the file whole (`rewriting`).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np

from vggfeat.features.cache.layout import (
    CLASSES_ATTR,
    FAILED_DTYPE,
    LABELS,
    LAYERS_GROUP,
    ROOT_GROUP,
    SPLITS,
    STRING,
    CacheError,
    CacheInUseError,
    group_names,
    open_file,
    partial_path,
    shard_path,
    shard_paths,
    stored_layers,
    text,
)
from vggfeat.utils import atomic


class RowWriter:
    """Writes finished rows (and remembers failures) into a cache file or a shard.

    In the main file a row's index is its position; in a shard, `rows` maps dataset index
    to the shard's row. Failures are written by `close`. A row of several layers (their
    descriptors side by side, in the file's layer order) is split over their datasets.
    """

    def __init__(self, path: Path, group: str = ROOT_GROUP, flush_every: int = 1):
        self.file = open_file(path, "r+")
        self.group = self.file[group]
        index = self.group.get("index")
        self.rows = None if index is None else {int(i): r for r, i in enumerate(index[()])}
        self.parts = _layer_parts(self.group)
        self.failures: dict[int, str] = {}
        self.written: set[int] = set()
        self.flush_every = flush_every
        self._unflushed = 0

    def put(self, index: int, descriptor: np.ndarray) -> None:
        row = index if self.rows is None else self.rows[index]
        for rows, start, stop in self.parts:
            check_storable(descriptor[..., start:stop], rows.dtype,
                           lambda: text(self.group["ids"][row]))
            rows[row] = descriptor[..., start:stop]
        self.group["done"][row] = True  # only after the descriptor (see module docstring)
        self.written.add(index)
        self._unflushed += 1
        if self._unflushed >= self.flush_every:
            self.file.flush()
            self._unflushed = 0

    def fail(self, index: int, reason: str) -> None:
        self.failures[index] = reason

    def close(self) -> None:
        """Write the failures and close; rows written since the last flush are flushed."""
        if not self.file.id.valid:
            return
        ids = self.group["ids"][()]

        def id_of(index: int) -> str:
            return text(ids[index if self.rows is None else self.rows[index]])

        new = {id_of(i): reason for i, reason in self.failures.items()}
        drop = {id_of(i) for i in self.written}
        before = _failure_dict(self.group)
        path, group = Path(self.file.filename), self.group.name
        self.file.flush()
        self.file.close()
        if _merged_failures(before, new, drop) != before:  # the table's structure changes
            with rewriting(path) as f:
                record_failures(f[group], new, drop)


def check_storable(values: np.ndarray, dtype, image_id: Callable[[], str]) -> None:
    """Refuse float16 storage of descriptors it cannot hold (issue 21): they are stored
    unnormalised, and float16 keeps its ~3 digits only between 6.1e-05 and 65504; a row
    below reads back as (nearly) zeros, above as infinity."""
    if np.dtype(dtype) != np.float16 or values.size == 0:
        return
    peak = float(np.max(np.abs(values)))
    info = np.finfo(np.float16)
    if peak > info.max or 0 < peak < info.tiny:
        what = "infinity" if peak > info.max else "zeros (float16 underflow)"
        raise CacheError(
            f"image {image_id()}: its descriptor's largest value is {peak:.3g}, outside "
            f"float16's range ({float(info.tiny):.2g} .. {float(info.max):g}); stored as float16 "
            f"it would read back as {what}. Store float32 instead (--dtype float32); "
            "the weights are not the cause.")


def _layer_parts(group: h5py.Group) -> list[tuple[h5py.Dataset, int, int]]:
    """(dataset, first column, end column) of each layer within a concatenated row."""
    datasets = [group["descriptors"]]
    if LAYERS_GROUP in group:
        names = stored_layers(group.file.attrs)[1:]  # the first is ``descriptors``
        datasets += [group[LAYERS_GROUP][name] for name in names]
    parts, start = [], 0
    for rows in datasets:
        parts.append((rows, start, start + rows.shape[2]))
        start += rows.shape[2]
    return parts


@contextlib.contextmanager
def rewriting(path: Path) -> Iterator[h5py.File]:
    """An h5py file on a copy of `path` that replaces `path` when the block succeeds.

    Changes to a file's structure (the `failed` table, datasets, attributes) move HDF5
    metadata: done in place, a kill -9 or a full disk in the middle could leave a file that
    no longer opens and lose every finished row. On a copy, the old file stays whole until
    the new one is complete (one file copy per run, only when the structure changes).
    """
    path = Path(path)
    with atomic.replacing(path) as tmp:
        shutil.copyfile(path, tmp)
        with open_file(tmp, "r+") as f:
            yield f


def _failure_dict(group: h5py.Group) -> dict[str, str]:
    return {text(i): text(r) for i, r in group["failed"][()]} if "failed" in group else {}


def _merged_failures(old: dict, new: dict, drop) -> dict:
    merged = {i: r for i, r in old.items() if i not in drop and i not in new}
    merged.update(new)
    return dict(sorted(merged.items()))


def record_failures(group: h5py.Group, new: dict[str, str], drop: set[str] = frozenset()):
    """Replace `group`'s failed table: old entries not in `drop` or `new`, then `new`."""
    merged = _merged_failures(_failure_dict(group), new, drop)
    table = np.array(list(merged.items()), dtype=FAILED_DTYPE).reshape(-1)
    if "failed" in group:
        del group["failed"]
    group.create_dataset("failed", data=table, maxshape=(None,), dtype=FAILED_DTYPE)


def create_shard(out: Path, rank: int, group: str, attrs: dict, ids: Sequence[str],
                 indices: Sequence[int], dim) -> Path:
    """A shard for `rank`'s rows of `group` (`indices` into the main file); `dim` as in
    `create_rows`."""
    path = shard_path(out, rank, group)
    width = sum(layer_dims(dim).values())
    atomic.check_space(path, len(indices) * (len(attrs["scales"]) * width * 4 + 256)
                       + (1 << 20))
    with atomic.replacing(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(attrs)
        f.attrs["group"] = group
        g = f.require_group(ROOT_GROUP)
        create_rows(g, [ids[i] for i in indices], len(attrs["scales"]), dim, "float32")
        g.create_dataset("index", data=np.asarray(indices, dtype=np.int64))
        g.create_dataset("failed", shape=(0,), maxshape=(None,), dtype=FAILED_DTYPE)
    return path


def merge_shards(out: Path, log: Callable[[str], None] = print) -> int:
    """Copy the finished rows and failures of every shard into ``OUT.partial``; delete shards.

    Returns the number of rows merged. Shards of another configuration or that cannot be
    read are reported and deleted (their rows are simply computed again).
    """
    partial, merged = partial_path(out), 0
    shards = []
    for shard in shard_paths(out):
        if shard.name.endswith(".tmp"):
            shard.unlink()  # a shard killed while being created
        else:
            shards.append(shard)
    if not shards:
        return 0
    with rewriting(partial) as f:  # all shards into one copy: a kill keeps the old file
        for shard in shards:
            try:
                merged += _merge_one(shard, f)
            except CacheInUseError:
                raise  # in use is not broken: the shard's rows are kept for the next run
            except (OSError, KeyError, ValueError) as error:
                log(f"warning: shard {shard} cannot be merged ({error}); its rows will be "
                    "redone")
    for shard in shards:  # only now: killed before this, the next run merges them again
        shard.unlink()
    return merged


def _merge_one(shard: Path, f: h5py.File) -> int:
    with open_file(shard, "r") as s:
        if text(s.attrs["config_key"]) != text(f.attrs["config_key"]):
            raise ValueError("another configuration")
        target = f[text(s.attrs["group"])]
        done = s["done"][()]
        index = s["index"][()][done]
        order = np.argsort(index)  # h5py fancy indexing wants increasing indices
        if len(index):
            for (rows, _, _), (shard_rows, _, _) in zip(_layer_parts(target),
                                                         _layer_parts(s["/"]), strict=True):
                rows[index[order]] = shard_rows[()][done][order].astype(rows.dtype)
            target["done"][index[order]] = True
        new = {text(i): text(r) for i, r in s["failed"][()]}
        done_ids = {text(i) for i in s["ids"][()][done]}
        record_failures(target, new, drop=done_ids)
        return int(done.sum())


def finalize(out: Path) -> bool:
    """Rename ``OUT.partial`` to ``OUT`` when every row is done or failed; True if renamed."""
    partial = partial_path(out)
    with open_file(partial, "r") as f:
        for name in group_names(f):
            g = f[name]
            failed = {text(i) for i, _ in g["failed"][()]}
            open_ids = [text(i) for i in g["ids"][()][~g["done"][()]]]
            if any(i not in failed for i in open_ids):
                return False
    os.replace(partial, out)
    return True


def layer_dims(dim) -> dict:
    """{layer: D} from a dict of them (several layers), or {None: D} from one int."""
    return dict(dim) if isinstance(dim, dict) else {None: int(dim)}


def create_rows(g: h5py.Group, ids: list[str], n_scales: int, dim, dtype: str) -> None:
    """A group's ids, and its descriptors and done flags allocated in full (never resized).

    `dim`: the descriptor length, or {layer: length} in the cache's layer order; the first
    layer goes to ``descriptors``, each other to ``layers/<name>``.
    """
    n = len(ids)
    (_, first), *extra = layer_dims(dim).items()
    g.create_dataset("ids", data=np.array(ids, dtype=object), dtype=STRING)
    _early(g, "descriptors", (n, n_scales, first), np.dtype(dtype), np.nan)
    if extra:
        extras = g.require_group(LAYERS_GROUP)
        for name, width in extra:
            _early(extras, name, (n, n_scales, width), np.dtype(dtype), np.nan)
    _early(g, "done", (n,), np.dtype(bool), False)


def _early(g: h5py.Group, name: str, shape, dtype, fill) -> None:
    """A contiguous dataset allocated (and filled) now, so later writes never touch metadata."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_ALLOC)
    dcpl.set_fill_value(np.array(fill, dtype=dtype))
    space = h5py.h5s.create_simple(tuple(max(s, 0) for s in shape))
    tid = h5py.h5t.py_create(dtype, logical=True)
    h5py.h5d.create(g.id, name.encode(), tid, space, dcpl=dcpl)


# -- labels (caches written by the Python API) ----------------------------------------

def write_labels(path: str | os.PathLike, classes: Sequence[str], y: np.ndarray,
                 splits: Sequence[str] | None = None) -> None:
    """Store labels aligned with the root group's ids: ``labels`` (n, K) int8 in {1, -1},
    the class names in attribute ``classes``, and optionally ``splits`` (train/val/test).
    Labels do not change the descriptors, so they are not part of the config key."""
    with rewriting(path) as f:  # new datasets: on a copy, so a kill never breaks the file
        for name in (LABELS, SPLITS):
            if name in f:
                del f[name]
        f.create_dataset(LABELS, data=np.asarray(y, dtype=np.int8))
        f.attrs[CLASSES_ATTR] = json.dumps(list(classes))
        if splits is not None:
            f.create_dataset(SPLITS, data=np.array(list(splits), dtype=object), dtype=STRING)
