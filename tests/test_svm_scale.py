"""The torch SVM solver past the size where the shared Gram matrix fits (ImageNet-size n)."""
import numpy as np

from vggfeat.evaluation.svm import newton
from vggfeat.utils.threads import torch_threads


def test_without_the_shared_gram_matrix_the_same_svms(monkeypatch):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 40)).astype(np.float32)
    Y = np.where(rng.normal(size=(120, 3)) + X[:, :3] > 0, 1.0, -1.0)
    C = np.array([0.1, 10.0, 100.0])
    with torch_threads(1):
        shared = newton.solve_squared_hinge_torch(X, Y, C, gram_cache={})
        monkeypatch.setattr(newton, "GRAM_MAX_BYTES", 0)  # as if n were in the millions
        cache = {}
        alone = newton.solve_squared_hinge_torch(X, Y, C, gram_cache=cache)
    assert "K" not in cache  # no n x n matrix was made
    np.testing.assert_allclose(alone[0], shared[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(alone[1], shared[1], rtol=1e-4, atol=1e-5)


def test_a_column_stops_where_float32_can_go_no_further():
    """A tolerance float32 cannot reach (as 1e-3 at C = 100 on 18,000 rows was) used to run
    a column to max_iter; now it stops once its objective no longer moves, at the optimum."""
    import pytest

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
