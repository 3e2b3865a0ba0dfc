"""The Gram matrix ``[X, 1] [X, 1]^T`` of a training set's rows, for the solver's exact
Newton steps (`newton._woodbury_newton`): computed once per training set where it pays,
shared by a path of C, the cross-validation folds and the refit, and read a column's block
of active rows at a time.

It is symmetric, so only its lower triangle is kept, row after row (`PackedGram`): half the
memory of the square (stacked Caltech-256 size, 15,420 training rows: 454 MiB against 907),
computed in strips of rows that need a thirtieth of the square's scratch, and read at the
cost of a gather from the square.
"""
from __future__ import annotations

import numpy as np
import torch

from vggfeat.utils.memory import return_free_memory

# Largest shared Gram matrix the solver keeps: 4 GiB of lower triangle, n = 46,340 rows in
# float32 (ImageNet's 1.28M rows would need 3.3 TB; beyond, each block is computed alone).
GRAM_MAX_BYTES = 4 << 30
# Scratch of one strip of rows while the triangle is computed.
STRIP_BYTES = 32 << 20


def gram_fits(n, element_size) -> bool:
    """Whether the lower triangle of an n x n Gram matrix fits in `GRAM_MAX_BYTES`."""
    return n * (n + 1) // 2 * element_size <= GRAM_MAX_BYTES


def gram_pays(n, d):
    """Whether exact Newton steps are worth a shared Gram matrix of n rows of width d: when
    n <= 2 d (the matrix's triangle at most the rows' size). Its n^2 d cost is paid once,
    and an exact step saves CG's products, whose cost grows with d. Default selections at
    Caltech-256 size (15,420 training rows, 257 classes), with exact steps / without:
    D = 4,096 161.5 / 145.6 s (and 0.9 GiB less), D = 8,192 217 / 289 s.
    """
    return n <= 2 * d


class PackedGram:
    """The lower triangle of P P^T + ``plus``, rows one after another (row i: its first
    i + 1 entries, from ``offsets[i] = i (i + 1) / 2``).

    ``block(at)`` gathers the rows and columns ``at`` (ascending) into a square whose lower
    triangle is the Gram matrix's; what lies above the diagonal is other entries of the
    triangle, which a Cholesky factorisation of the lower triangle never reads.
    """

    def __init__(self, P, plus=0.0):
        n = P.shape[0]
        self.n, self.dtype, self.device = n, P.dtype, P.device
        self.offsets = _row_offsets(n, P.device)
        return_free_memory()  # the matrix comes on top of what the heap still holds
        self.values = torch.empty(n * (n + 1) // 2, dtype=P.dtype, device=P.device)
        strip = max(1, STRIP_BYTES // (max(1, n) * P.element_size()))
        starts = self.offsets.tolist()
        for a in range(0, n, strip):
            b = min(n, a + strip)
            square = P[a:b] @ P[:b].T  # rows a..b-1 against rows 0..b-1
            # Row i's first i + 1 entries, one copy each (a mask of the triangle with
            # masked_select held several strips' worth of scratch more)
            for i in range(a, b):
                self.values[starts[i]:starts[i + 1]] = square[i - a, :i + 1]
            del square
        if plus:
            self.values += plus

    def block(self, at):
        """(len(at), len(at)): rows and columns ``at`` (ascending indices) of the matrix, a
        new array, exact in its lower triangle and on its diagonal."""
        return self.values[self.offsets[at].unsqueeze(1) + at.unsqueeze(0)]

    def square(self):
        """The whole symmetric matrix (for tests and small sets)."""
        rows = self.block(torch.arange(self.n, device=self.device))
        return rows.tril() + rows.tril(-1).mT


def _row_offsets(n, device):
    """Where each packed row starts, i (i + 1) / 2 for i = 0..n (int64)."""
    i = torch.arange(n + 1, dtype=torch.int64, device=device)
    return i * (i + 1) // 2


def shared_gram(Xa, cache, rows=None):
    """(K, index): a `PackedGram` holding this solve's rows, and where they are in it.

    ``cache["K"]`` is reused when it fits: the Gram matrix of ``cache["X"]`` (plus the bias's
    1) when ``rows`` says which of those rows Xa's are (index: them), else Xa's own
    (index: None). Computed here, and stored there, otherwise.
    """
    parent = cache.get("X")
    if rows is not None and parent is not None and gram_fits(len(parent), Xa.element_size()):
        K = cache.get("K")
        if K is None or K.n != len(parent) or K.device != Xa.device:
            source = torch.as_tensor(np.require(parent, requirements="W"))
            cache.pop("K", None)  # the old matrix freed before the new one is made
            K = cache["K"] = PackedGram(source.to(Xa.device, Xa.dtype), plus=1.0)
            # Rows moved in place (`RowOrder`, cache["order"]): K's rows are in the order of
            # the moment; keep where each original row went.
            order = cache.get("order")
            cache["K_rows"] = None if order is None else order.position(np.arange(len(parent)))
        return K, _in_gram(cache, rows, Xa.device)
    K = cache.get("K")
    if K is None or K.n != Xa.shape[0] or K.device != Xa.device:
        cache.pop("K", None)
        bias = hasattr(Xa, "X")  # `newton.WithBias`: its rows, and the 1 added to K
        K = cache["K"] = PackedGram(Xa.X if bias else Xa, plus=1.0 if bias else 0.0)
        cache["K_rows"] = None
    return K, None if cache.get("K_rows") is None else _in_gram(cache, slice(None), Xa.device)


def gram_size(Xa, cache, rows):
    """Rows of the Gram matrix `shared_gram` would hold: the parent set's when shared."""
    parent = cache.get("X")
    return len(parent) if rows is not None and parent is not None else Xa.shape[0]


def _in_gram(cache, rows, device):
    """Rows of the Gram matrix holding the original rows ``rows`` of ``cache["X"]``."""
    where = cache.get("K_rows")
    return torch.as_tensor(np.asarray(rows) if where is None else where[rows], device=device)


def gram_block(Xa, K, rows, at):
    """The Gram matrix of Xa's ``rows`` (rows ``at`` of K, ascending, when K is given), a
    new array; from K, only its lower triangle and diagonal hold the block's entries."""
    return Xa[rows] @ Xa[rows].T if K is None else K.block(at)
