"""The solver's line search: each column's exact minimum of its objective along its Newton
direction (`line_search`), the squared hinge making that a piecewise quadratic in the step."""
from __future__ import annotations

import torch


def line_search(W, D, Z, XD, Y, C, max_steps=30, slope0=None):
    """Each column's exact minimum of the objective along D, from t = 1 (the Newton step).

    The objective along D is convex and piecewise quadratic, so its slope is piecewise
    linear: a 1-D Newton step lands on the root when it stays on one piece, but it can
    cycle between pieces near the root. Plain Newton did, for up to 236 of 257 columns
    (Caltech-256 size), so every column's margins were recomputed ``max_steps`` times:
    0.3 s of each Newton iteration there, about two CG steps. So each column keeps a
    bracket [lo, hi] around the root (slope < 0 at lo, > 0 at hi), bisects whenever Newton
    would leave it, and stops on its own: only unfinished columns are computed.
    ``slope0``: the slope at t = 0 (the gradient times D), when the caller has it.
    """
    wd, dd = (W * D).sum(0), (D * D).sum(0)
    used = Y != 0
    if slope0 is None:
        slope0 = wd + 2 * C * ((((Y * Z < 1) & used).to(W.dtype) * XD) * (Z - Y)).sum(0)
    t = torch.ones_like(wd)
    lo, hi = torch.zeros_like(wd), torch.full_like(wd, float("inf"))
    todo = torch.arange(W.shape[1], device=W.device)
    scratch = _SearchScratch(Z)  # (n, columns) arrays reused by every step
    for _ in range(max_steps):
        XDi, Yi, Zi, usedi = scratch.columns((XD, Y, Z, used), todo)
        ti, Ci = t[todo], C[todo]
        M, AXD, below = scratch.step(todo.numel())
        torch.mul(XDi, ti, out=M).add_(Zi)  # margins at t: Z + t XD
        torch.lt(torch.mul(Yi, M, out=AXD), 1, out=below).logical_and_(usedi)  # active at t
        torch.mul(below, XDi, out=AXD)  # XD on those rows, 0 elsewhere
        slope = wd[todo] + ti * dd[todo] + 2 * Ci * M.sub_(Yi).mul_(AXD).sum(0)
        curvature = dd[todo] + 2 * Ci * torch.mul(AXD, XDi, out=M).sum(0)
        above = slope > 0
        lo[todo] = torch.where(above, lo[todo], ti)
        hi[todo] = torch.where(above, ti, hi[todo])
        newton = ti - slope / curvature
        inside = (newton > lo[todo]) & (newton < hi[todo])
        bisect = torch.where(torch.isinf(hi[todo]), 2 * ti, 0.5 * (lo[todo] + hi[todo]))
        proposal = torch.where(inside, newton, bisect)
        flat = slope.abs() <= 1e-6 * slope0[todo].abs()
        t[todo] = torch.where(flat, ti, proposal)
        todo = todo[~(flat | ((proposal - ti).abs() <= 1e-6 * ti.abs().clamp(min=1)))]
        if todo.numel() == 0:
            break
    return t


class _SearchScratch:
    """The line search's (n, columns) arrays, allocated once and viewed at the width of
    each step: new arrays at every step, of a shrinking number of columns, fragmented the
    allocator's heap."""

    def __init__(self, Z):
        n, m = Z.shape
        self.n, self.m = n, m
        self.floats = torch.empty(2, n * m, dtype=Z.dtype, device=Z.device)
        self.below = torch.empty(n * m, dtype=torch.bool, device=Z.device)
        self.gathered = None  # for the searching columns' XD, Y, Z and rows used

    def step(self, width):
        """Scratch (M, AXD, below) of ``width`` columns."""
        M, AXD = (part[:self.n * width].view(self.n, width) for part in self.floats)
        return M, AXD, self.below[:self.n * width].view(self.n, width)

    def columns(self, arrays, todo):
        """The arrays themselves while every column searches, else copies of ``todo``'s
        columns in scratch."""
        if todo.numel() == self.m:
            return arrays
        if self.gathered is None:
            self.gathered = [torch.empty(self.n * self.m, dtype=a.dtype, device=a.device)
                             for a in arrays]
        width = todo.numel()
        return [torch.index_select(a, 1, todo, out=g[:self.n * width].view(self.n, width))
                for a, g in zip(arrays, self.gathered, strict=True)]
