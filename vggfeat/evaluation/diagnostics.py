"""Degenerate SVM results, said where they arise: a result that cannot be told apart from
guessing, and a C chosen at the edge of its grid. Each function returns the warning line,
or None when there is nothing to say (the caller decides where it goes: stderr for the
CLI)."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

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
