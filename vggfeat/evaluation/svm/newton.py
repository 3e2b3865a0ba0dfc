"""The default solver: batched truncated Newton for squared-hinge linear SVMs, in torch.

Every class and every value of C is one column of the same matrix products, which is
what makes it fast on CPU and GPU alike (conjugate gradient on the generalised Hessian,
preconditioned on the data's dominant directions: `conjugate_gradient`; exact line
search). A column whose active set (rows with margin < 1) is small, as at large C, takes
exact Newton steps instead: a Cholesky solve on the Gram matrix of its active rows
(Woodbury identity), the Gram matrix computed once per training set where it pays and
kept as its lower triangle (`gram`).

A column also stops when float32 can take it no further (`STALL_DECREASE`): at large C on
many rows the gradient can stay just above the tolerance while the line search's steps
shrink to noise, and such a column used to run to ``max_iter`` (100 iterations, most of a
C = 100 fit's time at 30,000 rows).
"""
from __future__ import annotations

import numpy as np
import torch

from vggfeat.evaluation.svm.conjugate_gradient import conjugate_gradient, preconditioner
from vggfeat.evaluation.svm.gram import gram_block, gram_fits, gram_pays, gram_size, shared_gram
from vggfeat.evaluation.svm.line_search import line_search

# A column whose objective fell by less than this fraction in each of STALLED_ITERATIONS
# successive Newton iterations has reached what float32 resolves (about 6e-8 relative):
# measured at 18,000 rows x 8,193, C = 100, the decrease went 1e-5, 2e-7, 5e-8, 1e-8, 3e-9,
# 1.5e-9, 3e-10 while the gradient stayed at 1-5x the tolerance, and with a tighter inner
# solve the steps fell to 1e-4 of the Newton step, some of them negative.
STALL_DECREASE = 1e-8
# Bounds of the forcing term (CG stops at eta x the gradient's norm); see its use.
ETA_MIN, ETA_MAX = 0.1, 0.3
STALLED_ITERATIONS = 2
# Exact Newton steps pay for active sets up to (DIRECT_COST n d)^(1/3) rows: `direct_limit`.
DIRECT_COST = 15


