"""Images -> HDF5 cache: the work behind `vggfeat extract` and `extract_to_cache`.

Resumable (rows already done are skipped), crash-safe (``OUT.partial`` until complete),
multi-process under torchrun (ranks take every world_size-th pending row; rank 0 writes the
file, the others write shards that rank 0 merges), and bad images never stop the run.
"""
from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vggfeat.features import cache
from vggfeat.features.api_checks import (
    array_image,
    checked_device,
    checked_scales,
    in_python_terms,
    is_backbone,
    refuse_one_rgb_array,
)
from vggfeat.features.descriptor import DescriptorConfig, layer_dims
from vggfeat.features.engine import DEFAULT_BATCH_SIZE, DEFAULT_MAX_PIXELS, Engine
from vggfeat.utils import distributed, interrupts, locking
from vggfeat.utils.errors import InputError, VggfeatError
from vggfeat.utils.progress import progress_bar


@dataclass
class ExtractSummary:
    """What a run did. `failed` lists (id, reason) of every unreadable image in the file."""

    path: Path
    images: int
    computed: int
    seconds: float
    complete: bool
    failed: list[tuple[str, str]] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Human-readable summary (one line per bad image, then the totals)."""
        rate = self.computed / self.seconds if self.seconds > 0 else 0.0
        out = [f"bad image {image_id}: {reason}" for image_id, reason in self.failed]
        state = "written" if self.complete else "NOT complete (rerun to resume)"
        out.append(f"{self.images} images ({self.computed} computed this run, "
                   f"{len(self.failed)} failed) in {self.seconds:.1f} s ({rate:.2f} images/s); "
                   f"{self.path} {state}")
        return out


def item_id(item) -> str:
    """A sample's id, or the path itself for a plain path."""
    return str(getattr(item, "id", item))


def python_ids(items: list, ids: Sequence | None, root) -> list[str]:
    """The row ids of `extract_to_cache`'s items: `ids` when given (one per item), a
    sample's id, a path relative to `root` when it lies under it (the CLI's folder ids,
    e.g. "cat/001.jpg"), else the path as given. An in-memory image without `ids` is
    refused: its repr is no id (and differs in the next process)."""
    if ids is not None:
        ids = [str(i) for i in ids]
        if len(ids) != len(items):
            raise InputError(f"ids has {len(ids)} entries for {len(items)} items; give one "
                             "per item")
        return ids
    out = []
    for k, item in enumerate(items):
        if hasattr(item, "id"):
            out.append(str(item.id))
        elif isinstance(item, str | os.PathLike):
            out.append(_relative_id(Path(item), root) or os.fspath(item))
        else:
            raise InputError(f"items[{k}] is an in-memory image ({type(item).__name__}): "
                             "give ids=[...], one name per item (the cache's row ids)")
    return out


def _relative_id(path: Path, root) -> str | None:
    if root is None:
        return None
    try:
        return path.resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:  # not under root
        return None


def _engine_items(items: list) -> list:
    """Arrays -> the engine's (3, H, W) tensors (checked ranges); the rest as they are."""
    return [array_image(x) if isinstance(x, np.ndarray) else x for x in items]


