"""Fitting many SVMs with either solver, and along a grid of C (warm starts).

Both solvers take X (n, d), Y (n, m) in {-1, 0, +1} (0: the row is left out of that
column's problem) and C (m,), and return W (m, d), b (m,) and the iterations used.
"""
from __future__ import annotations

import numpy as np

from vggfeat.evaluation.svm.liblinear import solve_squared_hinge_liblinear
from vggfeat.evaluation.svm.newton import solve_squared_hinge_torch


def fit_svms(X, Y, C, *, solver="torch", tol=None, max_iter=None, device="cpu", W0=None,
             gram_cache=None, gram_rows=None):
    """One SVM per column of Y with its own C; ``tol``/``max_iter`` None: solver default.

    ``gram_cache``, ``gram_rows``: a dict shared by calls on the same X, or on rows
    ``gram_rows`` of ``gram_cache["X"]`` (torch solver; see
    :func:`solve_squared_hinge_torch`)."""
    kwargs = {"W0": W0}
    if tol is not None:
        kwargs["tol"] = tol
    if max_iter is not None:
        kwargs["max_iter"] = max_iter
    if solver == "torch":
        return solve_squared_hinge_torch(X, Y, C, device=device, gram_cache=gram_cache,
                                         gram_rows=gram_rows, **kwargs)
    if solver == "liblinear":
        return solve_squared_hinge_liblinear(X, Y, C, **kwargs)
    raise ValueError(f"solver must be 'torch' or 'liblinear', not {solver!r}")


def fit_path(X, Y, C_grid, *, starts=None, progress=None, gram_cache=None, **fit_kwargs):
    """All columns of Y at each C of an ascending grid, each C warm-started from the last,
    or, with ``starts`` (a function of the grid index p), each C from its own start
    ``starts(p)`` ((m, d + 1) weights, bias last), made when that C's turn comes.

    Cross-validation starts a fold at each C from the folds before it at that C: 80% of
    the rows are the same, so those solutions lie closer than the fold's own at the C ten
    times smaller (Caltech-256 size, 12,336 rows x 4,097, 257 classes, second fold:
    C = 0.1 4.6 s against 6.8 s along the path, C = 1 9.5 against 11.9, C = 10 18.5
    against 22.3, C = 100 20.2 against 28.0).

    Returns a list of (W, b) pairs, one per C; W in float32, which holds the solver's
    float32 weights exactly in half the memory (stacked Caltech-256 size: 8 MiB a C).
    """
    path, W0, cache = [], None, {} if gram_cache is None else gram_cache
    for p, c in enumerate(C_grid):
        start = W0 if starts is None else starts(p)
        W, b, _ = fit_svms(X, Y, np.full(Y.shape[1], c), W0=start, gram_cache=cache,
                           **fit_kwargs)
        del start
        if starts is None:
            W0 = _exactly_float32(np.concatenate([W, b[:, None]], axis=1))  # the next start
        path.append((_exactly_float32(W), b))
        del W  # the float64 copy, not held through the next fit
        if progress is not None:
            progress()
    return path


def _exactly_float32(W):
    """W as float32 when that loses nothing (the torch solver's float32 weights), else W."""
    W32 = W.astype(np.float32)
    return W32 if np.array_equal(W32, W) else W


def refit_path(X, Y, C_grid, chosen, **fit_kwargs):
    """Each column at its chosen ``C_grid[chosen[k]]``, reached along the ascending grid
    (warm starts), so a large C starts from the solution for the next smaller one and
    columns that chose a small C stop early. liblinear starts from zero whatever it is
    given, so there each column is fitted once, at its own C."""
    if fit_kwargs.get("solver") == "liblinear":
        return fit_svms(X, Y, np.take(C_grid, chosen), **fit_kwargs)
    n_cols = Y.shape[1]
    W = np.zeros((n_cols, X.shape[1]))
    b = np.zeros(n_cols)
    n_iter = np.zeros(n_cols, dtype=np.int64)
    W0 = previous = None
    cache = fit_kwargs.pop("gram_cache", None) or {}
    for p, c in enumerate(C_grid):
        cols = np.flatnonzero(chosen >= p)
        if cols.size == 0:
            break
        start = None if W0 is None else W0[np.searchsorted(previous, cols)]
        Wp, bp, it = fit_svms(X, Y[:, cols], np.full(cols.size, c), W0=start,
                              gram_cache=cache, **fit_kwargs)
        n_iter[cols] += it
        done = chosen[cols] == p
        W[cols[done]], b[cols[done]] = Wp[done], bp[done]
        W0, previous = np.concatenate([Wp, bp[:, None]], axis=1), cols
    return W, b, n_iter


def refit_from(X, Y, C_grid, chosen, fold_mean, **fit_kwargs):
    """Each column at its chosen ``C_grid[chosen[k]]`` in one solve, started from the
    cross-validation folds' mean SVM at that C (``fold_mean[p] = (W, b)``, filled by the
    selection) instead of along the path from the smallest C: each fold's model saw four
    fifths of these rows, so their mean is already close (30,000 images, 20 classes,
    C = 100: the refit went from the whole path to about one fit)."""
    W0 = np.stack([np.append(fold_mean[p][0][k], fold_mean[p][1][k])
                   for k, p in enumerate(chosen)])
    return fit_svms(X, Y, np.take(C_grid, chosen), W0=W0, **fit_kwargs)
