"""Descriptors read in row blocks: aggregated over scales and L2-normalised block by block.

Reading a whole cache at once held the stored rows, their float32 copy, a float64
aggregate and its normalised copy together (about 4.5x the cache for averaged scales, 8x
for stacked ones). Here the rows are read `BLOCK_BYTES` of float64 scratch at a time and
each block's result is written into one preallocated float32 (n, D) output (or a file), so
memory is that output plus bounded scratch. The arithmetic is the same, row by row, as
before (float64 mean or stack, float64 L2 norm, one cast to float32), so the numbers are
identical.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import h5py
import numpy as np

from vggfeat.features.cache.integrity import (
    CHECKSUMS,
    DamagedCacheError,
    damage_message,
    has_checksums,
    layer_index,
    row_checksums,
)
from vggfeat.features.cache.layout import ROOT_GROUP, CacheError, layer_rows, text
from vggfeat.utils.errors import InputError
from vggfeat.utils.memory import refuse_unless_fits

# float64 scratch per block (a few blocks' worth are alive at once): bounded at any size,
# large enough that HDF5 reads whole chunks and numpy's per-call cost is negligible.
BLOCK_BYTES = 8 * 2**20
AGGREGATES = ("avg", "stack")
TOO_BIG_FIXES = ("average the scales (--aggregate avg) instead of stacking them, extract "
                 "fewer scales or one layer, evaluate a subset of the images, or use a machine "
                 "with more memory")


def aggregate_scales(descriptors: np.ndarray, aggregate: str = "avg") -> np.ndarray:
    """(n, S, D) -> (n, D) by averaging or (n, S*D) by stacking the scales (float64)."""
    if aggregate == "avg":
        return descriptors.mean(axis=1, dtype=np.float64)
    if aggregate == "stack":
        return descriptors.reshape(len(descriptors), -1).astype(np.float64)
    raise InputError(f"aggregate must be 'avg' or 'stack', got {aggregate!r}")


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, np.finfo(np.float64).tiny)


def aggregated_width(scales_dim: tuple[int, int], aggregate: str) -> int:
    """Columns of one file's rows after `aggregate` (checked)."""
    if aggregate not in AGGREGATES:
        raise InputError(f"aggregate must be 'avg' or 'stack', got {aggregate!r}")
    scales, dim = scales_dim
    return dim * scales if aggregate == "stack" else dim


