"""Degenerate results, detected where they arise, and said the same way everywhere.

A backbone that learnt nothing, a result at chance, a C chosen at the edge of its grid:
each is a real outcome that produces numbers without an error, so vggfeat says so in a
warning line (the caller decides where it goes: stderr for the CLI). Each function returns
the message, or None when there is nothing to say. The warnings about descriptors and
caches (no variation across images, an interrupted extraction) live with the cache, in
`vggfeat.features.cache`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

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


# -- evaluation results ------------------------------------------------------------------

# Mean class recall below chance + this many binomial standard errors is "at chance".
CHANCE_SIGMAS = 2.0


def chance_warning(headline: dict, rows: Sequence[dict], n_classes: int) -> str | None:
    """A warning when a multi-class result cannot be told apart from guessing.

    Chance is 1/K; with N test decisions in all (summed over splits) a guesser's accuracy
    has standard error sqrt(p(1-p)/N), so a mean class recall under chance + 2 of them is
    what a backbone that learnt nothing produces.

    Args:
        headline: `Result.headline` (only ``mean_class_recall`` results are checked).
        rows: `Result.rows` (their ``n_test`` counts the test decisions).
        n_classes: K.
    """
    recall = headline.get("mean_class_recall")
    n_test = sum(int(r.get("n_test", 0)) for r in rows)
    if recall is None or n_classes < 2 or n_test == 0:
        return None
    chance = 1.0 / n_classes
    limit = chance + CHANCE_SIGMAS * math.sqrt(chance * (1 - chance) / n_test)
    if recall >= limit:
        return None
    return (f"warning: mean class recall {100 * recall:.1f}% is at chance level "
            f"({100 * chance:.1f}% for {n_classes} classes; anything under "
            f"{100 * limit:.1f}% could be guessing over {n_test} test images): the "
            "descriptors carry no information about these classes. Check the backbone: did "
            "its training learn (loss below ln(classes) in its log.jsonl)? Are the layer and "
            "the weights the intended ones?")


# -- SVM cost --------------------------------------------------------------------------


def grid_edge_warning(chosen_C: dict, grid: Sequence[float]) -> str | None:
    """A warning when C was chosen at the smallest or largest value of its grid.

    Args:
        chosen_C: split -> class -> C, as `vggfeat.evaluation.protocols.Result.chosen_C`.
        grid: the C values that were tried. With fewer than 3 there is no inside to the
            grid (every choice is an edge), so nothing is said.
    """
    grid = sorted(float(c) for c in grid)
    if len(grid) < 3:
        return None
    values = [float(c) for per_class in chosen_C.values() for c in per_class.values()]
    if not values:
        return None
    low = sum(np.isclose(c, grid[0]) for c in values)
    high = sum(np.isclose(c, grid[-1]) for c in values)
    parts = []
    if high:
        parts.append(f"the largest C ({grid[-1]:g}) for {high} of {len(values)} classifiers: "
                     f"add larger values, e.g. --C {_extend(grid, 1)}")
    if low:
        parts.append(f"the smallest C ({grid[0]:g}) for {low} of {len(values)} classifiers: "
                     f"add smaller values, e.g. --C {_extend(grid, -1)}")
    if not parts:
        return None
    return ("warning: C was chosen at the edge of its grid, so the best C may lie outside it: "
            + "; ".join(parts) + ".")


def _extend(grid: list[float], direction: int) -> str:
    more = [grid[0] / 100, grid[0] / 10] + grid if direction < 0 else grid + [grid[-1] * 10,
                                                                              grid[-1] * 100]
    return ",".join(f"{c:g}" for c in more)
