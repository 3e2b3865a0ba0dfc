"""What to tell the user about a cache that cannot be evaluated as it is: an interrupted
extraction, or a cache written by `extract_to_cache` without labels."""
from __future__ import annotations

import os
from pathlib import Path

from vggfeat.features.cache.header import read_labels, read_overview
from vggfeat.features.cache.layout import final_path, partial_path


def unfinished_message(path: str | os.PathLike) -> str | None:
    """The one description of an interrupted extraction, for `path` or its ``.partial``.

    Returns None when `path` is a finished cache (or nothing is known about it), else
    "unfinished: N of M images done ...; rerun the same `vggfeat extract` to finish".
    """
    final = final_path(Path(path))
    partial = partial_path(final)
    if final.is_file() or not partial.is_file():
        return None
    counts = _row_counts(partial)
    if counts is None:
        state = "cannot be read"
    else:
        done, failed, total = counts
        state = f"{done} of {total} images done" + (f", {failed} failed" if failed else "")
    return (f"{final} is unfinished ({partial}: {state}); rerun the same `vggfeat extract` "
            "command to finish it (it resumes where it stopped)")


def _row_counts(partial: Path) -> tuple[int, int, int] | None:
    """(done, failed, total) over the cache's groups, or None if it cannot be read."""
    try:
        groups = read_overview(partial).counts
    except (OSError, KeyError):
        return None
    if "images" not in groups:
        return None
    done = sum(g["done"] for g in groups.values())
    total = sum(g["rows"] for g in groups.values())
    failed = sum(g["failed"] for g in groups.values())
    return done, failed, total


def evaluation_problem(path: str | os.PathLike) -> str | None:
    """Why `vggfeat svm-eval` would refuse the cache at `path`, or None.

    Covers the mistakes a cache can carry from its making: an interrupted extraction, and
    a cache written by `extract_to_cache` without labels (nothing says what its images are).
    A missing or unreadable file is left to the caller's own message.
    """
    unfinished = unfinished_message(path)
    if unfinished:
        return unfinished
    path = Path(path)
    if not path.is_file():
        return None
    from vggfeat.data.readers import DATASETS

    try:
        dataset = read_overview(path, counts=False).attrs.get("dataset")
        if dataset is None or dataset in DATASETS or read_labels(path) is not None:
            return None
        rows = read_overview(path).rows
    except (OSError, KeyError):
        return None
    return (f"{path} holds {rows} descriptors written by extract_to_cache without "
            f"labels (dataset {dataset!r}), so svm-eval cannot evaluate it: run "
            "extract_to_cache(items, path, ..., labels=LABELS, splits=SPLITS) again with the "
            "same arguments plus the labels (the descriptors are reused, only the labels are "
            "added), or make it with `vggfeat extract --dataset folder` or `--dataset csv`")
