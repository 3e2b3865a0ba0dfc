"""The shared Gram matrix kept as its lower triangle (`vggfeat.evaluation.svm.gram`)."""
import numpy as np
import pytest
import torch

from vggfeat.evaluation.svm import gram, newton
from vggfeat.utils.threads import torch_threads


@pytest.mark.parametrize("strip_bytes", [1, 7 * 4 * 37, 64 << 20])  # a row a strip, 7, all
def test_the_packed_triangle_is_the_gram_matrix_in_float64(monkeypatch, strip_bytes):
    monkeypatch.setattr(gram, "STRIP_BYTES", strip_bytes)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(37, 11)).astype(np.float32)
    K = gram.PackedGram(torch.from_numpy(X), plus=1.0)
    want = X.astype(np.float64) @ X.T.astype(np.float64) + 1.0
    assert K.values.numel() == 37 * 38 // 2  # half the square, and the diagonal
    np.testing.assert_allclose(K.square().numpy(), want, rtol=1e-5, atol=1e-5)
    at = torch.tensor([0, 3, 4, 17, 30, 36])
    block = K.block(at).numpy()
    lower = np.tril_indices(len(at))
    np.testing.assert_allclose(block[lower], want[np.ix_(at, at)][lower], rtol=1e-5, atol=1e-5)


def test_the_cholesky_factor_reads_only_the_lower_triangle():
    """The solver's blocks hold other entries above the diagonal; the factor and the solve
    must be those of the symmetric matrix, bit for bit."""
    rng = np.random.default_rng(1)
    P = torch.from_numpy(rng.normal(size=(40, 60)).astype(np.float32))
    M = P @ P.T
    junk = M.tril() + 1e3 * torch.from_numpy(rng.normal(size=(40, 40)).astype(np.float32)).triu(1)
    rhs = torch.from_numpy(rng.normal(size=40).astype(np.float32))
    assert torch.equal(newton._solve_positive(M.clone(), 0.05, rhs),
                       newton._solve_positive(junk, 0.05, rhs))


def test_exact_steps_from_the_packed_matrix_match_steps_from_the_rows():
    """Rows out of order in the shared matrix (a fold's rows moved in place): the exact
    Newton directions equal those computed from each column's own rows (float64, so that
    only the reading of the matrix could differ)."""
    rng = np.random.default_rng(2)
    X = np.abs(rng.normal(size=(90, 20)))
    Xa = newton.WithBias(torch.from_numpy(X))
    shuffled = rng.permutation(90)  # where each row of X sits in the matrix
    K = gram.PackedGram(newton.WithBias(torch.from_numpy(X[np.argsort(shuffled)])).X, plus=1.0)
    A = torch.from_numpy(rng.random(size=(90, 4)) < 0.3)
    C = torch.tensor([0.5, 5.0, 50.0, 500.0], dtype=torch.float64)
    G = torch.from_numpy(rng.normal(size=(21, 4)))
    with torch_threads(1):
        packed = newton._woodbury_newton(Xa, A, C, G, K, torch.from_numpy(shuffled))
        rows = newton._woodbury_newton(Xa, A, C, G, None)
    for ours, reference in zip(packed, rows, strict=True):
        np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=1e-9, atol=1e-11)


def test_the_matrix_fits_by_its_triangle():
    assert gram.gram_fits(46_340, 4) and not gram.gram_fits(46_341, 4)


PEAK = """
import resource, sys, torch
from vggfeat.evaluation.svm import gram
P = torch.rand(4000, 256)
P @ P[:8].T  # the product's code loaded before the baseline
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
K = gram.PackedGram(P, plus=1.0)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024, K.values.nbytes)
"""


def test_the_triangle_is_made_in_its_own_memory_and_a_strip_of_scratch():
    """The packed rows are copied out of each strip's product one row at a time: a mask of
    the triangle and masked_select's scratch held several strips' worth more."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", PEAK], capture_output=True, text=True,
                          cwd=repo, check=True,
                          env={"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin",
                               "OMP_NUM_THREADS": "1"})
    growth, packed = map(int, done.stdout.split())
    assert growth <= packed + gram.STRIP_BYTES + (8 << 20), (growth >> 20, packed >> 20)
