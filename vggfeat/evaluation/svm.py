"""One-vs-rest linear SVMs with C chosen on training data only.

How C is chosen depends on what is measured. Multi-label data (VOC: AP per class) is one
binary problem per class, so each class picks its own C by held-out AP. Single-label
multi-class data (Caltech: mean class recall of the argmax) is one problem: the argmax
compares the classes' scores, which are comparable only when every SVM has the same C, so
one C is chosen for all classes by the cross-validated mean class recall of the argmax.

The problem solved for each class k and each candidate C is liblinear's L2-regularised
squared-hinge (L2-loss) SVM, bias included in the regularised weights (liblinear's
``intercept_scaling=1``)::

    min_w  0.5 * ||w||^2 + C * sum_i max(0, 1 - y_i * (w . [x_i, 1]))^2

so the default torch solver and ``solver="liblinear"`` (scikit-learn's ``LinearSVC``, the
reference path) fit the same models. The torch solver is a truncated Newton method
(conjugate gradient on the generalised Hessian, exact line search), batched: every class
and every value of C is one column of the same matrix products, which is what makes it
fast on CPU and GPU alike. A class whose active set (rows with margin < 1) is small, as at
large C, takes exact Newton steps instead: a Cholesky solve on the Gram matrix of its
active rows (Woodbury identity), the Gram matrix computed once per training set.

VOC labels: in a 2-D label matrix containing -1, a 0 marks a "difficult" example which is
left out of that class's training (``difficult="ignore"``, as the devkit leaves it out of
scoring) or counted as positive (``difficult="positive"``).
"""
from __future__ import annotations

import sys

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d

from vggfeat.evaluation.metrics import mean_class_recall, voc_ap
from vggfeat.utils.progress import progress_bar

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data
except ImportError:  # pragma: no cover - older scikit-learn
    def validate_data(estimator, X, y="no_validation", reset=True, **kwargs):
        if isinstance(y, str):
            return estimator._validate_data(X, reset=reset, **kwargs)
        return estimator._validate_data(X, y, reset=reset, **kwargs)

# Default grid of C (choice: a decade apart around 1, suited to L2-normalised descriptors).
C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)
# Largest shared Gram matrix (n x n) the solver keeps: 4 GiB, n = 32,768 rows in float32.
GRAM_MAX_BYTES = 4 << 30
C_SELECTIONS = ("auto", "shared", "per-class")


# --------------------------------------------------------------------------------------
# Solvers: X (n, d), Y (n, m) in {-1, 0, +1} (0: ignored), C (m,) -> W (m, d), b (m,)
# --------------------------------------------------------------------------------------