def extract_to_cache(items: Sequence, path: str | os.PathLike, *, weights=None, model=None,
                     arch: str | None = None, download: bool = False,
                     scales: Sequence[int] = (256, 384, 512),
                     layer=None, pool: str = "avg", flip: bool = True, boxes: Sequence = (),
                     batch_size: int = DEFAULT_BATCH_SIZE, max_pixels: int = DEFAULT_MAX_PIXELS,
                     workers: int = 0, device: str = "auto", precision: str = "fp32",
                     dtype: str = "float32", overwrite: bool = False, dataset: str = "items",
                     root: str | os.PathLike | None = None, reader_options: dict | None = None,
                     progress: bool = True, log: Callable[[str], None] | None = None,
                     labels: Sequence | None = None, splits: Sequence[str] | None = None,
                     ids: Sequence[str] | None = None, cli: bool = False,
                     redo_damaged: bool = False) -> ExtractSummary:
    """Compute the descriptors of `items` into the HDF5 cache at `path` (the CLI's file).

    Args:
        items: samples (objects with ``id``, ``path`` and optional ``box``, as
            `vggfeat.data.readers.Sample`), image paths (the id is the path relative to
            `root` when under it, as the CLI's folder ids, else the path as given), or
            in-memory images (PIL images, (H, W[, 3]) arrays, an (n, H, W, 3) array) with
            `ids`. Ids must be unique.
        path: the output file; ``path.partial`` while incomplete.
        weights: weights file or torchvision name (see `load_backbone`); or give `model`.
        model: an already loaded backbone instead of `weights`.
        arch: architecture, when the weights file cannot say.
        download: fetch a named torchvision release first if missing (`load_backbone`).
        scales: the Q values (smallest image side).
        layer: a name of the net's ``layers`` (VGG: conv1_1 ... conv5_3, pool5, fc6, fc7,
            fc8; other families: torchvision module names), several as "conv5_3,fc7" or a
            list (one pass, one file holding each), or None: the net's ``default_layer``
            (VGG: fc7). A name the net does not have is
            refused (`InputError`) before any file is made.
        pool: "avg" (the paper's) or "max" over each map's positions.
        flip: average with the horizontally flipped image.
        boxes: samples of the ``boxes`` group (voc2012-action person boxes).
        batch_size, max_pixels, workers, device, precision: see `Engine`.
        dtype: "float32" or "float16" storage.
        overwrite: replace a file made with another configuration, or that is not a vggfeat
            cache, instead of refusing; the old file stays until the new one is complete.
        dataset, root, reader_options: recorded in the file's attributes.
        progress: a tqdm bar on stderr (rank 0 only).
        log: where warnings go (default: stderr).
        labels: optional, one per item: a class name, or a list of names (multi-label).
            Stored in the file, so `vggfeat svm-eval FILE` can evaluate it (folder/csv
            protocol: 3 seeded splits, or the given `splits`).
        splits: optional, one per item: "train", "val" (joins training) or "test".
        ids: optional, one per item: the row ids (required for in-memory images).
        cli: internal: the CLI's wording of errors (--out) and its own report of bad
            images; the Python default says `path=`/`overwrite=True` and logs bad images.
        redo_damaged: recompute in place the rows of an existing file whose bytes fail
            their checksums (without it such a file is refused, naming the rows).

    Returns:
        ExtractSummary (the same on every rank).

    Raises:
        vggfeat.features.cache.ConfigMismatchError: the file exists with another configuration.
        vggfeat.features.cache.NotACacheError: `path` exists and is not a vggfeat cache
            (without `overwrite`), or is the weights file or an input image (always).
        vggfeat.features.cache.DamagedCacheError: the existing file has damaged rows
            (without `redo_damaged`).
        vggfeat.utils.locking.LockedError: another process is writing `path`.
    """
    log = log or (lambda message: print(message, file=sys.stderr))
    try:
        summary = _extract(items, path, log, weights=weights, model=model, arch=arch,
                           download=download, scales=scales, layer=layer, pool=pool, flip=flip,
                           boxes=boxes, batch_size=batch_size, max_pixels=max_pixels,
                           workers=workers, device=device, precision=precision, dtype=dtype,
                           overwrite=overwrite, dataset=dataset, root=root,
                           reader_options=reader_options, progress=progress, labels=labels,
                           splits=splits, ids=ids, redo_damaged=redo_damaged)
    except VggfeatError as error:
        if not cli:
            in_python_terms(error)
        raise
    if not cli and distributed.rank() == 0:  # the docstring's promise: warnings on stderr
        for image_id, reason in summary.failed:
            log(f"bad image {image_id}: {reason}")
    return summary


