"""The torch SVM solver past the size where the shared Gram matrix fits (ImageNet-size n)."""
import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar

from vggfeat.evaluation.svm import gram, newton
from vggfeat.utils.threads import torch_threads


def test_without_the_shared_gram_matrix_the_same_svms(monkeypatch):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 40)).astype(np.float32)
    Y = np.where(rng.normal(size=(120, 3)) + X[:, :3] > 0, 1.0, -1.0)
    C = np.array([0.1, 10.0, 100.0])
    with torch_threads(1):
        shared = newton.solve_squared_hinge_torch(X, Y, C, gram_cache={})
        monkeypatch.setattr(gram, "GRAM_MAX_BYTES", 0)  # as if n were in the millions
        cache = {}
        alone = newton.solve_squared_hinge_torch(X, Y, C, gram_cache=cache)
    assert "K" not in cache  # no n x n matrix was made
    # Other steps (CG instead of exact ones) to the same tolerance: equal to within it.
    np.testing.assert_allclose(alone[0], shared[0], rtol=1e-4, atol=5e-5)
    np.testing.assert_allclose(alone[1], shared[1], rtol=1e-4, atol=5e-5)


def test_a_column_stops_where_float32_can_go_no_further():
    """A tolerance float32 cannot reach (as 1e-3 at C = 100 on 18,000 rows was) used to run
    a column to max_iter; now it stops once its objective no longer moves, at the optimum."""

    from vggfeat.evaluation.svm import solve_squared_hinge_liblinear

    rng = np.random.default_rng(0)
    X = np.maximum(rng.normal(size=(400, 30)) + 1.0, 0)
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    Y = np.where(rng.normal(size=(400, 2)) + 3 * (X[:, :2] - X[:, :2].mean(0)) > 0, 1.0, -1.0)
    C = np.array([10.0, 100.0])
    with torch_threads(1):
        W, b, n_iter = newton.solve_squared_hinge_torch(X, Y, C, tol=1e-12, max_iter=100)
    assert n_iter.max() < 40, n_iter
    W_ref, b_ref, _ = solve_squared_hinge_liblinear(X, Y, C, tol=1e-10, max_iter=500_000)
    for k in range(2):
        def objective(w, bias, k=k):
            margins = np.maximum(0, 1 - Y[:, k] * (X.astype(np.float64) @ w + bias))
            return 0.5 * (w @ w + bias * bias) + C[k] * np.sum(margins ** 2)
        assert objective(W[k], b[k]) == pytest.approx(objective(W_ref[k], b_ref[k]), rel=1e-6)


def test_the_line_search_ends_at_the_minimum_along_each_direction(monkeypatch):
    """The objective along a Newton direction is piecewise quadratic; the search keeps a
    bracket around the minimum and stops each column on its own (plain 1-D Newton cycled
    between pieces for most columns here, to max_steps). Every step taken is the
    minimum along its direction (float64 reference: bounded Brent search)."""
    rng = np.random.default_rng(0)
    n, d, k = 3000, 64, 10
    centers = np.maximum(rng.normal(size=(k, d)), 0)
    y = rng.integers(0, k, n)
    X = np.maximum(centers[y] + rng.normal(size=(n, d)), 0)
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    Y = np.where(y[:, None] == np.arange(k), 1.0, -1.0)
    calls = []

    def recording(W, D, Z, XD, Y, C, **kwargs):
        t = line_search(W, D, Z, XD, Y, C, **kwargs)
        calls.append([a.double().numpy().copy() for a in (W, D, Z, XD, Y, C, t)])
        return t

    line_search = newton.line_search
    monkeypatch.setattr(newton, "line_search", recording)
    W0 = None
    with torch_threads(1):
        for c in (1.0, 100.0, 1000.0):
            W, b, _ = newton.solve_squared_hinge_torch(X, Y, np.full(k, c), W0=W0, direct_max=0)
            W0 = np.concatenate([W, b[:, None]], axis=1)
    worse = 0
    for W, D, Z, XD, Yc, C, t in calls[::3]:
        for j in range(W.shape[1]):
            def along(s, w=W[:, j], d=D[:, j], z=Z[:, j], xd=XD[:, j], y=Yc[:, j], c=C[j]):
                margin = np.where(y != 0, np.maximum(0, 1 - y * (z + s * xd)), 0)
                return 0.5 * np.sum((w + s * d) ** 2) + c * np.sum(margin ** 2)
            best = minimize_scalar(along, bounds=(0, 2 * max(1, t[j])), method="bounded",
                                   options={"xatol": 1e-10})
            worse += along(t[j]) > best.fun + 1e-7 * abs(best.fun)
    assert worse == 0