def solve_squared_hinge_torch(X, Y, C, *, tol=1e-3, max_iter=100, max_cg=500, device="cpu",
                              dtype=torch.float32, W0=None, progress=None, direct_max=700,
                              gram_cache=None):
    """Fit m squared-hinge linear SVMs on the same data at once (truncated Newton).

    Parameters
    ----------
    X : ndarray of shape (n, d)
    Y : ndarray of shape (n, m)
        +1 / -1 targets per column; 0 leaves a sample out of that column's problem.
    C : ndarray of shape (m,)
    tol : float
        Stop a column when its gradient norm is below ``tol`` times the smaller of ||w|| and
        the gradient norm at w = 0. (Relative to ||w|| alone is what makes large C
        accurate: the norm at w = 0 grows with C.) 1e-3 gives objectives within ~1e-7 of
        liblinear's optimum and the same predictions.
    max_iter : int
        Newton iterations at most.
    max_cg : int
        Conjugate-gradient steps per Newton iteration at most.
    device : str or torch.device
    dtype : torch.dtype
    W0 : ndarray of shape (m, d + 1), optional
        Starting weights (bias last), e.g. the solution for a smaller C.
    progress : callable, optional
        Called with the number of unconverged columns after each Newton iteration.
    direct_max : int
        A column whose active set (rows with margin < 1) has at most this many rows gets
        the exact Newton step, from the Woodbury identity on the Gram matrix of its active
        rows (a small Cholesky solve), instead of conjugate gradient. That is the common
        case at large C, where CG needs hundreds of steps. 0: always CG.
    gram_cache : dict, optional
        Holds the Gram matrix ``[X, 1] [X, 1]^T`` (computed on first need) so that several
        calls on the same X (e.g. a path of C values) compute it once.

    Returns
    -------
    W : ndarray of shape (m, d)
    b : ndarray of shape (m,)
    n_iter : ndarray of shape (m,)
        Newton iterations used per column.
    """
    with torch.no_grad():
        # np.require copies only read-only input (e.g. a memory map), which torch refuses.
        X = torch.as_tensor(np.require(X, requirements="W"), device=device).to(dtype)
        ones = torch.ones(X.shape[0], 1, dtype=dtype, device=device)
        Xa = torch.cat([X, ones], dim=1)  # bias as a regularised feature, like liblinear
        del X
        Y = torch.as_tensor(np.asarray(Y), device=device).to(dtype)
        C = torch.as_tensor(np.asarray(C), device=device).to(dtype)
        m = Y.shape[1]
        if W0 is None:
            W = torch.zeros(Xa.shape[1], m, dtype=dtype, device=device)
        else:
            W = torch.as_tensor(np.asarray(W0).T, device=device).to(dtype).contiguous()
        basis = None
        if 2 * Xa.shape[0] < Xa.shape[1]:
            # Fewer rows than features (e.g. Caltech-101: 2,448 x 12,289): the optimum lies in
            # the row space of Xa, so solve the same problem in its coordinates, r <= n.
            Xa, basis = _row_space(Xa)
            W = basis.T @ W
        Z = Xa @ W
        g0 = (2 * C * (Xa.T @ Y)).norm(dim=0)  # gradient at w = 0 is -2C Xa^T Y
        n_iter = np.zeros(m, dtype=np.int64)
        active = torch.arange(m, device=device)
        for _ in range(max_iter):
            Wa, Za, Ya, Ca = W[:, active], Z[:, active], Y[:, active], C[active]
            A = ((Ya * Za < 1) & (Ya != 0)).to(dtype)
            G = Wa + 2 * Ca * (Xa.T @ (A * (Za - Ya)))
            gnorm = G.norm(dim=0)
            todo = gnorm > tol * torch.minimum(g0[active], Wa.norm(dim=0))
            if progress is not None:
                progress(int(todo.sum()))
            if not todo.any():
                break
            active, Wa, Za, Ya, Ca, A, G, gnorm = (
                t[..., todo] for t in (active, Wa, Za, Ya, Ca, A, G, gnorm)
            )
            # Forcing term: loose early, tight near the optimum (superlinear convergence).
            eta = torch.clamp(torch.sqrt(gnorm / g0[active]), min=0.01, max=0.1)
            # CG would end in d + 1 steps in exact arithmetic; allow float32 some slack.
            cg_steps = min(max_cg, 2 * Xa.shape[1])
            direct = A.sum(0) <= direct_max
            # The n x n Gram matrix is shared by every class only while it fits (ImageNet's
            # 1.28M rows would need 6.5 TB); beyond, each class's block is computed alone.
            fits = Xa.shape[0] ** 2 * Xa.element_size() <= GRAM_MAX_BYTES
            if direct.all():
                D, XD = _woodbury_newton(Xa, A, Ca, G, _gram(Xa, gram_cache) if fits else None)
            elif direct.any():
                D, XD = torch.empty_like(G), torch.empty_like(Za)
                D[:, direct], XD[:, direct] = _woodbury_newton(
                    Xa, A[:, direct], Ca[direct], G[:, direct],
                    _gram(Xa, gram_cache) if fits else None)
                rest = ~direct
                D[:, rest], XD[:, rest] = _conjugate_gradient(
                    Xa, A[:, rest], Ca[rest], -G[:, rest], (eta * gnorm)[rest], cg_steps)
            else:
                D, XD = _conjugate_gradient(Xa, A, Ca, -G, eta * gnorm, cg_steps)
            step = _line_search(Wa, D, Za, XD, Ya, Ca)
            W[:, active] = Wa + step * D
            Z[:, active] = Za + step * XD
            n_iter[active.cpu().numpy()] += 1
        if basis is not None:
            W = basis @ W
        W = W.T.double().cpu().numpy()
    return W[:, :-1], W[:, -1], n_iter


