"""The descriptor-variation statistic: does the backbone give every image the same output?

Computed once when an extraction completes and stored in the file, so `vggfeat features
info`, `svm-eval` and `doctor` can say "the descriptors barely vary" without reading rows.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import h5py
import numpy as np

from vggfeat.features.cache.inplace import editing
from vggfeat.features.cache.layout import open_file

# Below this mean pairwise cosine distance, descriptors "barely vary" across images: their
# spread is about 1% of their length (sqrt(1e-4)). Measured on the 2-core machine (stacked
# fc7 of narrow nets on the demo's cluttered digits): a net whose fc6 is dead gives 0; an
# untrained Glorot VGG-A 0.0072 (and it is informative: 25% vs 20% chance); tiny untrained
# nets on random images 0.013-0.038. A net whose training stalled at ln(C) gave 0.022 (its
# fc7 varies with clutter and position, not with the digit): no variation statistic sees
# that, the trainer's stall warning and svm-eval's chance-level check do.
LOW_VARIATION = 1e-4
VARIATION_ATTR = "descriptor_variation"
# Rows read at a time: the statistic streams over caches of any size.
CHUNK_ROWS = 1024
# Most rows the statistic reads, evenly spread over the file: finishing a cache then costs
# the same at 10 MB and at 100 GB. A mean over 8,192 rows (33 million pairs) is far finer
# than the threshold below needs; caches of fewer rows read them all, as before.
MOST_ROWS = 8192


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


def store_variation(partial: str | os.PathLike) -> float:
    """Compute `descriptor_variation` over the done rows of the root group of an unfinished
    cache and store it as a file attribute before the file is renamed; returns it."""
    with open_file(Path(partial), "r") as f:
        value = _variation(f)
    with editing(partial) as f:  # in place, undone after a kill (`inplace`)
        f.attrs[VARIATION_ATTR] = value
    return value


def read_variation(path: str | os.PathLike) -> float:
    """The stored descriptor-variation statistic (computed, not stored, for caches made
    before it existed)."""
    with h5py.File(path, "r") as f:
        value = f.attrs.get(VARIATION_ATTR)
        return _variation(f) if value is None else float(value)


def variation_and_source(path: str | os.PathLike, *, compute: bool = True,
                         ) -> tuple[float | None, str | None]:
    """(statistic, "stored") when the extraction stored it, else (computed, "computed")
    when `compute` and some rows are done, else (None, None)."""
    with h5py.File(path, "r") as f:
        value = f.attrs.get(VARIATION_ATTR)
        if value is not None:
            return float(value), "stored"
        if compute and f["done"][()].any():
            return _variation(f), "computed"
    return None, None


def _variation(f: h5py.File) -> float:
    return descriptor_variation(_done_blocks(f))


def _done_blocks(f: h5py.File) -> Iterator[np.ndarray]:
    """The done rows in blocks; above `MOST_ROWS` rows, every step-th row (a strided read,
    spread evenly over the file, so over classes of a class-sorted dataset too)."""
    done, rows = f["done"][()], f["descriptors"]
    step = -(-len(done) // MOST_ROWS)
    span = CHUNK_ROWS * step
    for start in range(0, len(done), span):
        yield rows[start:start + span:step][done[start:start + span:step]]