def test_folds_share_one_gram_matrix_of_all_training_rows():
    """Solves on row subsets (cross-validation folds) take their exact Newton steps from
    one Gram matrix of all the rows, computed once (its lower triangle), and
    give the SVMs their own Gram matrix gives."""
    rng = np.random.default_rng(1)
    X = np.abs(rng.normal(size=(150, 30))).astype(np.float32)
    Y = np.where(rng.normal(size=(150, 3)) + 4 * (X[:, :3] - X[:, :3].mean(0)) > 0, 1.0, -1.0)
    C = np.array([10.0, 100.0, 1000.0])
    shared = {"X": X}
    grams = []
    with torch_threads(1):
        for rows in (np.arange(0, 120), np.arange(30, 150)):
            together = newton.solve_squared_hinge_torch(X[rows], Y[rows], C, gram_cache=shared,
                                                        gram_rows=rows, direct_max=10**9)
            grams.append(shared["K"])
            own = newton.solve_squared_hinge_torch(X[rows], Y[rows], C, gram_cache={},
                                                   direct_max=10**9)
            np.testing.assert_allclose(together[0], own[0], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(together[1], own[1], rtol=1e-4, atol=1e-5)
    assert grams[0] is grams[1] and grams[0].n == 150
    Xa = np.concatenate([X, np.ones((150, 1), np.float32)], axis=1).astype(np.float64)
    np.testing.assert_allclose(shared["K"].square().numpy(), Xa @ Xa.T, rtol=1e-5, atol=1e-4)


def test_exact_steps_for_active_sets_up_to_where_they_cost_what_cg_does():
    assert newton.direct_limit(12_336, 4_097) == pytest.approx(912, abs=5)
    assert newton.direct_limit(8 * 12_336, 4_097) == pytest.approx(2 * 912, abs=10)
    assert newton.direct_limit(1_500, 4_097) < 700  # few rows: CG is cheap
    assert newton.direct_limit(10**6, 4_097, gram_fits=False) == 700
    # Caltech-256 size: stacked scales (D = 8,192) pay for the Gram matrix, averaged do not
    assert gram.gram_pays(15_420, 8_193) and not gram.gram_pays(15_420, 4_097)


def test_no_gram_matrix_where_it_does_not_pay():
    """More rows than twice the width: CG alone, no n x n matrix, the same SVMs as with
    exact steps on it (forced with direct_max)."""
    X, y = _fc7_like(n=600, d=64, k=3)
    Y = np.where(y[:, None] == np.arange(3), 1.0, -1.0)
    C = np.array([1.0, 10.0, 100.0])
    cache, forced = {}, {}
    with torch_threads(1):
        alone = newton.solve_squared_hinge_torch(X, Y, C, gram_cache=cache)
        exact = newton.solve_squared_hinge_torch(X, Y, C, gram_cache=forced, direct_max=600)
    assert "K" not in cache and "K" in forced
    np.testing.assert_allclose(alone[0], exact[0], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(alone[1], exact[1], rtol=1e-3, atol=1e-4)


def _fc7_like(n=2000, d=256, k=8, seed=0):
    """Non-negative L2-normalised rows around k class centres, as fc7 descriptors are:
    a few dominant directions (their mean above all) carry most of X^T X."""
    rng = np.random.default_rng(seed)
    centers = np.maximum(rng.normal(size=(k, d)), 0)
    y = rng.integers(0, k, n)
    X = np.maximum(centers[y] + rng.normal(size=(n, d)), 0)
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32), y


def test_the_preconditioner_solves_the_same_systems_in_fewer_steps():
    """Preconditioned CG on the data's top directions ends at the same solution (float64
    direct solve) within the same residual tolerance, in fewer steps than plain CG."""
    import torch

    from vggfeat.evaluation.svm.conjugate_gradient import conjugate_gradient, preconditioner

    X, _ = _fc7_like()
    Xa = newton.WithBias(torch.from_numpy(X))
    rng = np.random.default_rng(1)
    A = torch.from_numpy((rng.random((len(X), 4)) < 0.5).astype(np.float32))
    C = torch.tensor([1.0, 10.0, 100.0, 1000.0])
    B = torch.from_numpy(rng.normal(size=(X.shape[1] + 1, 4)).astype(np.float32))
    tol = 0.1 * B.norm(dim=0)  # the solver's forcing terms are 0.1-0.3
    used = torch.ones(len(X), 1)
    Xa64 = np.concatenate([X, np.ones((len(X), 1))], axis=1).astype(np.float64)
    H = [np.eye(Xa64.shape[1]) + 2 * float(C[j]) * (Xa64.T * A[:, j].numpy()) @ Xa64
         for j in range(4)]

    def steps_to_tolerance(with_preconditioner):
        for steps in range(1, 200):
            x, Xx = conjugate_gradient(
                Xa, A, C, B, tol, steps,
                preconditioner(Xa, A, C, used, {}) if with_preconditioner else None)
            x64 = x.double().numpy()
            if all(np.linalg.norm(H[j] @ x64[:, j] - B[:, j].double().numpy())
                   <= 1.01 * float(tol[j]) for j in range(4)):
                return steps, x64, Xx
        raise AssertionError("no convergence")

    with torch_threads(1):
        fast, x, Xx = steps_to_tolerance(True)
        slow, _, _ = steps_to_tolerance(False)
    assert fast * 2 <= slow, (fast, slow)
    np.testing.assert_allclose(Xx.numpy(), Xa64 @ x, rtol=1e-3, atol=1e-3)
    for j in range(4):
        exact = np.linalg.solve(H[j], B[:, j].double().numpy())
        # a residual within tol leaves the error within tol / (smallest eigenvalue, 1)
        assert np.linalg.norm(x[:, j] - exact) <= 1.01 * float(tol[j])


def test_with_bias_gives_the_products_of_the_copy_with_a_ones_column():
    import torch

    X, _ = _fc7_like(n=300, d=40)
    Xt = torch.from_numpy(X)
    Xa = newton.WithBias(Xt)
    copy = torch.cat([Xt, torch.ones(len(X), 1)], dim=1)
    W = torch.from_numpy(np.random.default_rng(0).normal(size=(41, 5)).astype(np.float32))
    V = torch.from_numpy(np.random.default_rng(1).normal(size=(300, 5)).astype(np.float32))
    assert Xa.shape == tuple(copy.shape)
    torch.testing.assert_close(Xa @ W, copy @ W)
    torch.testing.assert_close(Xa.T @ V, copy.T @ V)
    rows = torch.tensor([3, 7, 250])
    torch.testing.assert_close(Xa[rows], copy[rows])
    assert Xa.X.data_ptr() == Xt.data_ptr()  # X itself, not a copy


@pytest.mark.parametrize("active", [0.05, 0.6])  # each column's own rows / all rows' products
def test_projected_hessians_equal_a_float64_sum_over_each_columns_active_rows(active):
    import torch

    from vggfeat.evaluation.svm.conjugate_gradient import SPARSE_ACTIVE, projected_hessians

    rng = np.random.default_rng(2)
    XV = torch.from_numpy(rng.normal(size=(700, 6)).astype(np.float32))
    A = torch.from_numpy((rng.random((700, 9)) < active).astype(np.float32))
    assert (float(A.mean()) < SPARSE_ACTIVE) == (active < SPARSE_ACTIVE)
    want = torch.einsum("ni,nj,nc->cij", XV.double(), XV.double(), A.double())
    torch.testing.assert_close(projected_hessians(XV, A, block=128), want, rtol=1e-5,
                               atol=1e-4)


def test_exact_steps_solve_in_float32_and_retry_in_float64_when_float32_cannot():
    """The exact step's Cholesky solve runs in the block's float32, accurate to about
    cond x 6e-8; a block float32 cannot factor (positive definite only thanks to a ridge
    below float32's resolution) is solved again in float64 (reference: numpy float64)."""
    rng = np.random.default_rng(0)
    rows = rng.random((200, 64))
    K = (rows @ rows.T / 64).astype(np.float32)  # positive semi-definite, rank 64
    rhs = rng.normal(size=200).astype(np.float32)
    u = newton._solve_positive(torch.tensor(K), 0.05, torch.tensor(rhs))
    want = np.linalg.solve(K.astype(np.float64) + 0.05 * np.eye(200), rhs.astype(np.float64))
    assert u.dtype == torch.float32
    assert np.linalg.norm(u.numpy() - want) <= 1e-4 * np.linalg.norm(want)

    v = rng.random(60)
    K = np.outer(v, v).astype(np.float32)  # rank one: the ridge 1e-7 vanishes in float32
    rhs = rng.normal(size=60).astype(np.float32)
    assert newton._solve_positive(torch.tensor(K), 1e-7, torch.tensor(rhs)) is None
    u = newton._solve_positive(torch.tensor(K).double(), 1e-7, torch.tensor(rhs).double())
    want = np.linalg.solve(K.astype(np.float64) + 1e-7 * np.eye(60), rhs.astype(np.float64))
    assert np.allclose(u.numpy(), want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
