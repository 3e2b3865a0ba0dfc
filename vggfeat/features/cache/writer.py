"""Rows into a cache file: the row writer, failures, shards, the final rename, labels.

Crash safety: a row's ``done`` flag is set only after its descriptor and its checksums
(`integrity`) are written; every change to an unfinished file's structure (the ``failed``
table, merged shards, labels) is made in place under an undo journal (`inplace.editing`);
a FINISHED file is only ever changed on a copy that replaces it whole (`rewriting`).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np

from vggfeat.features.cache.inplace import editing, repair
from vggfeat.features.cache.integrity import CHECKSUMS, layer_datasets, row_checksums
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
    is_partial,
    open_file,
    partial_path,
    shard_path,
    shard_paths,
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
        self.checksums = self.group.get(CHECKSUMS)  # None in a cache from an older vggfeat
        if self.checksums is not None:  # one row's write through HDF5's own calls: h5py's
            # slicing costs ~80 us a call, 10x the write (benchmarks/cache_finish.py)
            self._sum_file_space = self.checksums.id.get_space()
            self._sum_memory_space = h5py.h5s.create_simple((1, self.checksums.shape[1]))
        self.failures: dict[int, str] = {}
        self.written: set[int] = set()
        self.flush_every = flush_every
        self._unflushed = 0

    def put(self, index: int, descriptor: np.ndarray) -> None:
        row = index if self.rows is None else self.rows[index]
        sums = []
        for rows, start, stop in self.parts:
            check_storable(descriptor[..., start:stop], rows.dtype,
                           lambda: text(self.group["ids"][row]))
            stored = np.asarray(descriptor[..., start:stop], dtype=rows.dtype)
            rows[row] = stored
            if self.checksums is not None:
                sums.append(zlib.crc32(np.ascontiguousarray(stored)))
        if self.checksums is not None:
            self._sum_file_space.select_hyperslab((row, 0), (1, len(sums)))
            self.checksums.id.write(self._sum_memory_space, self._sum_file_space,
                                    np.array([sums], dtype=np.uint32))
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
            with editing(path) as f:
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
    parts, start = [], 0
    for rows in layer_datasets(group):
        parts.append((rows, start, start + rows.shape[2]))
        start += rows.shape[2]
    return parts


@contextlib.contextmanager
def rewriting(path: Path) -> Iterator[h5py.File]:
    """An h5py file on a copy of `path` that replaces `path` when the block succeeds.

    Only for a FINISHED cache that must change (labels added to it afterwards): changes to
    a file's structure move HDF5 metadata, and a finished file must never be left half
    changed. An unfinished ``.partial`` is changed in place instead (`inplace.editing`).
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
            repair(shard)  # a kill while its failures were written
            shards.append(shard)
    if not shards:
        return 0
    with editing(partial) as f:  # all shards under one journal: a kill undoes the lot
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
        done = s["done"][()] & _intact(s["/"])  # a damaged shard row is computed again
        index = s["index"][()][done]
        order = np.argsort(index)  # h5py fancy indexing wants increasing indices
        if len(index):
            sums = []
            for (rows, _, _), (shard_rows, _, _) in zip(_layer_parts(target),
                                                         _layer_parts(s["/"]), strict=True):
                values = shard_rows[()][done][order].astype(rows.dtype)
                rows[index[order]] = values
                sums.append(row_checksums(values))
            if CHECKSUMS in target:
                target[CHECKSUMS][index[order]] = np.stack(sums, axis=1)
            target["done"][index[order]] = True
        new = {text(i): text(r) for i, r in s["failed"][()]}
        done_ids = {text(i) for i in s["ids"][()][done]}
        record_failures(target, new, drop=done_ids)
        return int(done.sum())


def _intact(group: h5py.Group) -> np.ndarray:
    """Per row of a shard: whether its bytes match its checksums (all True without any)."""
    ok = np.ones(len(group["done"]), dtype=bool)
    if CHECKSUMS in group:
        sums = group[CHECKSUMS][()]
        for column, rows in enumerate(layer_datasets(group)):
            ok &= row_checksums(rows[()]) == sums[:, column]
    return ok


def is_complete(out: Path) -> bool:
    """Whether every row of ``OUT.partial`` is done or failed."""
    with open_file(partial_path(out), "r") as f:
        for name in group_names(f):
            g = f[name]
            failed = {text(i) for i, _ in g["failed"][()]}
            open_ids = [text(i) for i in g["ids"][()][~g["done"][()]]]
            if any(i not in failed for i in open_ids):
                return False
    return True


def finalize(out: Path) -> bool:
    """Rename ``OUT.partial`` to ``OUT`` when every row is done or failed; True if renamed.

    The rename is the only step that makes a finished file: whatever the finished cache
    holds (failures, labels, the variation statistic) is written into the ``.partial``
    before it, so finishing never copies the file."""
    if not is_complete(out):
        return False
    os.replace(partial_path(out), out)
    atomic.fsync_folder(Path(out).parent)
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
    _early(g, CHECKSUMS, (n, 1 + len(extra)), np.dtype(np.uint32), 0)
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
    Labels do not change the descriptors, so they are not part of the config key.

    An unfinished ``.partial`` is changed in place (undone after a kill); a finished file
    is changed on a copy that replaces it (a kill leaves the old file whole)."""
    change = editing if is_partial(Path(path)) else rewriting
    with change(path) as f:
        for name in (LABELS, SPLITS):
            if name in f:
                del f[name]
        f.create_dataset(LABELS, data=np.asarray(y, dtype=np.int8))
        f.attrs[CLASSES_ATTR] = json.dumps(list(classes))
        if splits is not None:
            f.create_dataset(SPLITS, data=np.array(list(splits), dtype=object), dtype=STRING)
