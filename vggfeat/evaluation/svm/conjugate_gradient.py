"""Conjugate gradient for the Newton systems of many squared-hinge SVMs at once, with a
preconditioner built from the data's dominant directions.

Each column j solves (I + 2C_j Xa^T diag(A_j) Xa) x = b_j, A_j its active rows; ``Xa`` is
a tensor or `newton.WithBias` (only products with it and its transpose are used).
"""
from __future__ import annotations

import torch

# Directions of the data that the preconditioner treats exactly (`preconditioner`).
PRECONDITIONER_RANK = 64


def top_directions(Xa, used, cache, rank=PRECONDITIONER_RANK, iterations=2):
    """An orthonormal basis (d, rank) of the directions in which the rows of Xa that some
    problem uses (``used``: (n, 1) of 0/1) vary most (subspace iteration from a fixed
    random start), kept in ``cache``. Rows no problem uses play no part, so that adding
    them leaves every fit as it was.

    Only a preconditioner depends on it, never a result, so the basis found on the first
    solve's rows serves later solves on other rows of the same data (cross-validation
    folds, the refit)."""
    V = cache.get("V")
    if V is not None and V.shape[0] == Xa.shape[1] and V.device == Xa.device:
        return V
    rank = min(rank, *Xa.shape)
    generator = torch.Generator(device=Xa.device).manual_seed(0)
    V = torch.randn(Xa.shape[1], rank, generator=generator, device=Xa.device, dtype=Xa.dtype)
    for _ in range(iterations):
        V = torch.linalg.qr(Xa.T @ (used * (Xa @ V))).Q
    cache["V"] = V
    return V


def preconditioner(Xa, A, C, used, cache, projected=None, block=1024):
    """Applies P^-1 for each column's Hessian H = I + 2C Xa^T diag(A) Xa: H itself on the
    span of the data's top directions V, scaled, and the identity beside it,
    P^-1 R = R - V V^T R + s V H_V^-1 V^T R, with H_V = I + 2C (Xa V)^T diag(A) (Xa V) and
    s its smallest eigenvalue (as randomized Nystrom preconditioning scales its low-rank
    part: Frangella, Tropp and Udell, 2023).

    Descriptors that are non-negative and L2-normalised (fc7 after ReLU) share a few
    dominant directions, which make the Hessian's largest eigenvalues and many of CG's
    steps. Steps to the solver's tolerance on fc7-like rows (tests/test_svm_scale.py's
    generator, 2,000 x 257, C = 1-1000): 6 against 14 for active sets of half the rows,
    12-14 against 23-45 for a class and a tenth of the rest; one fold of the benchmark's
    Caltech-256-sized selection (12,336 x 4,097, 257 classes, C to 100): 35 s against 54.

    ``projected``: a dict kept for one solve (the same Xa), which holds Xa V after the first
    call (a 6.5 GFLOP product at Caltech-256 size, a third of a call's time at large C).
    """
    V = top_directions(Xa, used, cache)
    k = V.shape[1]
    projected = {} if projected is None else projected
    if "XV" not in projected:
        projected["XV"] = Xa @ V
    B = projected_hessians(projected["XV"], A, block)
    eye = torch.eye(k, dtype=torch.float64, device=Xa.device)
    # float64: at large C, (I + 2C B)^-1 resolves eigenvalues far below float32's epsilon.
    H_V = eye + 2 * C.double().view(-1, 1, 1) * B
    # Scaled by H_V's smallest eigenvalue: the top directions land at the top of the rest's
    # spectrum instead of at 1 below it, where their coupling to the rest (V is shared,
    # not each column's own eigenvectors) cost more steps than it saved.
    inverse = torch.linalg.inv(H_V) * torch.linalg.eigvalsh(H_V)[:, :1].unsqueeze(2)
    V64 = V.double()

    def apply(R, columns):
        VR = V64.T @ R.double()  # (k, c)
        inside = torch.bmm(inverse[columns], VR.T.unsqueeze(2)).squeeze(2).T
        # R + V64 (...): R converted on the fly, as exactly, without a float64 copy of it
        return (V64 @ (inside - VR)).add_(R)

    return apply


# Below this fraction of active (row, column) pairs, each column's matrix is a product of its
# own active rows, above it all rows' outer products times A. A call at 12,336 rows, 257
# columns, k = 64: 43 against 139 ms at 6% active (large C), 81 against 118 ms at 17%, 117
# against 125 ms at 30%, 157 against 132 ms at 43%.
SPARSE_ACTIVE = 0.25


