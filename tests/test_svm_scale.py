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
