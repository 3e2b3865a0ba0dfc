"""The HDF5 feature cache: one file per dataset and backbone configuration.

Layout (the contract `vggfeat.evaluation` reads; the team brief has the full list):

- ``ids`` (N, utf-8), ``descriptors`` (N, S, D) float32 or float16 (per scale, flip-averaged,
  not normalised), ``done`` (N, bool), ``failed`` (compound: ``id``, ``reason``).
  voc2012-action adds a group ``boxes`` with the same four datasets.
- Attributes: vggfeat_version, dataset, root, arch, layer, weights_sha256, scales, flip,
  preprocessing (JSON), reader_options (JSON), precision, dtype, config (JSON of everything
  that determines the numbers) and config_key (its hash).

Crash safety: the file is written as ``OUT.partial`` and renamed to ``OUT`` only when every
row has been attempted. ``ids``, ``descriptors`` and ``done`` are allocated in full when the
file is created (contiguous, early allocation), so writing a row never changes the file's
structure: a process killed at any moment leaves a file whose finished rows are intact. A
row's ``done`` flag is set only after its descriptor is written. ``failed`` is written when
a run ends; a killed run's failures are simply retried.

Several processes: rank 0 writes ``OUT.partial``; every other rank writes its rows to a
shard ``OUT.partial.rank<r>.<group>`` laid out the same way, which rank 0 merges (at the end,
or at the start of the next run if the processes were killed).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np

from vggfeat.features.descriptor import DescriptorConfig, config_key
from vggfeat.utils import atomic
from vggfeat.version import __version__

ROOT_GROUP = "/"
BOXES_GROUP = "boxes"
DTYPES = ("float32", "float16")
STRING = h5py.string_dtype("utf-8")
FAILED_DTYPE = np.dtype([("id", STRING), ("reason", STRING)])
# Root attribute that identifies a file as a vggfeat cache: only such files (and the
# cache's own .partial and shards) are ever replaced or deleted without --overwrite.
FORMAT = "vggfeat-feature-cache/1"


class CacheError(ValueError):
    """A cache file that cannot be used as asked; the message names the file and the fix."""


class ConfigMismatchError(CacheError):
    """An existing cache file was made with another configuration."""


class NotACacheError(CacheError):
    """``--out`` names a file that vggfeat did not write (or an input): never replaced."""

    exit_code = 2


class CacheInUseError(CacheError):
    """Another process has the file open (HDF5's lock): never deleted."""

    exit_code = 2


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def shard_path(out: Path, rank: int, group: str) -> Path:
    name = "images" if group == ROOT_GROUP else group
    return out.with_name(f"{out.name}.partial.rank{rank}.{name}")


def lock_path(out: Path) -> Path:
    """The lock file held while a run writes `out` (see `vggfeat.utils.locking`)."""
    return out.with_name(out.name + ".lock")


def shard_paths(out: Path) -> list[Path]:
    return sorted(out.parent.glob(out.name + ".partial.rank*"))


def cache_attributes(config: DescriptorConfig, *, dataset: str, root: str | None = None,
                     reader_options: dict | None = None, dtype: str = "float32") -> dict:
    """The file attributes, config_key included (root is not part of the key: moving a
    dataset does not change its numbers; the ids are checked separately)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    record = {**config.as_dict(), "dataset": dataset, "reader_options": reader_options or {},
              "dtype": dtype}
    return {
        "vggfeat_format": FORMAT, "vggfeat_version": __version__, "dataset": dataset,
        "root": str(root or ""),
        "arch": config.arch, "layer": config.layer, "weights_sha256": config.weights_sha256,
        "scales": np.asarray(config.scales, dtype=np.int64), "flip": bool(config.flip),
        "precision": config.precision, "dtype": dtype,
        "preprocessing": json.dumps(config.preprocessing, sort_keys=True),
        "reader_options": json.dumps(reader_options or {}, sort_keys=True),
        "config": json.dumps(record, sort_keys=True), "config_key": config_key(record),
    }


# -- creating, checking, resuming -------------------------------------------------------

def open_for_writing(out: str | os.PathLike, attrs: dict, groups: dict[str, Sequence[str]],
                     dim: int, *, overwrite: bool = False,
                     log: Callable[[str], None] = print) -> Path:
    """Make ``OUT.partial`` ready to receive rows; returns its path.

    An existing ``OUT`` or ``OUT.partial`` of the same configuration and ids is resumed
    (``OUT`` is renamed back to ``OUT.partial`` when some of its rows are not done). Another
    configuration raises `ConfigMismatchError` naming the difference, unless `overwrite`.
    Leftover shards of a killed multi-process run are merged.

    Only vggfeat's own files are ever deleted (the cache's ``.partial`` and shards): an
    ``OUT`` that is not a vggfeat cache (a text file, another HDF5 file, a damaged file)
    raises `NotACacheError`; with `overwrite` it is kept until the new file is complete and
    then replaced by it (so an interrupted --overwrite run loses nothing). A file another
    process holds open raises `CacheInUseError` and is never touched.

    Args:
        out: the final file path.
        attrs: from `cache_attributes`.
        groups: ids per group (`ROOT_GROUP`, and `BOXES_GROUP` for voc2012-action).
        dim: descriptor length D.
    """
    out = Path(out)
    partial = partial_path(out)
    resume_out = out.exists() and _out_verdict(out, attrs, groups, overwrite)
    if partial.exists() and not _partial_usable(partial, attrs, groups, overwrite, log):
        partial.unlink()  # ours by name and by content: another configuration or unreadable
    if resume_out:
        if partial.exists():  # both: the complete file wins, the stale partial goes
            partial.unlink()
        os.replace(out, partial)
    for leftover in out.parent.glob(f".{partial.name}*.tmp"):  # of a killed run: ours
        leftover.unlink()
    if not partial.exists():
        for shard in shard_paths(out):
            shard.unlink()
        _create(partial, attrs, groups, len(attrs["scales"]), dim)
    merge_shards(out, log)
    return partial


def _inspect(path: Path, attrs: dict, groups: dict) -> tuple[str, str]:
    """What `path` is: ("same", ""), ("other", difference), ("incomplete", ""), or
    ("foreign", why) for anything vggfeat cannot identify as one of its caches."""
    if path.is_dir():
        return "foreign", "it is a folder"
    try:
        with h5py.File(path, "r") as f:
            stored = dict(f.attrs)
            stored_ids = {g: [_text(i) for i in f[g]["ids"][()]] for g in groups
                          if g in f and "ids" in f[g]}
            complete = all(g in f and "done" in f[g] and "descriptors" in f[g] for g in groups)
    except OSError as error:
        if _is_lock_error(error):
            raise CacheInUseError(
                f"{path} is open in another process (HDF5 could not lock it): another "
                "extraction may be writing it. Wait for it to finish (or close the program "
                "that has it open), or choose another --out.") from None
        return "foreign", f"not a readable HDF5 file: {error}"
    except KeyError as error:
        return "foreign", f"not laid out as a vggfeat cache: {error}"
    if not is_vggfeat_cache(stored):
        return "foreign", "an HDF5 file that vggfeat did not write"
    difference = describe_difference(stored, attrs)
    if difference:
        return "other", difference
    if not complete:
        return "incomplete", ""
    difference = _id_difference(stored_ids, groups)
    return ("other", difference) if difference else ("same", "")


def _out_verdict(out: Path, attrs: dict, groups: dict, overwrite: bool) -> bool:
    """True: resume `out`. False: keep it, `finalize` replaces it (`overwrite`). Else raise."""
    kind, detail = _inspect(out, attrs, groups)
    if kind == "same":
        return True
    if overwrite and not out.is_dir():
        return False
    if kind == "other":
        raise ConfigMismatchError(
            f"{out} was made with another configuration ({detail}); use another --out, "
            "or --overwrite to replace it")
    what = "is a damaged vggfeat cache" if kind == "incomplete" else f"is not a vggfeat " \
        f"feature cache ({detail})"
    fix = "choose another --out" if out.is_dir() else \
        "choose another --out, or pass --overwrite to replace it"
    raise NotACacheError(f"--out {out} {what}; vggfeat will not delete or replace it: {fix}.")


def _partial_usable(path: Path, attrs: dict, groups: dict, overwrite: bool, log) -> bool:
    """Whether ``OUT.partial`` can be resumed; False: it is ours and is started again."""
    if path.is_dir():
        raise NotACacheError(f"{path} is a folder; vggfeat will not delete it: choose "
                             "another --out.")
    kind, detail = _inspect(path, attrs, groups)
    if kind == "other" and not overwrite:
        raise ConfigMismatchError(
            f"{path} was made with another configuration ({detail}); use another --out, "
            "or --overwrite to replace it")
    if kind in ("foreign", "incomplete"):
        log(f"warning: {path} cannot be read ({detail or 'some datasets are missing'}); "
            "starting it again")
    return kind == "same"


def is_vggfeat_cache(stored_attrs) -> bool:
    """Whether HDF5 root attributes are those of a vggfeat cache (the format marker, or for
    files written before it existed, both the version and the configuration key)."""
    if _text(stored_attrs.get("vggfeat_format", "")) == FORMAT:
        return True
    return "vggfeat_version" in stored_attrs and "config_key" in stored_attrs


def _is_lock_error(error: OSError) -> bool:
    return isinstance(error, BlockingIOError) or "unable to lock file" in str(error)


def _open(path: Path, mode: str) -> h5py.File:
    """h5py.File, with HDF5's "unable to lock file" turned into `CacheInUseError`."""
    try:
        return h5py.File(path, mode)
    except OSError as error:
        if _is_lock_error(error):
            raise CacheInUseError(
                f"{path} is open in another process (HDF5 could not lock it); close that "
                "program or wait for it, then rerun the same command.") from None
        raise


