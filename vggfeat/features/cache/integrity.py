"""Row checksums: silent damage (a failing disk, a bad copy) is named, never evaluated.

Each row group holds ``checksums`` (N, L) uint32: the CRC-32 (zlib, ISO 3309) of row i's
bytes in layer l's dataset, as stored (float32 or float16), written before the row's
``done`` flag. One value per row and layer gives row-level blame (HDF5's fletcher32 filter
would name a chunk, and needs chunked layout) and lets a one-layer read check only that
layer. Caches written before checksums existed have no ``checksums`` dataset: they read as
before, and `verify` says so.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from vggfeat.features.cache.layout import (
    LAYERS_GROUP,
    ROOT_GROUP,
    CacheError,
    group_names,
    stored_layers,
    text,
)

CHECKSUMS = "checksums"
# Rows read at a time when a whole file is verified (bounded memory at any size).
VERIFY_ROWS = 1024
NO_CHECKSUMS = "no checksums (written by an older vggfeat)"


class DamagedCacheError(CacheError):
    """Rows whose bytes no longer match the checksums written with them."""


def row_checksums(block: np.ndarray) -> np.ndarray:
    """(n,) uint32 CRC-32 of each row of `block` (n, ...) as its bytes are stored."""
    block = np.ascontiguousarray(block)
    return np.fromiter((zlib.crc32(row) for row in block.reshape(len(block), -1)),
                       dtype=np.uint32, count=len(block))


def layer_datasets(group: h5py.Group) -> list[h5py.Dataset]:
    """The (N, S, D) row datasets of `group`, in the file's layer order."""
    datasets = [group["descriptors"]]
    if LAYERS_GROUP in group:
        datasets += [group[LAYERS_GROUP][name] for name in stored_layers(group.file.attrs)[1:]]
    return datasets


def layer_index(f: h5py.File, layer: str | None) -> int:
    names = stored_layers(f.attrs)
    return 0 if layer is None or layer not in names else names.index(layer)


def has_checksums(group: h5py.Group) -> bool:
    return CHECKSUMS in group


def check_rows(f: h5py.File, group: str, column: int, rows: np.ndarray,
               values: np.ndarray) -> None:
    """Raise `DamagedCacheError` unless `values` (rows `rows` of layer `column`, as stored)
    match their checksums; a cache without checksums passes."""
    g = f[group]
    if not has_checksums(g) or not len(rows):
        return
    # one row (a FeatureDataset item): read its value only, not the whole column
    stored = g[CHECKSUMS][int(rows[0]), column][None] if len(rows) == 1 \
        else g[CHECKSUMS][:, column][rows]
    bad = np.flatnonzero(row_checksums(values) != stored)
    if len(bad):
        ids = g["ids"][()]
        raise DamagedCacheError(damage_message(f.filename, [text(ids[rows[k]]) for k in bad]))


def damaged_rows(f: h5py.File, group: str = ROOT_GROUP) -> np.ndarray | None:
    """Indices of the done rows of `group` whose bytes (any layer) fail their checksum;
    None for a cache without checksums. Reads the whole group, `VERIFY_ROWS` at a time."""
    g = f[group]
    if not has_checksums(g):
        return None
    done, bad = g["done"][()], []
    datasets = layer_datasets(g)
    for start in range(0, len(done), VERIFY_ROWS):
        stop = min(start + VERIFY_ROWS, len(done))
        rows = np.flatnonzero(done[start:stop])
        if not len(rows):
            continue
        stored = g[CHECKSUMS][start:stop][rows]
        wrong = np.zeros(len(rows), dtype=bool)
        for column, rows_of_layer in enumerate(datasets):
            wrong |= row_checksums(rows_of_layer[start:stop][rows]) != stored[:, column]
        bad.extend(start + rows[wrong])
    return np.asarray(bad, dtype=np.int64)


def damage_message(path, ids: list[str], count: int | None = None) -> str:
    """The one message for damaged rows: the file, how many, the first ids, the fix."""
    count = len(ids) if count is None else count
    first = ", ".join(ids[:5]) + (", ..." if count > 5 else "")
    return (f"{path}: {count} row(s) damaged (their bytes no longer match the checksums "
            f"written with them: a failing disk or a bad copy): {first}. Their descriptors are "
            "not used. Recompute them in place: rerun the `vggfeat extract` command that made "
            "the file with --redo-damaged (everything else is kept).")


@dataclass(frozen=True)
class Verification:
    """`verify`'s answer: rows checked per group, damaged ids per group, or no checksums."""

    path: Path
    checked: int
    damaged: dict
    has_checksums: bool

    @property
    def ok(self) -> bool:
        return self.has_checksums and not any(self.damaged.values())

    def line(self) -> str:
        if not self.has_checksums:
            return f"{self.path}: {NO_CHECKSUMS}; nothing to verify"
        ids = [i for group in self.damaged.values() for i in group]
        if ids:
            return damage_message(self.path, ids)
        return f"{self.path}: checksums OK ({self.checked} rows verified)"


def verify(path: str | os.PathLike) -> Verification:
    """Read every done row of every group and layer of the cache at `path` against its
    checksums."""
    with h5py.File(path, "r") as f:
        damaged, checked, present = {}, 0, True
        for group in group_names(f):
            bad = damaged_rows(f, group)
            if bad is None:
                present = False
                continue
            ids = f[group]["ids"][()]
            damaged[group] = [text(ids[k]) for k in bad]
            checked += int(f[group]["done"][()].sum())
    return Verification(Path(path), checked, damaged, present)


def damaged_ids(path: str | os.PathLike) -> tuple[dict, int]:
    """({group: damaged row indices}, total) for the cache at `path` (no checksums: none)."""
    with h5py.File(path, "r") as f:
        found = {g: damaged_rows(f, g) for g in group_names(f)}
    found = {g: rows for g, rows in found.items() if rows is not None and len(rows)}
    return found, sum(len(rows) for rows in found.values())