def _row_space(Xa):
    """Coordinates of the rows of Xa in an orthonormal basis V of its row space.

    From the Gram matrix K = Xa Xa^T = U diag(lam) U^T: V = Xa^T U lam^-1/2 and
    Xa V = U lam^1/2. For w = V v, Xa w = (Xa V) v and ||w|| = ||v||: the same objective.
    """
    X64 = Xa.double()
    lam, U = torch.linalg.eigh(X64 @ X64.T)
    keep = lam > lam.max() * 1e-10  # numerically null directions carry no data
    lam, U = lam[keep], U[:, keep]
    basis = (X64.T @ (U / lam.sqrt())).to(Xa.dtype)
    return (U * lam.sqrt()).to(Xa.dtype), basis


def _gram(Xa, cache):
    """K = Xa Xa^T, from ``cache`` when it holds one for this shape (else stored there)."""
    if cache is not None:
        K = cache.get("K")
        if K is not None and K.shape[0] == Xa.shape[0] and K.device == Xa.device:
            return K
    K = Xa @ Xa.T
    if cache is not None:
        cache["K"] = K
    return K


def _woodbury_newton(Xa, A, C, G, K):
    """Exact Newton directions D = -(I + 2C Xa^T diag(A) Xa)^-1 G, column by column; also Xa D.

    With S the active rows of a column, (I + 2C X_S^T X_S)^-1 = I - X_S^T (I / 2C + K_SS)^-1
    X_S (Woodbury), so each column costs a Cholesky solve of size |S| on a block of the Gram
    matrix K, plus matrix products batched over all columns.
    """
    XG = Xa @ G
    U = torch.zeros_like(XG)
    for j in range(G.shape[1]):
        rows = torch.nonzero(A[:, j], as_tuple=True)[0]
        if rows.numel() == 0:
            continue
        M = (K[rows.unsqueeze(1), rows] if K is not None else Xa[rows] @ Xa[rows].T).double()
        M.diagonal().add_(1.0 / (2.0 * float(C[j])))
        L, info = torch.linalg.cholesky_ex(M)
        rhs = XG[rows, j].double().unsqueeze(1)
        if int(info) == 0:
            u = torch.cholesky_solve(rhs, L)
        else:  # pragma: no cover - not positive definite in floating point: fall back to LU
            u = torch.linalg.solve(M, rhs)
        U[rows, j] = u.squeeze(1).to(U.dtype)
    D = Xa.T @ U - G
    return D, Xa @ D


def _conjugate_gradient(Xa, A, C, B, tol, max_cg):
    """Solve (I + 2C Xa^T diag(A) Xa) x = B column by column; also return Xa @ x.

    Xa @ x is accumulated from the products CG computes anyway, so the line search
    needs no extra pass over the data.
    """
    x = torch.zeros_like(B)
    Xx = torch.zeros(Xa.shape[0], B.shape[1], dtype=B.dtype, device=B.device)
    r = B.clone()
    p = r.clone()
    rr = (r * r).sum(0)
    idx = torch.arange(B.shape[1], device=B.device)
    for _ in range(max_cg):
        pi = p[:, idx]
        Xp = Xa @ pi
        Hp = pi + 2 * C[idx] * (Xa.T @ (A[:, idx] * Xp))
        alpha = rr[idx] / (pi * Hp).sum(0)
        x[:, idx] += alpha * pi
        Xx[:, idx] += alpha * Xp
        r[:, idx] -= alpha * Hp
        rr_new = (r[:, idx] ** 2).sum(0)
        p[:, idx] = r[:, idx] + (rr_new / rr[idx]) * pi
        rr[idx] = rr_new
        idx = idx[rr_new.sqrt() > tol[idx]]
        if idx.numel() == 0:
            break
    return x, Xx