def projected_hessians(XV, A, block=1024):
    """(m, k, k) float64: XV^T diag(A_j) XV for each column j of A (bool or 0/1, (n, m))."""
    k = XV.shape[1]
    if int(A.sum()) / A.numel() < SPARSE_ACTIVE:
        B = torch.empty(A.shape[1], k, k, dtype=torch.float64, device=XV.device)
        for j, rows in enumerate(A.T.bool()):
            part = XV[rows]
            B[j] = (part.T @ part).double()
        return B
    B = torch.zeros(A.shape[1], k * k, dtype=torch.float64, device=XV.device)
    # The (n, k^2) outer products a block of rows at a time: 1,024 rows (16 MiB of scratch)
    # is as fast as 4,096 (64 MiB) and 109 MiB lower at the peak (12,336 x 4,097, 257 classes).
    for start in range(0, len(XV), block):
        part = XV[start:start + block]
        outer = (part.unsqueeze(2) * part.unsqueeze(1)).reshape(len(part), k * k)
        B += (A[start:start + block].T.to(outer.dtype) @ outer).double()
    return B.view(-1, k, k)


def conjugate_gradient(Xa, A, C, B, tol, max_cg, preconditioner=None):
    """Solve (I + 2C Xa^T diag(A) Xa) x = B column by column; also return Xa @ x.

    ``preconditioner(R, columns)``: P^-1 R in float64 for those columns (`preconditioner`);
    each column still stops when its residual's norm is below its ``tol``.
    Xa @ x is accumulated from the products CG computes anyway, so the line search
    needs no extra pass over the data.
    """
    n, m = Xa.shape[0], B.shape[1]
    x = torch.zeros_like(B)
    Xx = torch.zeros(n, m, dtype=B.dtype, device=B.device)
    # Each step's two (n, columns) products go into scratch allocated once: new arrays at
    # every step (of a shrinking number of columns) fragmented the allocator's heap, which
    # held 100-200 MiB more than the live arrays at Caltech-256 size.
    scratch = torch.empty(2, n * m, dtype=B.dtype, device=B.device)
    picked = torch.empty(n * m, dtype=A.dtype, device=A.device)  # A's iterating columns
    r = B.clone()
    idx = torch.arange(m, device=B.device)
    z = r.double() if preconditioner is None else preconditioner(r, idx)
    p = z.to(B.dtype)
    # float64 products with float32 factors converted on the fly (exactly, as .double()
    # would, but without a float64 (d, columns) copy: 16 MiB at Caltech-256 size, stacked)
    rz = (z * r).sum(0)
    del z
    for _ in range(max_cg):
        # While every column iterates, update in place: no (n, columns) gathers and scatters.
        every = idx.numel() == m
        Xp, AXp = (part[:n * idx.numel()].view(n, -1) for part in scratch)
        pi = p if every else p[:, idx]
        multiply(Xa, pi, out=Xp)
        if every:
            torch.mul(A, Xp, out=AXp)
        else:
            Ai = torch.index_select(A, 1, idx, out=picked[:n * idx.numel()].view(n, -1))
            torch.mul(Ai, Xp, out=AXp)
        Hp = pi + 2 * C[idx] * (Xa.T @ AXp)
        alpha = (rz[idx] / (pi * Hp).sum(0).double()).to(B.dtype)
        if every:
            x.addcmul_(pi, alpha)
            Xx.addcmul_(Xp, alpha)
            r.addcmul_(Hp, alpha, value=-1)
            ri = r
        else:
            x[:, idx] += alpha * pi
            Xx.index_add_(1, idx, Xp.mul_(alpha))
            r[:, idx] -= alpha * Hp
            ri = r[:, idx]
        zi = ri.double() if preconditioner is None else preconditioner(ri, idx)
        rz_new = (zi * ri).sum(0)
        direction = zi.addcmul_(pi, rz_new / rz[idx]).to(B.dtype)  # zi + (rz_new / rz) pi
        del zi
        if every:
            p.copy_(direction)
        else:
            p[:, idx] = direction
        rz[idx] = rz_new
        idx = idx[ri.norm(dim=0) > tol[idx]]
        if idx.numel() == 0:
            break
    return x, Xx


def multiply(Xa, V, out):
    """``Xa @ V`` into ``out`` (Xa a tensor or `newton.WithBias`)."""
    if hasattr(Xa, "matmul_into"):
        return Xa.matmul_into(V, out)
    return torch.matmul(Xa, V, out=out)
