"""The reference solver: scikit-learn's ``LinearSVC`` (liblinear) on the same problems."""
from __future__ import annotations

import numpy as np


def solve_squared_hinge_liblinear(X, Y, C, *, tol=1e-4, max_iter=1000, W0=None):
    """The reference path: scikit-learn's ``LinearSVC`` on the same problems.

    Used as a scikit-learn user would use it at its fastest: X converted to float64 once;
    when every column is one class of a one-vs-rest coding over the same rows and shares
    one C, a single multi-class ``LinearSVC`` solves them all (liblinear's one-vs-rest
    loop, which converts the data to its own format once per call, ~2 s at Caltech-256
    size, instead of once per class); otherwise one binary ``LinearSVC`` per column, given
    a sparse matrix when X is mostly zeros (ReLU features are): liblinear copies only the
    non-zeros into its format on every call, and from a sparse matrix that copy takes half
    the time of scanning a dense one. ``W0`` is accepted for symmetry with the torch solver
    and ignored (liblinear's dual solver starts from zero).
    """
    X = np.ascontiguousarray(X, dtype=np.float64)
    Y, C = np.asarray(Y), np.asarray(C, dtype=np.float64)
    labels = _one_vs_rest_labels(Y)
    if labels is not None and np.all(C == C[0]):
        svc = _fit_linear_svc(C[0], tol, max_iter, X, labels)
        return svc.coef_, svc.intercept_, np.full(Y.shape[1], -1)
    if Y.shape[1] > 8 and np.count_nonzero(X) < X.size // 2:
        import scipy.sparse

        X = scipy.sparse.csr_matrix(X)
    W = np.zeros((Y.shape[1], X.shape[1]))
    b = np.zeros(Y.shape[1])
    for j in range(Y.shape[1]):
        rows = Y[:, j] != 0
        svc = _fit_linear_svc(C[j], tol, max_iter, X if rows.all() else X[rows], Y[rows, j])
        # LinearSVC orders classes (-1, +1): its decision value is for +1.
        W[j], b[j] = svc.coef_[0], svc.intercept_[0]
    return W, b, np.full(Y.shape[1], -1)


def _one_vs_rest_labels(Y: np.ndarray) -> np.ndarray | None:
    """Column index of each row's +1 when Y (rows x 3+ columns) is a one-vs-rest coding of
    one label per row with every row used; None otherwise."""
    if Y.ndim != 2 or Y.shape[1] < 3 or not np.all((Y == 1).sum(axis=1) == 1):
        return None
    if not np.all((Y == 1) | (Y == -1)):
        return None
    labels = Y.argmax(axis=1)
    return labels if len(np.unique(labels)) == Y.shape[1] else None


def _fit_linear_svc(C: float, tol: float, max_iter: int, X: np.ndarray, y: np.ndarray):
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    svc = LinearSVC(C=float(C), loss="squared_hinge", dual=True, tol=tol, max_iter=max_iter,
                    intercept_scaling=1.0)
    with warnings.catch_warnings():  # hitting max_iter is the reference's documented limit
        warnings.simplefilter("ignore", ConvergenceWarning)
        return svc.fit(X, y)