def _line_search(W, D, Z, XD, Y, C, max_steps=30):
    """Exact minimisation of the objective along D (piecewise quadratic): 1-D Newton."""
    wd, dd = (W * D).sum(0), (D * D).sum(0)
    used = Y != 0
    t = torch.ones_like(wd)
    for _ in range(max_steps):
        M = Z + t * XD
        AXD = ((Y * M < 1) & used).to(W.dtype) * XD
        slope = wd + t * dd + 2 * C * (AXD * (M - Y)).sum(0)
        curvature = dd + 2 * C * (AXD * XD).sum(0)
        delta = slope / curvature
        t = t - delta
        if bool((delta.abs() <= 1e-6 * t.abs().clamp(min=1)).all()):
            break
    return t


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


def fit_svms(X, Y, C, *, solver="torch", tol=None, max_iter=None, device="cpu", W0=None,
             gram_cache=None):
    """One SVM per column of Y with its own C; ``tol``/``max_iter`` None: solver default.

    ``gram_cache``: a dict shared by calls on the same X (torch solver; see
    :func:`solve_squared_hinge_torch`)."""
    kwargs = {"W0": W0}
    if tol is not None:
        kwargs["tol"] = tol
    if max_iter is not None:
        kwargs["max_iter"] = max_iter
    if solver == "torch":
        return solve_squared_hinge_torch(X, Y, C, device=device, gram_cache=gram_cache,
                                         **kwargs)
    if solver == "liblinear":
        return solve_squared_hinge_liblinear(X, Y, C, **kwargs)
    raise ValueError(f"solver must be 'torch' or 'liblinear', not {solver!r}")


def fit_path(X, Y, C_grid, *, progress=None, **fit_kwargs):
    """All columns of Y at each C of an ascending grid, each C warm-started from the last.

    Returns a list of (W, b) pairs, one per C.
    """
    path, W0, cache = [], None, {}
    for c in C_grid:
        W, b, _ = fit_svms(X, Y, np.full(Y.shape[1], c), W0=W0, gram_cache=cache,
                           **fit_kwargs)
        path.append((W, b))
        W0 = np.concatenate([W, b[:, None]], axis=1)
        if progress is not None:
            progress()
    return path


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
    cache = {}
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


# --------------------------------------------------------------------------------------
# Choosing C on training data only
# --------------------------------------------------------------------------------------


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
    """(train rows, validation rows) pairs; ``strata`` are class ids for stratification."""
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
    return list(KFold(int(cv), shuffle=True, random_state=random_state).split(dummy))


def select_C(X, Y, C_grid, *, cv=3, strata=None, random_state=0, progress=None,
             **fit_kwargs):
    """Held-out VOC AP of every class at every C, averaged over folds of the training data.

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
    for train, val in cv_folds(len(Y), strata, cv, random_state):
        path = fit_path(X[train], Y[train], C_grid, progress=progress, **fit_kwargs)
        for p, (W, b) in enumerate(path):
            scores = X[val] @ W.T + b
            for k in range(n_classes):
                if (Y[val, k] == 1).any():
                    totals[k, p] += voc_ap(scores[:, k], Y[val, k])
                    counts[k, p] += 1
    with np.errstate(invalid="ignore"):
        mean = totals / counts
    best = np.where(
        counts[:, 0] > 0, np.argmax(np.nan_to_num(mean, nan=-1.0), axis=1), n_C // 2
    )
    return mean, best


def select_shared_C(X, Y, C_grid, *, strata, cv=5, random_state=0, progress=None,
                    **fit_kwargs):
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

    Returns
    -------
    scores : ndarray of shape (n_C,)
        Cross-validated mean class recall at each C.
    best : int
        Index into ``C_grid`` of the chosen C.
    """
    predicted = np.full((len(C_grid), len(Y)), -1)
    held = np.zeros(len(Y), dtype=bool)
    for train, val in cv_folds(len(Y), strata, cv, random_state):
        path = fit_path(X[train], Y[train], C_grid, progress=progress, **fit_kwargs)
        for p, (W, b) in enumerate(path):
            scores = X[val] @ W.T + b
            predicted[p, val] = (scores[:, 0] > 0) if scores.shape[1] == 1 else scores.argmax(1)
        held[val] = True
    recalls = np.array([mean_class_recall(strata[held], predicted[p, held])
                        for p in range(len(C_grid))])
    return recalls, int(np.argmax(recalls))


