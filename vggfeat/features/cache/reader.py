"""Descriptors out of a cache: as stored, aggregated over scales, or row by row.

Every read checks the rows it returns against their checksums (`integrity`): a damaged
row raises `DamagedCacheError` naming it and the fix, and is never returned."""
from __future__ import annotations

import os
import warnings
from contextlib import ExitStack
from pathlib import Path

import h5py
import numpy as np

from vggfeat.features.cache.integrity import check_rows, layer_index
from vggfeat.features.cache.layout import ROOT_GROUP, CacheError, layer_rows, text
from vggfeat.features.cache.messages import unfinished_message
from vggfeat.features.cache.rows import (
    DoneRows,
    aggregated_blocks,
    aggregated_width,
    aligned_positions,
    allocate_rows,
    rows_per_block,
)
from vggfeat.utils.errors import InputError


def read_done_rows(path: str | os.PathLike, group: str | None = None,
                   layer: str | None = None) -> tuple[list[str], np.ndarray, int]:
    """(ids, (n, S, D) float32, rows without a descriptor) of the rows that are done, from
    a finished cache or a ``.partial`` alike; `layer` picks one of a multi-layer cache's
    layers (None: its first, the only one of most caches). Read in row blocks into one
    float32 array: memory is that array plus one block."""
    with h5py.File(path, "r") as f:
        reader = DoneRows(f, group or ROOT_GROUP, layer)
        stored = np.empty((len(reader), *reader.scales_dim), np.float32)
        step = rows_per_block(stored[:1].nbytes * 2)
        for start in range(0, len(reader), step):
            stored[start:start + step] = reader.read(np.arange(start, min(start + step,
                                                                          len(reader))))
        reader.raise_if_damaged()
    return reader.ids, stored, reader.missing


def read_descriptors(path: str | os.PathLike, group: str | None = None,
                     layer: str | None = None) -> tuple[list[str], np.ndarray]:
    """(ids, (n, S, D) float32) of the rows that are done (of `layer`, see `read_done_rows`)."""
    path = _readable(path)
    ids, descriptors, missing = read_done_rows(path, group, layer)
    _warn_missing(path, missing)
    return ids, descriptors


def _readable(path) -> Path:
    """`path`, refused by name when it is missing (or names an unfinished run) or is not a
    cache."""
    path = Path(path)
    if not path.exists():
        raise CacheError(unfinished_message(path) or f"{path}: no such feature file")
    refuse_non_cache(path)
    return path


def _warn_missing(path: Path, missing: int) -> None:
    if missing:
        why = unfinished_message(path) or "see its `failed` table"
        warnings.warn(f"{path}: {missing} rows have no descriptor ({why}); they are left out",
                      stacklevel=4)


def open_done_rows(stack: ExitStack, path, group: str | None, layer: str | None,
                   ) -> DoneRows:
    """The done rows of a finished cache, open until `stack` closes (checked as
    `read_descriptors` checks; rows without a descriptor are left out with a warning)."""
    path = _readable(path)
    reader = DoneRows(stack.enter_context(h5py.File(path, "r")), group or ROOT_GROUP, layer)
    _warn_missing(path, reader.missing)
    return reader


def refuse_non_cache(path: Path) -> None:
    """A file that is not HDF5 (weights, an image): say what to give, not h5py's
    "file signature not found"."""
    if path.is_dir() or not h5py.is_hdf5(path):
        looks = " (it looks like weights: they go to FeatureExtractor(weights=...))" \
            if path.suffix.lower() in (".pth", ".pt", ".ckpt", ".bin") else ""
        raise CacheError(f"{path} is not a vggfeat feature cache{looks}; give the .h5 file "
                         "written by extract_to_cache or vggfeat extract")