def describe_difference(stored: dict, attrs: dict) -> str:
    """'' if the configs agree, else the differing fields with both values."""
    if _text(stored.get("config_key", "")) == attrs["config_key"]:
        return ""
    try:
        old = json.loads(_text(stored["config"]))
    except (KeyError, TypeError, ValueError):
        return "config_key differs and the file records no readable config"
    new = json.loads(attrs["config"])
    fields = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "; ".join(f"{k}: file has {old.get(k)!r}, this run {new.get(k)!r}" for k in fields)


def _id_difference(stored_ids: dict, groups: dict) -> str:
    for group, ids in groups.items():
        old, new = stored_ids.get(group, []), list(ids)
        if old != new:
            missing, extra = len(set(new) - set(old)), len(set(old) - set(new))
            return (f"group {group}: the file has {len(old)} ids, the dataset {len(new)} "
                    f"({missing} not in the file, {extra} no longer in the dataset)")
    return ""


def _create(path: Path, attrs: dict, groups: dict, n_scales: int, dim: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Never a half-created partial file; the whole file is allocated here, so a full disk
    # shows now (DiskFullError), not in the middle of the rows. The space is checked before
    # HDF5 writes anything: an HDF5 file that cannot be written cannot be closed either.
    n_rows = sum(len(ids) for ids in groups.values())
    atomic.check_space(path, n_rows * (n_scales * dim * np.dtype(attrs["dtype"]).itemsize
                                       + 256) + (1 << 20))
    with atomic.replacing(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(attrs)
        for group, ids in groups.items():
            _create_rows(f.require_group(group), list(ids), n_scales, dim, attrs["dtype"])
            f[group].create_dataset("failed", shape=(0,), maxshape=(None,), dtype=FAILED_DTYPE)


def _create_rows(g: h5py.Group, ids: list[str], n_scales: int, dim: int, dtype: str) -> None:
    n = len(ids)
    g.create_dataset("ids", data=np.array(ids, dtype=object), dtype=STRING)
    _early(g, "descriptors", (n, n_scales, dim), np.dtype(dtype), np.nan)
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


def pending(partial: Path, group: str = ROOT_GROUP) -> list[int]:
    """Row indices of `group` that are not done yet."""
    with _open(partial, "r") as f:
        return np.flatnonzero(~f[group]["done"][()]).tolist()


# -- writing rows ------------------------------------------------------------------------

class RowWriter:
    """Writes finished rows (and remembers failures) into a cache file or a shard.

    In the main file a row's index is its position; in a shard, `rows` maps dataset index
    to the shard's row. Failures are written by `close`.
    """

    def __init__(self, path: Path, group: str = ROOT_GROUP, flush_every: int = 1):
        self.file = _open(path, "r+")
        self.group = self.file[group]
        index = self.group.get("index")
        self.rows = None if index is None else {int(i): r for r, i in enumerate(index[()])}
        self.failures: dict[int, str] = {}
        self.written: set[int] = set()
        self.flush_every = flush_every
        self._unflushed = 0

    def put(self, index: int, descriptor: np.ndarray) -> None:
        row = index if self.rows is None else self.rows[index]
        self.group["descriptors"][row] = descriptor
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
            return _text(ids[index if self.rows is None else self.rows[index]])

        new = {id_of(i): reason for i, reason in self.failures.items()}
        drop = {id_of(i) for i in self.written}
        before = _failure_dict(self.group)
        path, group = Path(self.file.filename), self.group.name
        self.file.flush()
        self.file.close()
        if _merged_failures(before, new, drop) != before:  # the table's structure changes
            with rewriting(path) as f:
                record_failures(f[group], new, drop)


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
        with _open(tmp, "r+") as f:
            yield f


def _failure_dict(group: h5py.Group) -> dict[str, str]:
    return {_text(i): _text(r) for i, r in group["failed"][()]} if "failed" in group else {}


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
                 indices: Sequence[int], dim: int) -> Path:
    """A shard for `rank`'s rows of `group` (`indices` into the main file)."""
    path = shard_path(out, rank, group)
    atomic.check_space(path, len(indices) * (len(attrs["scales"]) * dim * 4 + 256) + (1 << 20))
    with atomic.replacing(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(attrs)
        f.attrs["group"] = group
        g = f.require_group(ROOT_GROUP)
        _create_rows(g, [ids[i] for i in indices], len(attrs["scales"]), dim, "float32")
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
    with _open(shard, "r") as s:
        if _text(s.attrs["config_key"]) != _text(f.attrs["config_key"]):
            raise ValueError("another configuration")
        target = f[_text(s.attrs["group"])]
        done = s["done"][()]
        index = s["index"][()][done]
        order = np.argsort(index)  # h5py fancy indexing wants increasing indices
        if len(index):
            target["descriptors"][index[order]] = s["descriptors"][()][done][order].astype(
                target["descriptors"].dtype)
            target["done"][index[order]] = True
        new = {_text(i): _text(r) for i, r in s["failed"][()]}
        done_ids = {_text(i) for i in s["ids"][()][done]}
        record_failures(target, new, drop=done_ids)
        return int(done.sum())


def finalize(out: Path) -> bool:
    """Rename ``OUT.partial`` to ``OUT`` when every row is done or failed; True if renamed."""
    partial = partial_path(out)
    with _open(partial, "r") as f:
        for name in _groups(f):
            g = f[name]
            failed = {_text(i) for i, _ in g["failed"][()]}
            open_ids = [_text(i) for i in g["ids"][()][~g["done"][()]]]
            if any(i not in failed for i in open_ids):
                return False
    os.replace(partial, out)
    return True


def read_failed(path: str | os.PathLike, group: str = ROOT_GROUP) -> list[tuple[str, str]]:
    """(id, reason) of each image that could not be read."""
    with h5py.File(path, "r") as f:
        return [(_text(i), _text(r)) for i, r in f[group]["failed"][()]]


def _groups(f: h5py.File) -> list[str]:
    return [ROOT_GROUP] + [name for name in (BOXES_GROUP,) if name in f]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- reading -----------------------------------------------------------------------------

def read_descriptors(path: str | os.PathLike, group: str | None = None,
                     ) -> tuple[list[str], np.ndarray]:
    """(ids, (n, S, D) float32) of the rows that are done."""
    from vggfeat.diagnostics import unfinished_message

    path = Path(path)
    unfinished = unfinished_message(path)  # the one description of an interrupted run
    if not path.exists():
        raise CacheError(unfinished or f"{path}: no such feature file")
    with h5py.File(path, "r") as f:
        g = f[group or ROOT_GROUP]
        done = g["done"][()]
        ids = [_text(i) for i in g["ids"][()][done]]
        descriptors = g["descriptors"][()][done].astype(np.float32)
    missing = int((~done).sum())
    if missing:
        why = unfinished or "see its `failed` table"
        warnings.warn(f"{path}: {missing} rows have no descriptor ({why}); they are left out",
                      stacklevel=3)
    return ids, descriptors


def aggregate_scales(descriptors: np.ndarray, aggregate: str = "avg") -> np.ndarray:
    """(n, S, D) -> (n, D) by averaging or (n, S*D) by stacking the scales."""
    if aggregate == "avg":
        return descriptors.mean(axis=1, dtype=np.float64)
    if aggregate == "stack":
        return descriptors.reshape(len(descriptors), -1).astype(np.float64)
    raise ValueError(f"aggregate must be 'avg' or 'stack', got {aggregate!r}")


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, np.finfo(np.float64).tiny)


def load_features(path_or_paths, aggregate: str = "avg", l2: bool = True,
                  group: str | None = None, *, block_l2: bool = False,
                  ) -> tuple[list[str], np.ndarray]:
    """Descriptors from one or several caches, aggregated over scales, as rows.

    Parameters
    ----------
    path_or_paths : path-like or list of path-likes
        One cache, or several caches of the same images (e.g. Net-D and Net-E), whose
        rows are stacked side by side, aligned by id.
    aggregate : {"avg", "stack"}
        Average the scales (VOC) or concatenate them (Caltech).
    l2 : bool
        L2-normalise each final row.
    group : str, optional
        ``"boxes"`` for the person boxes of voc2012-action.
    block_l2 : bool
        Also L2-normalise each file's block before stacking.

    Returns
    -------
    ids : list of str
        Row ids, in the first file's order (rows without a descriptor are left out).
    X : ndarray of shape (n, D), (n, S*D) or their stack over files, float32

    Raises
    ------
    CacheError
        A file is missing or the files hold different sets of ids.
    """
    paths = [path_or_paths] if isinstance(path_or_paths, (str, os.PathLike)) \
        else list(path_or_paths)
    if not paths:
        raise ValueError("load_features needs at least one path")
    ids, blocks = None, []
    for path in paths:
        these, descriptors = read_descriptors(path, group)
        block = aggregate_scales(descriptors, aggregate)
        if ids is None:
            ids = these
        else:
            block = _align(block, these, ids, path, paths[0])
        blocks.append(l2_normalize(block) if block_l2 else block)
    x = np.concatenate(blocks, axis=1)
    return ids, (l2_normalize(x) if l2 else x).astype(np.float32)


def _align(block: np.ndarray, these: list[str], ids: list[str], path, first) -> np.ndarray:
    if set(these) != set(ids):
        raise CacheError(
            f"{path} and {first} hold different images ({len(set(ids) - set(these))} ids only "
            f"in the first, {len(set(these) - set(ids))} only in the second); extract both "
            "from the same dataset")
    position = {i: k for k, i in enumerate(these)}
    return block[[position[i] for i in ids]]


class FeatureDataset:
    """Rows of a cache as a map-style dataset: item k -> (id, (S, D) float32 descriptor).

    The file is opened lazily, once per process, so the dataset can be handed to
    DataLoader workers (an h5py handle must not cross a fork).
    """

    def __init__(self, path: str | os.PathLike, group: str | None = None):
        self.path = Path(path)
        self.group = group or ROOT_GROUP
        with h5py.File(self.path, "r") as f:
            self.rows = np.flatnonzero(f[self.group]["done"][()])
        self._file = None
        self._pid = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int) -> tuple[str, np.ndarray]:
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
        g, row = self._file[self.group], int(self.rows[k])
        return _text(g["ids"][row]), g["descriptors"][row].astype(np.float32)

    def __getstate__(self):
        return {**self.__dict__, "_file": None, "_pid": None}


