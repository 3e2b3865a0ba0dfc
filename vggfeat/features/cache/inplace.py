"""Changing an unfinished cache's structure in place, undoable after a kill or a full disk.

The end of a run writes small things into ``OUT.partial``: the ``failed`` table, merged
shards, labels, the variation statistic. HDF5 moves metadata to do so, and a kill in the
middle could leave a file that no longer opens. Copying the whole file first (`rewriting`)
made finishing cost a second full write at 100 GB; instead `editing` saves an undo journal
of every byte outside the row datasets (``descriptors``, ``layers/*``: early-allocated and
contiguous, so at fixed offsets that HDF5 never moves), makes the change in place, and
deletes the journal. A journal found later (the process was killed, or the disk filled
mid-change) is played back by `repair`: those bytes restored and the file cut to its old
length give exactly the file as it was before the change (rows written to not-done rows in
between are ignored, as after any kill). The journal holds the ids, flags, checksums and
HDF5's metadata: a small fraction of the file, so finishing costs nearly the same at 10 MB
and at 100 GB. A FINISHED file is never edited this way: it is only made by renaming a
complete ``.partial`` (and `rewriting` stays for changing one afterwards).
"""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import h5py

from vggfeat.features.cache.integrity import layer_datasets
from vggfeat.features.cache.layout import JOURNAL_SUFFIX, group_names, open_file
from vggfeat.utils import atomic

# Bytes copied at a time (bounded memory whatever the journal's size).
BLOCK = 1 << 24


def journal_path(path: Path) -> Path:
    return Path(path).with_name(Path(path).name + JOURNAL_SUFFIX)


def _row_extents(path: Path) -> list[tuple[int, int]]:
    """(offset, length) of every contiguous row dataset's data in the file, sorted."""
    extents = []
    with open_file(path, "r") as f:
        for name in group_names(f):
            for rows in layer_datasets(f[name]):
                offset = rows.id.get_offset()
                if offset is not None:
                    extents.append((int(offset), int(rows.id.get_storage_size())))
    return sorted(extents)


def _saved_ranges(path: Path) -> tuple[int, list[tuple[int, int]]]:
    """(file size, [(offset, length)] of every range outside the row datasets)."""
    size, ranges, at = path.stat().st_size, [], 0
    for offset, length in _row_extents(path):
        if offset > at:
            ranges.append((at, offset - at))
        at = max(at, offset + length)
    if size > at:
        ranges.append((at, size - at))
    return size, ranges


def _write_journal(path: Path) -> None:
    size, ranges = _saved_ranges(path)
    header = json.dumps({"size": size, "ranges": ranges}).encode() + b"\n"
    with atomic.replacing(journal_path(path)) as tmp, open(tmp, "wb") as out, \
            open(path, "rb") as source:
        out.write(header)
        for offset, length in ranges:
            source.seek(offset)
            while length > 0:
                block = source.read(min(BLOCK, length))
                out.write(block)
                length -= len(block)


def repair(path: str | os.PathLike) -> bool:
    """Undo an in-place change that did not complete (its journal is still there); True if
    one was undone. A journal without its file (renamed since) is simply deleted."""
    path, journal = Path(path), journal_path(Path(path))
    if not journal.exists():
        return False
    if path.exists():
        with open(journal, "rb") as saved, open(path, "r+b") as target:
            state = json.loads(saved.readline())
            for offset, length in state["ranges"]:
                target.seek(offset)
                while length > 0:
                    block = saved.read(min(BLOCK, length))
                    target.write(block)
                    length -= len(block)
            target.truncate(state["size"])
            target.flush()
            os.fsync(target.fileno())
    journal.unlink()
    return path.exists()


@contextlib.contextmanager
def editing(path: str | os.PathLike) -> Iterator[h5py.File]:
    """An h5py file opened "r+" on the unfinished cache at `path`; the change is kept only
    if the block completes (else undone at once, or by `repair` after a kill). A full disk
    becomes `DiskFullError` naming the file."""
    path = Path(path)
    repair(path)
    _write_journal(path)
    try:
        with open_file(path, "r+") as f:
            yield f
        with open(path, "rb+") as handle:
            os.fsync(handle.fileno())
    except BaseException as error:
        repair(path)
        if atomic.is_disk_full(error):
            raise atomic.disk_full_error(path, error) from None
        raise
    journal_path(path).unlink()
