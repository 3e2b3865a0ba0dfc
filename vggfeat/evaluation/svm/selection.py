"""Choosing C on training data only: folds, then held-out AP per class or the
cross-validated mean class recall of the argmax (one C for all classes).

The same selection serves every probe (`vggfeat.evaluation.probes`): ``fold_scores`` says
how a probe scores held-out rows at each value of its grid (default: the SVMs' path of C);
the logistic regression passes its own path of C, the kNN its grid of k."""
from __future__ import annotations

import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold

from vggfeat.evaluation.metrics import mean_class_recall, voc_ap
from vggfeat.evaluation.svm.path import fit_path
from vggfeat.utils.row_order import RowOrder


def holdout_split(y, fraction, random_state) -> tuple[np.ndarray, np.ndarray]:
    """Hold out ``round(fraction * n_c)`` training images of each class c (at least one
    when the class has two or more), e.g. 6 of 30 for Caltech-101's 20%."""
    rng = np.random.default_rng(random_state)
    val = []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        count = int(round(fraction * len(members)))
        count = max(count, 1) if len(members) >= 2 else 0
        val.extend(members[:count])
    val = np.sort(np.array(val, dtype=np.int64))
    return np.setdiff1d(np.arange(len(y)), val), val


def cv_folds(n, strata, cv, random_state) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train rows, validation rows) pairs; ``strata`` are class ids for stratification
    (unstratified folds when a class has fewer than ``cv`` rows; at most one fold per row)."""
    if isinstance(cv, float):
        if not 0 < cv < 1:
            raise ValueError(f"a held-out fraction must be in (0, 1), got {cv}")
        if strata is not None:
            return [holdout_split(strata, cv, random_state)]
        rng = np.random.default_rng(random_state)
        val = np.sort(rng.permutation(n)[: max(1, int(round(cv * n)))])
        return [(np.setdiff1d(np.arange(n), val), val)]
    if int(cv) < 2:
        raise ValueError(f"cv must be an int >= 2 or a fraction in (0, 1), got {cv!r}")
    dummy = np.zeros(n)
    if strata is not None and np.bincount(strata).min() >= cv:
        folds = StratifiedKFold(int(cv), shuffle=True, random_state=random_state)
        return list(folds.split(dummy, strata))
    # Fewer rows than folds (a learning curve's 1 or 2 images per class): one row per fold.
    folds = min(int(cv), n)
    return list(KFold(folds, shuffle=True, random_state=random_state).split(dummy))


# Columns one batched solve should have at least, where folds allow: the solver's matrix
# products run 2.7x faster per column at 100 columns than at 20 (18,000 x 8,193 rows in
# float32, 2 cores: 86 against 233 GFLOP/s), so the folds of a 20-class problem are fitted
# together.
FOLD_BATCH_COLUMNS = 100


def svm_fold_scores(X_train, Y_train, X_val, C_grid, *, progress=None, **fit_kwargs):
    """The SVMs' held-out decision values at each C of the grid (one (n_val, m) array per
    C), fitted along the path of C (`fit_path`)."""
    path = fit_path(X_train, Y_train, C_grid, progress=progress, **fit_kwargs)
    return [X_val @ W.T.astype(np.float64) + b for W, b in path]


def held_out_scores(X, Y, folds, C_grid, *, progress=None, fold_scores=svm_fold_scores,
                    fold_mean=None, copy_X=True, **fit_kwargs):
    """Yield (validation rows, the probe's held-out scores at each grid value) per fold.

    The SVMs of several folds (the torch solver) are one solve on all the training rows:
    a fold's columns hold 0, which leaves a row out of a column's problem, for the rows
    outside its training part, so each column's problem is exactly its fold's. Fewer,
    wider matrix products, and no copy of each fold's rows. The first group of folds
    follows the path of C; later groups start each C from the mean of the finished folds'
    SVMs at that C (`fit_path`'s ``starts``). ``fold_mean`` (a dict), when given, receives at
    each grid index p the mean of all folds' SVMs (W, b): `refit_from`'s start.
    ``copy_X=False``: a fold solved alone has its training rows moved to the front of X in
    place (a view, not a copy; `RowOrder`), and X's rows are back in their order when the
    generator ends.
    """
    if fold_scores is not svm_fold_scores or fit_kwargs.get("solver") == "liblinear":
        for train, val in folds:
            yield val, fold_scores(X[train], Y[train], X[val], C_grid, progress=progress,
                                   **fit_kwargs)
        return
    m = Y.shape[1]
    together = max(1, FOLD_BATCH_COLUMNS // m)
    # One Gram matrix of all the training rows serves every fold's exact Newton steps (where
    # it pays), and one set of the data's top directions every fold's CG preconditioner.
    cache = fit_kwargs["gram_cache"] = fit_kwargs.get("gram_cache") or {"X": X}
    order = None if copy_X or together > 1 or not X.flags.writeable else RowOrder(X)
    if order is not None:
        cache["order"] = order  # the Gram matrix's rows follow the moves (`newton._gram`)
    sums, finished = {}, 0  # grid index -> [sum of W, sum of b] over the finished folds
    try:
        for start in range(0, len(folds), together):
            group = folds[start:start + together]
            step = None if progress is None else (
                lambda n=len(group): [progress() for _ in range(n)])
            X_group, Y_group = _group_problem(X, Y, group, order)
            rows = group[0][0] if len(group) == 1 else None
            starts = None if not finished else (
                lambda p, n=len(group), f=finished: _fold_mean_start(sums[p], f, n))
            path = fit_path(X_group, Y_group, C_grid, starts=starts, progress=step,
                            gram_rows=rows, **fit_kwargs)
            del X_group
            for i, (_, val) in enumerate(group):
                columns = slice(i * m, (i + 1) * m)
                _add_fold(sums, path, columns)
                finished += 1
                at = val if order is None else order.position(val)
                yield val, _scores_at_each_C(X, at, [(W[columns], b[columns]) for W, b in path])
            del path  # before the next group's fit (stacked Caltech-256 size: 40 MiB)
    finally:
        if order is not None:
            order.restore()
            del cache["order"]
    if fold_mean is not None:
        fold_mean.update({p: (W / finished, b / finished) for p, (W, b) in sums.items()})


def _add_fold(sums, path, columns):
    """Add one fold's SVMs at each C (``columns`` of the path's) to ``sums`` (grid index ->
    [sum of W, sum of b]), in place: a new sum at each C held the old one too.

    W is summed in float32: the sums only make starts (`_fold_mean_start`, `refit_from`),
    which the solver rounds to float32 anyway, and float64 sums at every C were 80 MiB at
    Caltech-256 size, stacked, held through the whole selection."""
    for p, (W, b) in enumerate(path):
        if p in sums:
            sums[p][0] += W[columns]
            sums[p][1] += b[columns]
        else:
            sums[p] = [W[columns].astype(np.float32), b[columns].astype(np.float64)]


def _fold_mean_start(sums, finished, folds):
    """The finished folds' mean SVMs (weights and bias: ``sums / finished``), repeated for
    each of ``folds`` folds' columns: a start for `fit_path`, in the sums' float32, to
    which the solver rounds its start anyway."""
    W, b = sums
    mean = np.concatenate([W, b[:, None].astype(W.dtype)], axis=1)
    mean /= finished
    return mean if folds == 1 else np.tile(mean, (folds, 1))


# Held-out rows are scored this many bytes of float64 at a time, never fewer than 256 rows
# (a product of 256 rows runs as fast per row as one of 3,000: 0.14 s either way for
# 3,084 x 8,192 rows and 257 columns; 1,024-row blocks of stacked rows, their float32
# gather beside them, were 96 MiB at the selection's peak).
HELD_OUT_BLOCK_BYTES = 8 * 2**20
HELD_OUT_BLOCK_MIN_ROWS = 256


def _scores_at_each_C(X, rows, path):
    """``X[rows] @ W.T + b`` for each (W, b) of the path, in float64, a block of rows at a
    time, so that the held-out part is never copied whole (30,000 images: 70 MiB, and 140
    MiB in float64); each C's W is converted to float64 once, not for every block."""
    step = max(HELD_OUT_BLOCK_MIN_ROWS, HELD_OUT_BLOCK_BYTES // (8 * max(1, X.shape[1])))
    bounds = np.linspace(0, len(rows), max(1, len(rows) // step) + 1).astype(int)  # equal blocks
    scores = []
    for W, b in path:
        out = np.empty((len(rows), len(b)))
        W64 = W.T.astype(np.float64)
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
            np.matmul(X[rows[start:stop]].astype(np.float64), W64, out=out[start:stop])
        out += b
        scores.append(out)
        del W64
    return scores


def _group_problem(X, Y, group, order=None):
    """Rows and targets of one solve for a group of folds: a fold alone is its own rows
    (wide enough; moved to the front of X by ``order`` when given, else copied); several
    share all rows, each fold's columns 0 outside its training part."""
    if len(group) == 1:
        train = group[0][0]
        return (X[train] if order is None else order.front(train)), Y[train]
    m = Y.shape[1]
    Y_group = np.zeros((len(Y), m * len(group)), dtype=Y.dtype)
    for i, (train, _) in enumerate(group):
        Y_group[train, i * m:(i + 1) * m] = Y[train]
    return X, Y_group


def select_C(X, Y, C_grid, *, cv=3, strata=None, random_state=0, progress=None,
             fold_scores=svm_fold_scores, fold_mean=None, **fit_kwargs):
    """Held-out VOC AP of every class at every C, averaged over folds of the training data.

    ``fold_scores(X_train, Y_train, X_val, grid, progress=..., **fit_kwargs)``: the probe's
    held-out scores at each grid value (default: the SVMs'); ``C_grid`` may be any
    ascending grid of the probe's hyper-parameter (kNN: k).

    Returns
    -------
    scores : ndarray of shape (n_classes, n_C)
        Mean held-out AP (NaN where no fold had a held-out positive for the class).
    best : ndarray of shape (n_classes,)
        Index into ``C_grid`` of the best C (the smallest among ties; the middle of the
        grid when no fold could score the class).
    """
    n_classes, n_C = Y.shape[1], len(C_grid)
    totals = np.zeros((n_classes, n_C))
    counts = np.zeros((n_classes, n_C))
    folds = cv_folds(len(Y), strata, cv, random_state)
    for val, path in held_out_scores(X, Y, folds, C_grid, progress=progress,
                                     fold_scores=fold_scores, fold_mean=fold_mean,
                                     **fit_kwargs):
        for p, scores in enumerate(path):
            for k in range(n_classes):
                if (Y[val, k] == 1).any():
                    totals[k, p] += voc_ap(scores[:, k], Y[val, k])
                    counts[k, p] += 1
        del path  # not held through the next fold's fits
    with np.errstate(invalid="ignore"):
        mean = totals / counts
    best = np.where(
        counts[:, 0] > 0, np.argmax(np.nan_to_num(mean, nan=-1.0), axis=1), n_C // 2
    )
    return mean, best


def select_shared_C(X, Y, C_grid, *, strata, cv=5, random_state=0, progress=None,
                    fold_scores=svm_fold_scores, fold_mean=None, **fit_kwargs):
    """One C for all classes: cross-validated mean class recall of the argmax prediction.

    Every training image is predicted once by the SVMs fitted without its fold (out-of-fold
    predictions, at each C of the grid); the C whose predictions have the best mean class
    recall over the training images wins (the smallest among ties).

    Parameters
    ----------
    X : ndarray of shape (n, d)
    Y : ndarray of shape (n, n_svms)
        One-vs-rest targets (a single column for two classes: class 1 vs class 0).
    C_grid : sequence of float, ascending
    strata : ndarray of shape (n,)
        Class index of each image (also stratifies the folds).
    cv : int or float
        Folds, or a held-out fraction (then only the held-out images are predicted).
    fold_scores : callable
        The probe's held-out scores at each grid value (see `select_C`).
    fold_mean : dict, optional
        Filled with the folds' mean SVMs at each grid index (see `held_out_scores`).

    Returns
    -------
    scores : ndarray of shape (n_C,)
        Cross-validated mean class recall at each C.
    best : int
        Index into ``C_grid`` of the chosen C.
    """
    predicted = np.full((len(C_grid), len(Y)), -1)
    held = np.zeros(len(Y), dtype=bool)
    folds = cv_folds(len(Y), strata, cv, random_state)
    for val, path in held_out_scores(X, Y, folds, C_grid, progress=progress,
                                     fold_scores=fold_scores, fold_mean=fold_mean,
                                     **fit_kwargs):
        for p, scores in enumerate(path):
            predicted[p, val] = (scores[:, 0] > 0) if scores.shape[1] == 1 else scores.argmax(1)
        held[val] = True
        del path  # the fold's scores at each C, not held through the next fold's fits
    recalls = np.array([mean_class_recall(strata[held], predicted[p, held])
                        for p in range(len(C_grid))])
    return recalls, int(np.argmax(recalls))