def rows_per_block(row_bytes: int) -> int:
    return max(1, BLOCK_BYTES // max(1, row_bytes))


def aggregate_rows(descriptors: np.ndarray, aggregate: str = "avg", l2: bool = True
                   ) -> np.ndarray:
    """(n, S, D) in memory -> (n, D or S*D) float32, aggregated (and L2-normalised) block by
    block: `l2_normalize(aggregate_scales(...)).astype(float32)` without its float64 copies
    of the whole matrix."""
    n, scales, dim = descriptors.shape
    out = np.empty((n, aggregated_width((scales, dim), aggregate)), np.float32)
    step = rows_per_block(out.shape[1] * 8)
    for start in range(0, n, step):
        block = aggregate_scales(descriptors[start:start + step], aggregate)
        out[start:start + step] = l2_normalize(block) if l2 else block
    return out


class DoneRows:
    """The done rows of one layer of one row group of an open cache, read by position
    (0 .. n-1 over the done rows) and checked against their checksums."""

    def __init__(self, f: h5py.File, group: str, layer: str | None):
        g = f[group]
        done = g["done"][()]
        self.path = f.filename
        self.rows = np.flatnonzero(done)
        self.missing = int(len(done) - len(self.rows))
        self._ids = g["ids"]
        self.ids = [text(i) for i in self._ids[()][self.rows]]
        self.dataset = layer_rows(f, group, layer)
        self.scales_dim = tuple(self.dataset.shape[1:])
        # (N,) uint32: 4 bytes a row, read once rather than once per block
        self.checksums = g[CHECKSUMS][:, layer_index(f, layer)] if has_checksums(g) else None
        self.damaged: list[str] = []

    def __len__(self) -> int:
        return len(self.rows)

    def read(self, positions: np.ndarray) -> np.ndarray:
        """(m, S, D) float32 of the done rows at `positions`, in that order."""
        rows = self.rows[positions]
        if not len(rows):
            return np.empty((0, *self.scales_dim), np.float32)
        order = np.argsort(rows, kind="stable")
        wanted = rows[order]  # HDF5 reads rows in increasing order
        lo, hi = int(wanted[0]), int(wanted[-1]) + 1
        if hi - lo <= 2 * len(wanted):
            stored = self.dataset[lo:hi][wanted - lo]
        else:  # HDF5 takes each row once: repeated rows (persons of one image) read once
            distinct = np.unique(wanted)
            stored = self.dataset[distinct]
            stored = stored if len(distinct) == len(wanted) \
                else stored[np.searchsorted(distinct, wanted)]
        self._check(wanted, stored)
        block = np.empty(stored.shape, np.float32)
        block[order] = stored  # float16 storage widens exactly as astype(float32) does
        return block

    def _check(self, rows: np.ndarray, stored: np.ndarray) -> None:
        if self.checksums is None:
            return
        bad = np.flatnonzero(row_checksums(stored) != self.checksums[rows])
        self.damaged += [text(self._ids[int(rows[k])]) for k in bad]

    def raise_if_damaged(self) -> None:
        """`DamagedCacheError` naming every damaged row read (after the whole read, so the
        message counts them all, as a whole-file read did)."""
        if self.damaged:
            raise DamagedCacheError(damage_message(self.path, self.damaged))


def aligned_positions(reader: DoneRows, ids: list[str], first_path) -> np.ndarray:
    """Positions in `reader` of `ids` (the first file's order); CacheError when the files
    hold different images."""
    if set(reader.ids) != set(ids):
        raise CacheError(
            f"{reader.path} and {first_path} hold different images "
            f"({len(set(ids) - set(reader.ids))} ids only in the first, "
            f"{len(set(reader.ids) - set(ids))} only in the second); extract both from the "
            "same dataset")
    position = {i: k for k, i in enumerate(reader.ids)}
    return np.fromiter((position[i] for i in ids), dtype=np.int64, count=len(ids))


def aggregated_blocks(readers: list[DoneRows], positions: list[np.ndarray], aggregate: str,
                      l2: bool = True, block_l2: bool = False
                      ) -> Iterator[tuple[int, int, np.ndarray]]:
    """(start, stop, float32 rows) over the first reader's done rows: each file's rows
    aggregated (float64), optionally L2-normalised per file, side by side, then
    L2-normalised: `load_features`'s arithmetic, one block at a time."""
    widths = [aggregated_width(r.scales_dim, aggregate) for r in readers]
    n = len(positions[0])
    step = rows_per_block(8 * (sum(widths) + max(np.prod(r.scales_dim) for r in readers)))
    for start in range(0, n, step):
        stop = min(start + step, n)
        parts = []
        for reader, where in zip(readers, positions, strict=True):
            part = aggregate_scales(reader.read(where[start:stop]), aggregate)
            parts.append(l2_normalize(part) if block_l2 else part)
        x = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
        yield start, stop, (l2_normalize(x) if l2 else x).astype(np.float32)
    for reader in readers:
        reader.raise_if_damaged()


def allocate_rows(n: int, width: int, what: str) -> np.ndarray:
    """np.empty((n, width), float32), refused first (one line, the fixes) when it cannot
    fit in the memory available, with room for the block scratch."""
    refuse_unless_fits(n * width * 4 + 4 * BLOCK_BYTES, f"{what} ({n} rows x {width} float32)",
                       TOO_BIG_FIXES)
    return np.empty((n, width), np.float32)


@contextmanager
def aggregated_rows(path, aggregate: str, l2: bool = True, group: str | None = None,
                    layer: str | None = None):
    """``(ids, width, blocks)`` of the done rows of `path` (finished or ``.partial``):
    `blocks` yields (start, stop, float32 rows) as `aggregated_blocks`, while the file is
    open; for writers that stream the rows to a file (`vggfeat features export`)."""
    with h5py.File(path, "r") as f:
        reader = DoneRows(f, group or ROOT_GROUP, layer)
        width = aggregated_width(reader.scales_dim, aggregate)
        yield reader.ids, width, aggregated_blocks([reader], [np.arange(len(reader))],
                                                   aggregate, l2)