def solve_squared_hinge_torch(X, Y, C, *, tol=1e-3, max_iter=100, max_cg=500, device="cpu",
                              dtype=torch.float32, W0=None, progress=None, direct_max=None,
                              gram_cache=None, gram_rows=None):
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
    direct_max : int, optional
        A column whose active set (rows with margin < 1) has at most this many rows gets
        the exact Newton step, from the Woodbury identity on the Gram matrix of its active
        rows (a Cholesky solve of that size), instead of conjugate gradient: the common
        case at large C, where CG needs the most steps. None: where the solve costs about
        what CG's steps would (`direct_limit`). 0: always CG.
    gram_cache : dict, optional
        Holds the Gram matrix ``[X, 1] [X, 1]^T`` (computed on first need) so that several
        calls on the same X (e.g. a path of C values) compute it once. With ``"X"``, the
        rows of a larger set, and ``gram_rows``, it holds that set's Gram matrix instead,
        shared by solves on subsets of it (cross-validation folds and the refit).
    gram_rows : ndarray of int, optional
        Which rows of ``gram_cache["X"]`` the rows of X are.

    Returns
    -------
    W : ndarray of shape (m, d)
    b : ndarray of shape (m,)
    n_iter : ndarray of shape (m,)
        Newton iterations used per column.
    """
    gram_cache = {} if gram_cache is None else gram_cache  # computed once per call at least
    with torch.no_grad():
        # np.require copies only read-only input (e.g. a memory map), which torch refuses.
        X = torch.as_tensor(np.require(X, requirements="W"), device=device).to(dtype)
        Xa = WithBias(X)  # bias as a regularised feature, like liblinear
        del X
        # int8: +1 / -1 / 0 exactly, a quarter of float32's memory in each (n, m) copy (the
        # solver's, its active columns', the line search's); products promote it exactly.
        Y = torch.as_tensor(np.asarray(Y, dtype=np.int8), device=device)
        C = torch.as_tensor(np.asarray(C), device=device).to(dtype)
        m = Y.shape[1]
        used = (Y != 0).any(1, keepdim=True).to(dtype)  # rows some column's problem has
        n_used = int(used.sum())  # rows left out of every problem cost no choice
        if W0 is None:
            W = torch.zeros(Xa.shape[1], m, dtype=dtype, device=device)
        else:
            W = torch.as_tensor(np.asarray(W0).T, device=device).to(dtype).contiguous()
        basis = None
        if 2 * Xa.shape[0] < Xa.shape[1]:
            # Fewer rows than features (e.g. Caltech-101: 2,448 x 12,289): the optimum lies in
            # the row space of Xa, so solve the same problem in its coordinates, r <= n.
            Xa, basis = _row_space(Xa.materialised())
            W = basis.T @ W
        Z = Xa @ W
        g0 = (2 * C * (Xa.T @ Y.to(dtype))).norm(dim=0)  # gradient at w = 0 is -2C Xa^T Y
        n_iter = np.zeros(m, dtype=np.int64)
        active = torch.arange(m, device=device)
        objective = _objective(W, Z, Y, C)
        limit, fits = _exact_step_limit(Xa, n_used, direct_max, gram_cache, gram_rows)
        stalled = torch.zeros(m, dtype=torch.int64, device=device)
        projected = {}  # Xa V for the preconditioner, computed once per solve
        for _ in range(max_iter):
            # Views while every column iterates: gathers would copy (n, m) arrays each time.
            every = active.numel() == m
            Wa, Za, Ya, Ca = (W, Z, Y, C) if every else (
                W[:, active], Z[:, active], Y[:, active], C[active])
            A, G = _active_and_gradient(Xa, Wa, Za, Ya, Ca)
            gnorm = G.norm(dim=0)
            todo = ((gnorm > tol * torch.minimum(g0[active], Wa.norm(dim=0)))
                    & (stalled[active] < STALLED_ITERATIONS))
            if progress is not None:
                progress(int(todo.sum()))
            if not todo.any():
                break
            if not todo.all():
                active, Wa, Za, Ya, Ca, A, G, gnorm = (
                    t[..., todo] for t in (active, Wa, Za, Ya, Ca, A, G, gnorm)
                )
            # Forcing term: loose early, tighter near the optimum. The floor is 0.1, not 0.01:
            # the stopping test is the gradient's, so this only trades CG steps for Newton
            # iterations, and at large C, where CG steps cost most, that trade paid: a path
            # of C to 100 on 18,000 x 8,193 rows took 74 s against 96 s (same predictions).
            eta = torch.clamp(torch.sqrt(gnorm / g0[active]), min=ETA_MIN, max=ETA_MAX)
            # CG would end in d + 1 steps in exact arithmetic; allow float32 some slack.
            cg_steps = min(max_cg, 2 * Xa.shape[1])
            direct = (A.sum(0) <= limit) & (limit > 0)  # 0: CG for every column
            gram = shared_gram(Xa, gram_cache, gram_rows) if fits and direct.any() else (None, None)
            if direct.all():
                D, XD = _woodbury_newton(Xa, A, Ca, G, *gram)
            elif direct.any():
                D, XD = torch.empty_like(G), torch.empty_like(Za)
                D[:, direct], XD[:, direct] = _woodbury_newton(
                    Xa, A[:, direct], Ca[direct], G[:, direct], *gram)
                rest = ~direct
                D[:, rest], XD[:, rest] = conjugate_gradient(
                    Xa, A[:, rest], Ca[rest], -G[:, rest], (eta * gnorm)[rest], cg_steps,
                    preconditioner(Xa, A[:, rest], Ca[rest], used, gram_cache, projected))
            else:
                D, XD = conjugate_gradient(Xa, A, Ca, -G, eta * gnorm, cg_steps,
                                            preconditioner(Xa, A, Ca, used, gram_cache, projected))
            step = line_search(Wa, D, Za, XD, Ya, Ca, slope0=(G * D).sum(0))
            # Z += step XD in place (Za: Z itself, or a copy of its active columns)
            XD.mul_(step)
            if active.numel() == m:  # Wa and Za are W and Z
                W = Wa + step * D
                Z.add_(XD)
                now = _objective(W, Z, Ya, Ca)
            else:
                W[:, active] = Wa + step * D
                Z.index_add_(1, active, XD)
                now = _objective(W[:, active], Z, Ya, Ca, columns=active)
            del Wa, Za, D, XD
            n_iter[active.cpu().numpy()] += 1
            small = objective[active] - now <= STALL_DECREASE * now
            stalled[active] = torch.where(small, stalled[active] + 1, 0)
            objective[active] = now
        if basis is not None:
            W = basis @ W
        W = W.T.double().cpu().numpy()
    # b copied: a view would keep all of W's float64 (m, d + 1) alive with it (a path of C
    # keeps every C's b: 80 MiB at Caltech-256 size, stacked scales).
    return W[:, :-1], W[:, -1].copy(), n_iter


def _active_and_gradient(Xa, W, Z, Y, C):
    """Each column's active rows A (margin y z < 1 on its problem's rows; bool: a quarter of
    float32's memory in each of its copies, and products promote it exactly) and the
    gradient W + 2C Xa^T (A (Z - Y)), with one (n, m) array of scratch."""
    scratch = torch.mul(Y, Z)
    A = (scratch < 1).logical_and_(Y != 0)
    torch.sub(Z, Y, out=scratch)
    return A, W + 2 * C * (Xa.T @ scratch.mul_(A))


def _exact_step_limit(Xa, n_used, direct_max, cache, rows):
    """(largest active set that takes an exact Newton step, 0 for none; whether a shared
    Gram matrix serves those steps).

    The n x n Gram matrix is shared by every class only while its lower triangle fits
    (ImageNet's 1.28M rows would need 3.3 TB; beyond, each class's block is computed alone)
    and pays
    (`gram_pays`; where it does not, preconditioned CG alone is faster)."""
    fits = gram_fits(Xa.shape[0], Xa.element_size())
    if direct_max is not None:
        return direct_max, fits
    if fits and not gram_pays(gram_size(Xa, cache, rows), Xa.shape[1]):
        return 0, False
    return direct_limit(n_used, Xa.shape[1], fits), fits


class WithBias:
    """The rows of X with a 1 appended, ``[X, 1]``, without copying X: the products the
    solver needs, with the ones column's part added apart. A copy with the column would
    hold the training rows twice (Caltech-256 size: 241 MiB more)."""

    def __init__(self, X):
        self.X = X
        self.shape = (X.shape[0], X.shape[1] + 1)
        self.dtype, self.device = X.dtype, X.device

    def element_size(self) -> int:
        return self.X.element_size()

    def __matmul__(self, W):  # [X, 1] W = X W[:-1] + W[-1]
        return torch.addmm(W[-1:], self.X, W[:-1])

    def matmul_into(self, W, out):
        return torch.addmm(W[-1:], self.X, W[:-1], out=out)

    def __getitem__(self, rows):  # some rows of [X, 1], a copy
        part = self.X[rows]
        return torch.cat([part, torch.ones(len(part), 1, dtype=self.dtype,
                                           device=self.device)], dim=1)

    @property
    def T(self):
        return _Transposed(self.X)

    def materialised(self):
        return self[slice(None)]


class _Transposed:
    """``[X, 1]^T``: ``[X, 1]^T V = [X^T V; the column sums of V]``."""

    def __init__(self, X):
        self.X = X

    def __matmul__(self, V):
        # (V^T X)^T, not X^T V: the same sums, bit for bit, 20% faster for 257 columns and
        # 38% for 64 (MKL, 12,336 x 4,096 float32 rows, 2 cores), the third of a selection's
        # time these products take at Caltech-256 size.
        return torch.cat([(V.T @ self.X).T, V.sum(0, keepdim=True)])


def direct_limit(n, d, gram_fits=True):
    """The largest active set that takes an exact Newton step by default.

    A step by preconditioned conjugate gradient costs about 7 steps x 4 n d float32
    operations per column (two products with the data per step; 20 steps before the
    preconditioner); the exact step, a float64 Cholesky solve of the s x s block of the
    shared Gram matrix, s^3 / 3 operations at about a fifth of the rate: equal at
    s^3 = DIRECT_COST n d. Whole default selections at Caltech-256 size (15,420 training
    rows, 257 classes) with DIRECT_COST 43 / 15 / 7 / no exact steps: D = 4,096 173.8 /
    167.3 / 166.5 / 163.7 s, D = 8,192 301 / 244 / 256 / 345 s. Without a shared Gram
    matrix each block is a product of its rows (2 s^2 d more), so the limit stays small.
    """
    if not gram_fits:
        return 700
    return int(round((DIRECT_COST * n * d) ** (1 / 3)))


def _objective(W, Z, Y, C, block=4096, columns=None):
    """Each column's objective 0.5 ||w||^2 + C sum(max(0, 1 - y z)^2), in float64; Z = Xa W
    (``columns``: of Z, when given). The margins are converted ``block`` rows at a time:
    whole, their float64 copies and temporaries held several times the (n, m) margins
    (Caltech-256 size: about 150 MiB)."""
    loss = torch.zeros(Y.shape[1], dtype=torch.float64, device=Z.device)
    for start in range(0, len(Z), block):
        z = Z[start:start + block]
        z = (z if columns is None else z[:, columns]).double()
        y = Y[start:start + block].double()
        hinge = torch.where((y * z < 1) & (y != 0), z - y, 0)
        loss += (hinge ** 2).sum(0)
    return 0.5 * (W.double() ** 2).sum(0) + C.double() * loss


def _row_space(Xa, block=1024):
    """Coordinates of the rows of Xa in an orthonormal basis V of its row space.

    From the Gram matrix K = Xa Xa^T = U diag(lam) U^T: V = Xa^T U lam^-1/2 and
    Xa V = U lam^1/2. For w = V v, Xa w = (Xa V) v and ||w|| = ||v||: the same objective.
    K and V are computed in float64 a block of ``block`` columns at a time, so that no
    float64 copy of Xa is held (it was twice the training rows' memory).
    """
    n, d = Xa.shape
    K = torch.zeros(n, n, dtype=torch.float64, device=Xa.device)
    for start in range(0, d, block):
        part = Xa[:, start:start + block].double()
        K.addmm_(part, part.T)
    lam, U = torch.linalg.eigh(K)
    del K
    keep = lam > lam.max() * 1e-10  # numerically null directions carry no data
    lam, U = lam[keep], U[:, keep]
    M = U / lam.sqrt()
    basis = torch.empty(d, M.shape[1], dtype=Xa.dtype, device=Xa.device)
    for start in range(0, d, block):
        basis[start:start + block] = (Xa[:, start:start + block].double().T @ M).to(Xa.dtype)
    return (U * lam.sqrt()).to(Xa.dtype), basis


def _solve_positive(M, ridge, rhs):
    """(M + ridge I)^-1 rhs for a symmetric positive semi-definite M given by its lower
    triangle (a new array: the ridge is added in place; above the diagonal it may hold
    anything, as `gram.PackedGram.block`'s does), by Cholesky in M's precision; None where
    float32 cannot factor it (the caller retries in float64, then LU solves).

    float32 is 1.6x faster than float64 at 700-1,165 rows and needs no float64 copy of the
    block. The exact step needs no more: its error, at most about cond x 6e-8, was at most
    3e-3 of the solution on fc7 rows at C = 100, where conjugate gradient stops its steps at
    a tenth of the residual (`ETA_MIN`); the stopping test is the gradient's either way
    (a Caltech-256-sized fold's path of C: the same objectives to 3e-8, the same held-out
    predictions, 4.5% less time).
    """
    M.diagonal().add_(ridge)
    L, info = torch.linalg.cholesky_ex(M)
    column = rhs.unsqueeze(1)
    if int(info) == 0:
        # Two triangular solves: cholesky_solve copies L first (2.8 ms against 0.4 ms at
        # 1,200 rows).
        u = torch.linalg.solve_triangular(
            L.mT, torch.linalg.solve_triangular(L, column, upper=False), upper=True)
    elif M.dtype != torch.float64:
        return None
    else:  # pragma: no cover - not positive definite in float64 either: LU
        u = torch.linalg.solve(M.tril() + M.tril(-1).mT, column)
    return u.squeeze(1)


def _woodbury_newton(Xa, A, C, G, K, index=None):
    """Exact Newton directions D = -(I + 2C Xa^T diag(A) Xa)^-1 G, column by column; also Xa D.

    With S the active rows of a column, (I + 2C X_S^T X_S)^-1 = I - X_S^T (I / 2C + K_SS)^-1
    X_S (Woodbury), so each column costs a Cholesky solve of size |S| on a block of the Gram
    matrix K (a `gram.PackedGram`; rows ``index`` of K when given), plus matrix products
    batched over all columns. Without K, each block is a product of the column's rows.
    """
    XG = Xa @ G
    U = torch.zeros_like(XG)
    for j in range(G.shape[1]):
        rows = torch.nonzero(A[:, j], as_tuple=True)[0]
        if rows.numel() == 0:
            continue
        at = rows
        if index is not None:  # K's blocks are read in ascending order of its rows
            at, ascending = torch.sort(index[rows])
            rows = rows[ascending]
        ridge, rhs = 1.0 / (2.0 * float(C[j])), XG[rows, j]
        u = _solve_positive(gram_block(Xa, K, rows, at), ridge, rhs)
        if u is None:  # too near singular for float32: again in float64
            u = _solve_positive(gram_block(Xa, K, rows, at).double(), ridge, rhs.double())
        U[rows, j] = u.to(U.dtype)
    D = Xa.T @ U - G
    return D, Xa @ D