def load_features(path_or_paths, aggregate: str = "avg", l2: bool = True,
                  group: str | None = None, *, block_l2: bool = False,
                  layer: str | None = None, return_labels: bool = False):
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
    layer : str, optional
        Which layer of a cache holding several (``vggfeat extract --layer conv5_3,fc7``);
        None: each file's first (the only one of a one-layer cache).
    return_labels : bool
        Also return the labels stored in the (first) cache by ``extract_to_cache(...,
        labels=...)``, aligned with `ids`.

    Returns
    -------
    ids : list of str
        Row ids, in the first file's order (rows without a descriptor are left out).
    X : ndarray of shape (n, D), (n, S*D) or their stack over files, float32
    labels : list, only with ``return_labels=True``
        One class name per row, or a list of names per row for a multi-label cache.

    Raises
    ------
    CacheError
        A file is missing, holds no `layer`, or the files hold different sets of ids.
    """
    rows = CachedRows(path_or_paths, aggregate, l2, group, block_l2=block_l2, layer=layer)
    try:
        x = rows.read(np.arange(len(rows)))
    finally:
        rows.close()
    if return_labels:
        return rows.ids, x, stored_labels(rows.paths[0], rows.ids)
    return rows.ids, x


class CachedRows:
    """The rows `load_features` returns, read on demand by position instead of all held:
    an evaluation holds one split's training rows at a time and scores its test rows a
    block at a time (Caltech-256 size: half the descriptors' memory). Same arguments as
    `load_features`.

    The files stay open, read-only, until `close`: every read is of the files opened, even
    if their paths are replaced meanwhile (a new extraction of the same name).
    """

    def __init__(self, path_or_paths, aggregate: str = "avg", l2: bool = True,
                 group: str | None = None, *, block_l2: bool = False,
                 layer: str | None = None):
        self.paths = [path_or_paths] if isinstance(path_or_paths, (str, os.PathLike)) \
            else list(path_or_paths)
        if not self.paths:
            raise InputError("load_features needs at least one path")
        self._files = ExitStack()
        try:
            self._readers = [open_done_rows(self._files, path, group, layer)
                             for path in self.paths]
            self.ids = self._readers[0].ids
            self._positions = [np.arange(len(self.ids))] + [
                aligned_positions(r, self.ids, self.paths[0]) for r in self._readers[1:]]
            self.width = sum(aggregated_width(r.scales_dim, aggregate) for r in self._readers)
        except BaseException:
            self._files.close()
            raise
        self._arithmetic = (aggregate, l2, block_l2)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, width), as the array `read` of every row would have."""
        return len(self.ids), self.width

    def read(self, positions) -> np.ndarray:
        """(len(positions), width) float32: the rows at `positions` (of `ids`), in that
        order, repeats allowed; refused first (`allocate_rows`) when they cannot fit."""
        positions = np.asarray(positions, dtype=np.int64)
        x = allocate_rows(len(positions), self.width,
                          f"reading {', '.join(map(str, self.paths))}")
        where = [p[positions] for p in self._positions]
        for start, stop, block in aggregated_blocks(self._readers, where, *self._arithmetic):
            x[start:stop] = block
        return x

    def non_finite(self) -> list[tuple[str, list[str]]]:
        """(path, ids) of the stored rows holding NaN or Inf, per file that has any: one pass,
        a block at a time, every row checked against its checksum too. Finite stored rows
        give finite rows to `read` (a mean or concatenation of finite float32 values, and an
        L2 normalisation, in float64, stay finite), so the pass skips that arithmetic."""
        found = []
        for path, reader in zip(self.paths, self._readers, strict=True):
            step = rows_per_block(4 * int(np.prod(reader.scales_dim)))
            bad = []
            for start in range(0, len(reader), step):
                rows = reader.read(np.arange(start, min(start + step, len(reader))))
                finite = np.isfinite(rows.reshape(len(rows), -1)).all(axis=1)
                bad += [reader.ids[start + k] for k in np.flatnonzero(~finite)]
            reader.raise_if_damaged()
            if bad:
                found.append((str(path), bad))
        return found

    def close(self) -> None:
        self._files.close()


def stored_labels(path, ids: list[str]) -> list:
    """The labels `write_labels` stored, one per id: a class name, or a list of names when
    some image has several; CacheError naming the fix when the file holds none."""
    from vggfeat.features.cache.header import read_labels

    stored = read_labels(path)
    if stored is None:
        raise CacheError(f"{path} holds no labels: extract it with extract_to_cache(..., "
                         "labels=[...]) (one class name per item), or take the labels from "
                         "your own list, in the order of the returned ids")
    stored_ids, classes, y, _ = stored
    row = {i: k for k, i in enumerate(stored_ids)}
    names = [[classes[c] for c in np.flatnonzero(y[row[i]] > 0)] for i in ids]
    if all(len(n) == 1 for n in names):
        return [n[0] for n in names]
    return names


class FeatureDataset:
    """Rows of a cache as a map-style dataset: item k -> (id, (S, D) float32 descriptor).

    The file is opened lazily, once per process, so the dataset can be handed to
    DataLoader workers (an h5py handle must not cross a fork). `layer` picks one layer of a
    multi-layer cache (None: its first).
    """

    def __init__(self, path: str | os.PathLike, group: str | None = None,
                 layer: str | None = None):
        self.path = Path(path)
        self.group = group or ROOT_GROUP
        self.layer = layer
        refuse_non_cache(self.path)
        with h5py.File(self.path, "r") as f:
            self.rows = np.flatnonzero(f[self.group]["done"][()])
            layer_rows(f, self.group, layer)  # an unknown layer is refused now
        self._file = None
        self._pid = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int) -> tuple[str, np.ndarray]:
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
        g, row = self._file[self.group], int(self.rows[k])
        stored = layer_rows(self._file, self.group, self.layer)[row]
        check_rows(self._file, self.group, layer_index(self._file, self.layer),
                   np.array([row]), stored[None])
        return text(g["ids"][row]), stored.astype(np.float32)

    def __getstate__(self):
        return {**self.__dict__, "_file": None, "_pid": None}
