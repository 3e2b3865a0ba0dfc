"""Creating ``OUT.partial``, or resuming it: checks that an existing file is ours and of
the same configuration before a single row is written.

Crash safety: the file is written as ``OUT.partial`` and renamed to ``OUT`` only when every
row has been attempted. ``ids``, ``descriptors`` and ``done`` are allocated in full when the
file is created (contiguous, early allocation), so writing a row never changes the file's
structure: a process killed at any moment leaves a file whose finished rows are intact.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import h5py
import numpy as np

from vggfeat.features.cache.inplace import journal_path, repair
from vggfeat.features.cache.integrity import DamagedCacheError, damage_message, damaged_ids
from vggfeat.features.cache.layout import (
    FAILED_DTYPE,
    LAYERS_GROUP,
    ROOT_GROUP,
    CacheInUseError,
    ConfigMismatchError,
    NotACacheError,
    describe_difference,
    is_lock_error,
    is_vggfeat_cache,
    open_file,
    partial_path,
    shard_paths,
    stored_layers,
    text,
)
from vggfeat.features.cache.writer import create_rows, layer_dims, merge_shards
from vggfeat.utils import atomic


def open_for_writing(out: str | os.PathLike, attrs: dict, groups: dict[str, Sequence[str]],
                     dim: int, *, overwrite: bool = False, redo_damaged: bool = False,
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

    The rows of a resumed file are checked against their checksums first: damaged rows
    raise `DamagedCacheError` naming them, or with `redo_damaged` are marked not done (and
    so computed again) while every other row is kept. A ``.partial`` whose end-of-run
    change was killed half-way is restored first (`inplace.repair`).

    Args:
        out: the final file path.
        attrs: from `cache_attributes`.
        groups: ids per group (`ROOT_GROUP`, and `BOXES_GROUP` for voc2012-action).
        dim: descriptor length D, or {layer: D} in the configuration's layer order.
    """
    out = Path(out)
    partial = partial_path(out)
    if repair(partial):
        log(f"note: {partial}: undid the end of a run that was stopped half-way")
    resume_out = out.exists() and _out_verdict(out, attrs, groups, overwrite)
    if partial.exists() and not _partial_usable(partial, attrs, groups, overwrite, log):
        partial.unlink()  # ours by name and by content: another configuration or unreadable
    resumed = out if resume_out else partial
    damaged = _damaged(resumed, redo_damaged) if resumed.exists() else {}
    if resume_out:
        if partial.exists():  # both: the complete file wins, the stale partial goes
            partial.unlink()
        os.replace(out, partial)
    for leftover in out.parent.glob(f".{partial.name}*.tmp"):  # of a killed run: ours
        leftover.unlink()
    if not partial.exists():
        for shard in shard_paths(out):
            shard.unlink()
            journal_path(shard).unlink(missing_ok=True)
        _create(partial, attrs, groups, len(attrs["scales"]), dim)
    if damaged:
        _mark_not_done(partial, damaged, log)
    merge_shards(out, log)
    return partial


def _damaged(path: Path, redo: bool) -> dict:
    """{group: damaged row indices} of a file about to be resumed; raises without `redo`."""
    found, count = damaged_ids(path)
    if count and not redo:
        with h5py.File(path, "r") as f:
            ids = [text(f[g]["ids"][k]) for g, rows in found.items() for k in rows[:5]]
        raise DamagedCacheError(damage_message(path, ids, count))
    return found


def _mark_not_done(partial: Path, damaged: dict, log) -> None:
    """Clear the done flags of damaged rows (a value write, no structure changes)."""
    with open_file(partial, "r+") as f:
        for group, rows in damaged.items():
            f[group]["done"][np.sort(rows)] = False
    count = sum(len(rows) for rows in damaged.values())
    log(f"note: {partial}: {count} damaged row(s) will be computed again (--redo-damaged)")


def _inspect(path: Path, attrs: dict, groups: dict) -> tuple[str, str]:
    """What `path` is: ("same", ""), ("other", difference), ("incomplete", ""), or
    ("foreign", why) for anything vggfeat cannot identify as one of its caches."""
    if path.is_dir():
        return "foreign", "it is a folder"
    try:
        with h5py.File(path, "r") as f:
            stored = dict(f.attrs)
            stored_ids = {g: [text(i) for i in f[g]["ids"][()]] for g in groups
                          if g in f and "ids" in f[g]}
            complete = all(g in f and "done" in f[g] and "descriptors" in f[g]
                           and all(name in f[g].get(LAYERS_GROUP, {})
                                   for name in stored_layers(stored)[1:]) for g in groups)
    except OSError as error:
        if is_lock_error(error):
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


def _id_difference(stored_ids: dict, groups: dict) -> str:
    for group, ids in groups.items():
        old, new = stored_ids.get(group, []), list(ids)
        if old != new:
            missing, extra = len(set(new) - set(old)), len(set(old) - set(new))
            return (f"group {group}: the file has {len(old)} ids, the dataset {len(new)} "
                    f"({missing} not in the file, {extra} no longer in the dataset)")
    return ""


def _create(path: Path, attrs: dict, groups: dict, n_scales: int, dim) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Never a half-created partial file; the whole file is allocated here, so a full disk
    # shows now (DiskFullError), not in the middle of the rows. The space is checked before
    # HDF5 writes anything: an HDF5 file that cannot be written cannot be closed either.
    n_rows = sum(len(ids) for ids in groups.values())
    width = sum(layer_dims(dim).values())
    atomic.check_space(path, n_rows * (n_scales * width * np.dtype(attrs["dtype"]).itemsize
                                       + 256) + (1 << 20))
    with atomic.replacing(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(attrs)
        for group, ids in groups.items():
            create_rows(f.require_group(group), list(ids), n_scales, dim, attrs["dtype"])
            f[group].create_dataset("failed", shape=(0,), maxshape=(None,), dtype=FAILED_DTYPE)


def pending(partial: Path, group: str = ROOT_GROUP) -> list[int]:
    """Row indices of `group` that are not done yet."""
    with open_file(partial, "r") as f:
        return np.flatnonzero(~f[group]["done"][()]).tolist()
