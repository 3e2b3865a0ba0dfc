"""Degenerate results, detected where they arise, and said the same way everywhere.

A backbone that learnt nothing, descriptors that are the same for every image, a C chosen
at the edge of its grid, a cache whose extraction was interrupted: each is a real outcome
that produces numbers without an error, so vggfeat says so in a warning line (the caller
decides where it goes: stderr for the CLI). Each function returns the message, or None
when there is nothing to say.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

# -- training ------------------------------------------------------------------------

# The check runs from this epoch on (the first epochs of a healthy run may sit near ln C).
STALL_AFTER_EPOCHS = 3
# "At ln(C)": the training loss of every epoch so far is above this fraction of ln(C) ...
STALL_LOSS_FRACTION = 0.97
# ... and the validation top-1 error is within this many chance-level "classes" of chance:
# error >= 100 * (1 - STALL_CHANCE_CLASSES / C), i.e. at most 1.5x chance accuracy.
STALL_CHANCE_CLASSES = 1.5


def training_stalled(records: Sequence[dict], num_classes: int,
                     after: int = STALL_AFTER_EPOCHS) -> str | None:
    """A warning when the loss has stayed at ln(classes) and validation at chance.

    Args:
        records: the per-epoch log records so far (``train_loss``, ``val_top1_err`` in %).
        num_classes: the number of training classes C.
        after: check only once this many epochs have run.
    """
    if num_classes < 2 or len(records) < after:
        return None
    if any("train_loss" not in r or "val_top1_err" not in r for r in records):
        return None  # another task's log (e.g. localisation): not a classification run
    chance_loss = math.log(num_classes)
    losses = [r["train_loss"] for r in records]
    chance_err = 100.0 * (1 - 1 / num_classes)
    last_err = records[-1]["val_top1_err"]
    if min(losses) < STALL_LOSS_FRACTION * chance_loss:
        return None
    if last_err < 100.0 * (1 - STALL_CHANCE_CLASSES / num_classes):
        return None
    return (f"warning: the net has learnt nothing in {len(records)} epochs: training loss "
            f"{losses[-1]:.3f} ~ ln({num_classes}) = {chance_loss:.3f}, val top-1 error "
            f"{last_err:.1f}% ~ chance {chance_err:.1f}%. Its features will be useless. On small "
            "data try --arch vgg11-bn (batch norm), --init xavier, a lower or higher --lr "
            "(e.g. 0.005 or 0.02), or more images per class; stop this run if it persists.")


# -- descriptors ---------------------------------------------------------------------

# Below this mean pairwise cosine distance, descriptors "barely vary" across images: their
# spread is about 1% of their length (sqrt(1e-4)). Measured on the 2-core machine (stacked
# fc7 of narrow nets on the demo's cluttered digits): a net whose fc6 is dead gives 0; an
# untrained Glorot VGG-A 0.0072 (and it is informative: 25% vs 20% chance); tiny untrained
# nets on random images 0.013-0.038. A net whose training stalled at ln(C) gave 0.022 (its
# fc7 varies with clutter and position, not with the digit): no variation statistic sees
# that, the trainer's stall warning and svm-eval's chance-level check do.
LOW_VARIATION = 1e-4
VARIATION_ATTR = "descriptor_variation"


def descriptor_variation(blocks: Iterable[np.ndarray]) -> float:
    """Mean pairwise cosine distance between images' descriptors (scales averaged).

    0 means every image has the same descriptor (up to scale); unrelated directions give
    1. For unit rows u_i the mean similarity over pairs i != j is
    (|sum u|^2 - n) / (n (n - 1)), so one streaming pass suffices (any number of rows).
    All-zero rows count as "the same descriptor" as every other all-zero row.

    Args:
        blocks: arrays of shape (n, S, D) or (n, D), e.g. chunks of a cache's rows.

    Returns:
        The distance in [0, 2], or nan for fewer than two rows.
    """
    total, n, zero = None, 0, 0
    for block in blocks:
        x = np.asarray(block, dtype=np.float64)
        x = x.mean(axis=1) if x.ndim == 3 else x
        norms = np.linalg.norm(x, axis=1)
        nonzero = norms > 0
        zero += int((~nonzero).sum())
        u = (x[nonzero] / norms[nonzero, None]).sum(axis=0)
        total = u if total is None else total + u
        n += int(nonzero.sum())
    if n + zero < 2:
        return float("nan")
    if n < 2:  # all (or all but one) descriptors are zero
        return 0.0
    similarity = (float(total @ total) - n) / (n * (n - 1))
    return float(min(max(1.0 - similarity, 0.0), 2.0))


def low_variation_warning(path: str | os.PathLike, variation: float | None) -> str | None:
    """A warning when a cache's descriptors barely vary across its images."""
    if variation is None or not np.isfinite(variation) or variation >= LOW_VARIATION:
        return None
    return (f"warning: {path}: the descriptors barely vary across images (mean pairwise cosine "
            f"distance {variation:.2g} < {LOW_VARIATION:g}): the backbone gives nearly the same "
            "output for every image, so any SVM on them sits at chance. Check the weights (a "
            "training run that learnt nothing? see its log.jsonl) and the layer.")


# -- interrupted extraction -------------------------------------------------------------


def unfinished_message(path: str | os.PathLike) -> str | None:
    """The one description of an interrupted extraction, for `path` or its ``.partial``.

    Returns None when `path` is a finished cache (or nothing is known about it), else
    "unfinished: N of M images done ...; rerun the same `vggfeat extract` to finish".
    """
    path = Path(path)
    if path.name.endswith(".partial"):
        final, partial = path.with_name(path.name[: -len(".partial")]), path
    else:
        final, partial = path, path.with_name(path.name + ".partial")
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
    import h5py

    try:
        with h5py.File(partial, "r") as f:
            groups = [f] + [f[g] for g in ("boxes",) if g in f]
            done = sum(int(g["done"][()].sum()) for g in groups)
            total = sum(int(g["done"].shape[0]) for g in groups)
            failed = sum(int(g["failed"].shape[0]) for g in groups if "failed" in g)
    except (OSError, KeyError):
        return None
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
    import h5py

    from vggfeat.data.readers import DATASETS
    from vggfeat.features.cache import read_labels

    try:
        with h5py.File(path, "r") as f:
            dataset = f.attrs.get("dataset")
            rows = int(f["done"].shape[0]) if "done" in f else 0
        labels = read_labels(path)
    except (OSError, KeyError):
        return None
    dataset = dataset.decode() if isinstance(dataset, bytes) else dataset
    if dataset is None or labels is not None or dataset in DATASETS:
        return None
    return (f"{path} holds {rows} descriptors written by extract_to_cache without labels "
            f"(dataset {dataset!r}), so svm-eval cannot evaluate it: run "
            "extract_to_cache(items, path, ..., labels=LABELS, splits=SPLITS) again with the "
            "same arguments plus the labels (the descriptors are reused, only the labels are "
            "added), or make it with `vggfeat extract --dataset folder` or `--dataset csv`")