def _extract(items, path, log, *, weights, model, arch, download, scales, layer, pool, flip,
             boxes, batch_size, max_pixels, workers, device, precision, dtype, overwrite,
             dataset, root, reader_options, progress, labels, splits, ids,
             redo_damaged) -> ExtractSummary:
    start = time.perf_counter()
    if isinstance(items, str | os.PathLike):
        raise InputError("items must be a sequence of images; wrap a single path in a list")
    if isinstance(items, np.ndarray):
        refuse_one_rgb_array(items)
    items = list(items)
    groups = {cache.ROOT_GROUP: python_ids(items, ids, root)}
    sources = {cache.ROOT_GROUP: _engine_items(items)}
    if boxes:
        sources[cache.BOXES_GROUP] = list(boxes)
        groups[cache.BOXES_GROUP] = [item_id(s) for s in boxes]
    for g, ids in groups.items():
        _check_unique(ids, g)
    table = None if labels is None else label_table(labels, splits, len(groups[cache.ROOT_GROUP]))

    check_out_is_not_an_input(Path(path), weights, [s for v in sources.values() for s in v])
    device = distributed.init(checked_device(device))
    rank, world = distributed.rank(), distributed.world_size()
    if model is None and not isinstance(weights, str | os.PathLike):
        raise InputError(f"weights={weights!r}: give weights (a weights file or a torchvision "
                         "name such as 'vgg16') or model (a backbone from load_backbone)")
    if model is not None and not is_backbone(model):
        raise InputError(f"model is a {type(model).__name__}, not a backbone loaded by "
                         "vggfeat.models.load_backbone: load it there, or give weights=")
    if model is None:
        from vggfeat.models import load_backbone

        if download:  # one process fetches, the others wait for the file
            if rank == 0:
                from vggfeat.models.torchvision_load import download_release

                download_release(weights, log)
            distributed.barrier()
        model = load_backbone(weights, arch)
    config = DescriptorConfig.from_model(model, checked_scales(scales) or (256, 384, 512),
                                         layer=layer, pool=pool, flip=flip, precision=precision)
    dims = layer_dims(model, config)
    attrs = cache.cache_attributes(config, dataset=dataset, root=root,
                                   reader_options=reader_options, dtype=dtype)
    out = Path(path)
    # Built before any file is made: a bad setting (e.g. VGGFEAT_CPU_TRUNK) leaves nothing.
    engine = Engine(model, config, batch_size=batch_size, max_pixels=max_pixels,
                    workers=workers, device=device)
    # One writer per file: a second run on the same --out is refused, never merged into.
    with locking.job_lock(cache.lock_path(out), f"feature cache {out}", log):
        plan = distributed.broadcast(_plan(out, attrs, groups, dims, overwrite, log,
                                           redo_damaged) if rank == 0 else None)
        if isinstance(plan, Exception):
            raise plan
        computed = 0
        for g, todo in plan.items():
            mine = todo[rank::world]
            writer = _writer(out, rank, g, attrs, groups[g], mine, dims)
            before = len(groups[g]) - len(todo)  # rows finished by earlier runs
            computed += _run_group(engine, sources[g], mine, writer, g, progress and rank == 0,
                                   (before, len(groups[g]), world))
        distributed.barrier()  # every shard closed
        summary = None
        if rank == 0:
            complete = _finish(out, table, log)
            final = out if complete else cache.partial_path(out)
            failed = [f for g in groups for f in cache.read_failed(final, g)]
            summary = ExtractSummary(final, sum(map(len, groups.values())), 0,
                                     time.perf_counter() - start, complete, failed)
        summary = distributed.broadcast(summary)
    summary.computed = distributed.total(computed)
    return summary


def _finish(out: Path, table, log) -> bool:
    """Rank 0, after every rank's rows: merge the shards, write the labels and the variation
    statistic into ``OUT.partial`` in place, and rename it when complete (no file copy: the
    same cost at 10 MB and at 100 GB). True if ``OUT`` is finished."""
    partial = cache.partial_path(out)
    cache.merge_shards(out, log)
    if table is not None:
        cache.write_labels(partial, *table)
    if not cache.is_complete(out):
        return False
    # a backbone that gives every image the same output is said here
    warning = cache.low_variation_warning(out, cache.store_variation(partial))
    cache.finalize(out)
    if warning:
        log(warning)
    return True