# -- labels (caches written by the Python API) and the descriptor-variation statistic ----

LABELS, SPLITS, CLASSES_ATTR = "labels", "splits", "classes"


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


def read_labels(path: str | os.PathLike):
    """(ids, classes, y, splits or None) stored by `write_labels`, or None if none were."""
    with h5py.File(path, "r") as f:
        if LABELS not in f or CLASSES_ATTR not in f.attrs:
            return None
        ids = [_text(i) for i in f["ids"][()]]
        splits = [_text(s) for s in f[SPLITS][()]] if SPLITS in f else None
        return ids, tuple(json.loads(_text(f.attrs[CLASSES_ATTR]))), f[LABELS][()], splits


def store_variation(path: str | os.PathLike) -> float:
    """Compute `vggfeat.diagnostics.descriptor_variation` over the done rows of the root
    group and store it as a file attribute; returns it."""
    from vggfeat.diagnostics import VARIATION_ATTR

    with _open(Path(path), "r") as f:
        value = _variation(f)
    with rewriting(path) as f:  # the finished file is only ever replaced whole
        f.attrs[VARIATION_ATTR] = value
    return value


def read_variation(path: str | os.PathLike) -> float:
    """The stored descriptor-variation statistic (computed, not stored, for caches made
    before it existed)."""
    from vggfeat.diagnostics import VARIATION_ATTR

    with h5py.File(path, "r") as f:
        value = f.attrs.get(VARIATION_ATTR)
        return _variation(f) if value is None else float(value)


def _variation(f: h5py.File, chunk: int = 1024) -> float:
    from vggfeat.diagnostics import descriptor_variation

    done, rows = f["done"][()], f["descriptors"]  # `chunk` rows at a time: any size
    return descriptor_variation(rows[start:start + chunk][done[start:start + chunk]]
                                for start in range(0, len(done), chunk))