# --------------------------------------------------------------------------------------
# The estimator
# --------------------------------------------------------------------------------------


class LinearSVMProbe(ClassifierMixin, BaseEstimator):
    """One-vs-rest linear SVMs on fixed descriptors, C chosen by cross-validation.

    Parameters
    ----------
    C : float or sequence of float, default=C_GRID
        One value: used for every class. Several: chosen on the training data as
        `C_selection` says (ties: the smallest C), then the SVMs are refit on all of it.
    C_selection : {"auto", "shared", "per-class"}, default="auto"
        "shared": one C for all classes, the best cross-validated mean class recall of the
        argmax prediction (single-label data only). "per-class": each class its best
        held-out VOC AP. "auto": shared for single-label data, per-class for multi-label.
    cv : int or float, default=3
        An int: k folds (stratified for single-label data). A float in (0, 1): that
        fraction of the training images held out once (per class for single-label data).
    solver : {"torch", "liblinear"}, default="torch"
        "torch": batched truncated Newton (all classes and Cs together); "liblinear":
        scikit-learn's LinearSVC per class and C, the reference.
    difficult : {"ignore", "positive"}, default="ignore"
        For VOC-style label matrices (values 1, 0, -1): what a 0 label means in training.
    tol : float, optional
        Solver tolerance; default 1e-3 relative gradient norm (torch) or 1e-4 (liblinear,
        LinearSVC's default).
    max_iter : int, optional
        Solver iteration limit; default 100 Newton steps (torch) or 1000 (liblinear).
    device : str, default="cpu"
        Torch device for the torch solver ("cuda" for a GPU).
    random_state : int, default=0
        Seed of the cross-validation folds.
    verbose : bool, default=False
        Show a progress bar (one step per fold and C) on stderr.

    Attributes
    ----------
    classes_ : ndarray
        Class labels (single-label data) or output indices (multi-label data).
    coef_ : ndarray of shape (n_svms, n_features)
        One row per class (a single row for binary data).
    intercept_ : ndarray of shape (n_svms,)
    C_ : ndarray of shape (n_svms,)
        The C each class uses (all equal with shared selection).
    C_selection_ : {"shared", "per-class"}
        How C was chosen.
    cv_scores_ : ndarray of shape (n_C,) or (n_svms, n_C), or None
        Shared: cross-validated mean class recall per C. Per-class: mean held-out AP per
        class and C. None when C is a single value.
    multi_label_ : bool
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[0.0, 1.0], [0.1, 0.9], [1.0, 0.0], [0.9, 0.2]] * 5)
    >>> y = np.array([0, 0, 1, 1] * 5)
    >>> probe = LinearSVMProbe(C=1.0).fit(X, y)
    >>> probe.predict([[0.0, 1.0], [1.0, 0.1]]).tolist()
    [0, 1]
    """

    def __init__(self, C=C_GRID, cv=3, solver="torch", difficult="ignore", tol=None,
                 max_iter=None, device="cpu", random_state=0, verbose=False,
                 C_selection="auto"):
        self.C = C
        self.C_selection = C_selection
        self.cv = cv
        self.solver = solver
        self.difficult = difficult
        self.tol = tol
        self.max_iter = max_iter
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags

    def _targets(self, y):
        """-> (Y in {-1, 0, 1} of shape (n, n_svms), strata or None)."""
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] > 1:
            self.multi_label_ = True
            if not np.isin(y, (-1, 0, 1)).all():
                raise ValueError("a label matrix must hold 1/0 (indicator) or 1/0/-1 (VOC)")
            Y = y.astype(np.int8)
            if (Y == -1).any():  # VOC convention: 0 is "difficult"
                if self.difficult not in ("ignore", "positive"):
                    raise ValueError("difficult must be 'ignore' or 'positive'")
                if self.difficult == "positive":
                    Y = np.where(Y == 0, 1, Y).astype(np.int8)
            else:  # scikit-learn's indicator convention: 0 is negative
                Y = np.where(Y == 1, 1, -1).astype(np.int8)
            self.classes_ = np.arange(Y.shape[1])
            return Y, None
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        self.multi_label_ = False
        self.classes_, strata = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(
                f"need at least two classes to train, found only {self.classes_.tolist()}"
            )
        if len(self.classes_) == 2:  # one SVM for classes_[1], as scikit-learn does
            return np.where(strata == 1, 1, -1)[:, None].astype(np.int8), strata
        Y = np.where(strata[:, None] == np.arange(len(self.classes_)), 1, -1).astype(np.int8)
        return Y, strata

    def fit(self, X, y):
        """Fit one SVM per class.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Finite descriptors.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Class labels, or a label matrix (1/0 indicator, or VOC 1/0/-1 where 0 is
            difficult).

        Returns
        -------
        self
        """
        X, y = validate_data(self, X, y, multi_output=True, dtype=(np.float64, np.float32),
                             ensure_min_samples=2)
        Y, strata = self._targets(y)
        for k in range(Y.shape[1]):
            if not (Y[:, k] == 1).any() or not (Y[:, k] == -1).any():
                kind = "positive" if not (Y[:, k] == 1).any() else "negative"
                name = self.classes_[k].item() if self.multi_label_ else self.classes_[k]
                raise ValueError(f"class {name!r} has no {kind} training example")
        grid = sorted(float(c) for c in np.atleast_1d(self.C))
        if not grid or min(grid) <= 0:
            raise ValueError(f"C must be positive, got {self.C!r}")
        fit_kwargs = {"solver": self.solver, "tol": self.tol, "max_iter": self.max_iter,
                      "device": self.device}
        self.C_selection_ = self._selection()
        self.cv_scores_ = None
        chosen = np.zeros(Y.shape[1], dtype=np.int64)
        n_folds = 0 if len(grid) == 1 else 1 if isinstance(self.cv, float) else int(self.cv)
        with progress_bar(total=n_folds * len(grid) + 1, desc="SVMs (fold x C)", file=sys.stderr,
                          disable=not self.verbose, leave=False) as bar:
            if len(grid) > 1 and self.C_selection_ == "shared":
                self.cv_scores_, best = select_shared_C(
                    X, Y, grid, cv=self.cv, strata=strata, random_state=self.random_state,
                    progress=bar.update, **fit_kwargs,
                )
                chosen[:] = best
            elif len(grid) > 1:
                self.cv_scores_, chosen = select_C(
                    X, Y, grid, cv=self.cv, strata=strata, random_state=self.random_state,
                    progress=bar.update, **fit_kwargs,
                )
            self.C_ = np.asarray(grid)[chosen]
            W, b, self.n_iter_ = refit_path(X, Y, grid, chosen, **fit_kwargs)
            bar.update()
        self.coef_, self.intercept_ = W, b
        return self

    def _selection(self) -> str:
        if self.C_selection not in C_SELECTIONS:
            raise ValueError(f"C_selection must be one of {C_SELECTIONS}, got "
                             f"{self.C_selection!r}")
        if self.C_selection == "auto":
            return "per-class" if self.multi_label_ else "shared"
        if self.C_selection == "shared" and self.multi_label_:
            raise ValueError("C_selection='shared' needs single-label data (one class per "
                             "sample); multi-label data chooses C per class")
        return self.C_selection

    def decision_function(self, X):
        """Signed distance to each class's hyperplane.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_svms), or (n_samples,) for binary data
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        scores = X @ self.coef_.T + self.intercept_
        return scores.ravel() if scores.shape[1] == 1 and not self.multi_label_ else scores

    def predict(self, X):
        """Class with the highest score (label indicator for multi-label data)."""
        scores = self.decision_function(X)
        if self.multi_label_:
            return (scores > 0).astype(np.int64)
        if scores.ndim == 1:
            return self.classes_[(scores > 0).astype(np.int64)]
        return self.classes_[np.argmax(scores, axis=1)]