def label_table(labels: Sequence, splits: Sequence[str] | None, n: int):
    """(classes, (n, K) int8 matrix in {1, -1}, splits) from per-item labels; ValueError for
    a length mismatch, an empty label, a single class or an unknown split name."""
    labels = list(labels)
    if len(labels) != n:
        raise InputError(f"labels has {len(labels)} entries for {n} items; give one per item")
    names = [[str(x) for x in lab] if isinstance(lab, list | tuple | set | frozenset)
             else [str(lab)] for lab in labels]
    if any(not row for row in names):
        raise InputError("every item needs at least one label (an empty list was given)")
    classes = sorted({c for row in names for c in row})
    if len(classes) < 2:
        raise InputError(f"labels name {len(classes)} class; an SVM needs at least two")
    index = {c: k for k, c in enumerate(classes)}
    y = -np.ones((n, len(classes)), dtype=np.int8)
    for i, row in enumerate(names):
        y[i, [index[c] for c in row]] = 1
    if splits is not None:
        splits = [str(s) for s in splits]
        if len(splits) != n or not set(splits) <= {"train", "val", "test"}:
            raise InputError("splits needs one of 'train', 'val', 'test' per item "
                             f"({len(splits)} given for {n} items)")
    return classes, y, splits


def _check_unique(ids: list[str], group: str) -> None:
    dupes = [i for i, n in Counter(ids).items() if n > 1]
    if dupes:
        raise InputError(f"ids must be unique; {len(dupes)} repeated in group {group} "
                         f"(e.g. {dupes[:3]})")


def check_out_is_not_an_input(out: Path, weights, items) -> None:
    """Refuse an --out that is the weights file or one of the images, even with --overwrite
    (a cache must never replace what it is computed from)."""
    if not out.exists():
        return
    inputs = [("the --weights file", weights)] if isinstance(weights, (str, os.PathLike)) \
        else []
    inputs += [("an input image", getattr(s, "path", s)) for s in items
               if Path(str(getattr(s, "path", s))).name == out.name]
    for what, candidate in inputs:
        try:
            same = os.path.samefile(out, candidate)
        except (OSError, TypeError, ValueError):
            continue
        if same:
            raise cache.NotACacheError(f"--out {out} is {what}; vggfeat will never replace it "
                                       "(not even with --overwrite): choose another --out.")


def _plan(out, attrs, groups, dim, overwrite, log, redo_damaged=False):
    """Rank 0: prepare the partial file; pending rows per group (or the error, for all ranks)."""
    try:
        partial = cache.open_for_writing(out, attrs, groups, dim, overwrite=overwrite,
                                         redo_damaged=redo_damaged, log=log)
    except Exception as error:  # noqa: BLE001 - every rank must learn of it, not hang
        return error
    return {g: cache.pending(partial, g) for g in groups}


def _writer(out, rank, group, attrs, ids, indices, dim) -> cache.RowWriter:
    if rank == 0:
        return cache.RowWriter(cache.partial_path(out), group)
    return cache.RowWriter(cache.create_shard(out, rank, group, attrs, ids, indices, dim))


def _stopped_note(label: str, done: int, mine: int, counts: tuple[int, int, int]) -> str:
    """What a stop keeps: "812 of 5,011 images done; rerun ..." (per process under torchrun,
    whose other processes' rows are in their shards until the rerun merges them)."""
    before, total, world = counts
    if world == 1:
        return f"{before + done:,} of {total:,} {label} done; rerun the same command to continue"
    return (f"{done:,} of its {mine:,} {label} done ({before:,} of {total:,} before this run); "
            "rerun the same command to resume")


def _run_group(engine: Engine, samples, indices, writer, group, show: bool,
               counts: tuple[int, int, int] = (0, 0, 1)) -> int:
    """Describe `indices` into `writer`; returns the rows computed. `counts` (rows done
    before, rows in all, processes) is what a stop reports (`vggfeat.utils.interrupts`)."""
    label = "boxes" if group == cache.BOXES_GROUP else "images"
    bar = progress_bar(total=len(indices), desc=f"extract {label}", unit="img", disable=not show,
                       file=sys.stderr, dynamic_ncols=True)
    done = {"computed": 0, "rows": 0}
    note = interrupts.progress_note(
        lambda: _stopped_note(label, done["rows"], len(indices), counts))
    try:
        with note:
            for result in engine.run([(i, samples[i]) for i in indices]):
                with interrupts.deferred():  # a row and its bookkeeping, whole
                    if result.error is not None:
                        writer.fail(result.index, result.error)
                    else:
                        writer.put(result.index, result.descriptor)
                        done["computed"] += 1
                    done["rows"] += 1
                bar.update(1)
    finally:
        writer.close()
        bar.close()
    return done["computed"]
