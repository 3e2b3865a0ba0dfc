"""The SVM probe: the batched torch solver against liblinear, C selection, VOC difficult."""
import numpy as np
import pytest
import torch
from sklearn.utils.estimator_checks import parametrize_with_checks

from vggfeat.evaluation.svm import (
    LinearSVMProbe,
    cv_folds,
    holdout_split,
    refit_path,
    solve_squared_hinge_liblinear,
    solve_squared_hinge_torch,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _descriptors(n_classes=8, per_class=40, dim=96, noise=2.0, seed=0):
    """ReLU'd, L2-normalised features with class structure, like pooled fc7 descriptors."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, 32))
    proj = rng.normal(size=(32, dim)) / np.sqrt(32)
    y = np.repeat(np.arange(n_classes), per_class)
    x = np.maximum((centres[y] + noise * rng.normal(size=(len(y), 32))) @ proj, 0)
    x += 0.05 * np.abs(rng.normal(size=x.shape))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


def _objective(X, y, w, b, C):
    margins = np.maximum(0, 1 - y * (X.astype(np.float64) @ w + b))
    return 0.5 * (w @ w + b * b) + C * np.sum(margins**2)


@parametrize_with_checks([LinearSVMProbe(C=(0.1, 1.0), cv=2)])
def test_sklearn_compatible(estimator, check):
    check(estimator)


@pytest.mark.parametrize("C", [0.01, 1.0, 30.0])
@pytest.mark.parametrize("dim", [96, 400], ids=["tall", "wide"])  # wide: row-space solve
def test_torch_solver_reaches_liblinear_optimum(C, dim):
    X, y = _descriptors(n_classes=5, per_class=30 if dim < 100 else 12, dim=dim)
    Y = np.where(y[:, None] == np.arange(5), 1, -1)
    W, b, _ = solve_squared_hinge_torch(X, Y, np.full(5, C), tol=1e-6, dtype=torch.float64)
    W_ref, b_ref, _ = solve_squared_hinge_liblinear(X, Y, np.full(5, C), tol=1e-8,
                                                    max_iter=100_000)
    for k in range(5):
        ours, ref = _objective(X, Y[:, k], W[k], b[k], C), _objective(X, Y[:, k], W_ref[k],
                                                                       b_ref[k], C)
        # Same strictly convex problem: same optimum (ours may be marginally lower).
        assert ours == pytest.approx(ref, rel=1e-5)
        np.testing.assert_allclose(W[k], W_ref[k], atol=2e-3 * max(1, np.abs(W_ref[k]).max()))


def test_default_solver_matches_liblinear_accuracy_with_selection():
    X_all, y_all = _descriptors(n_classes=6, per_class=60, seed=1)
    X, y, Xte, yte = X_all[::2], y_all[::2], X_all[1::2], y_all[1::2]
    ours = LinearSVMProbe(C=(0.1, 1.0, 10.0), cv=0.2).fit(X, y)
    ref = LinearSVMProbe(C=(0.1, 1.0, 10.0), cv=0.2, solver="liblinear").fit(X, y)
    np.testing.assert_array_equal(ours.C_, ref.C_)
    assert abs(ours.score(Xte, yte) - ref.score(Xte, yte)) <= 0.003 + 1e-12


def test_difficult_examples_never_change_the_fit():
    X, y = _descriptors(n_classes=3)
    Y = np.where(y[:, None] == np.arange(3), 1, -1)
    base = LinearSVMProbe(C=1.0).fit(X, Y)
    rng = np.random.default_rng(0)
    X_more = np.concatenate([X, rng.random((10, X.shape[1]), dtype=np.float32)])
    Y_more = np.concatenate([Y, np.zeros((10, 3), int)])
    more = LinearSVMProbe(C=1.0).fit(X_more, Y_more)
    np.testing.assert_allclose(more.coef_, base.coef_, rtol=1e-5, atol=1e-6)
    as_positive = LinearSVMProbe(C=1.0, difficult="positive").fit(X_more, Y_more)
    assert not np.allclose(as_positive.coef_, base.coef_, atol=1e-3)


def test_indicator_and_voc_label_matrices_agree():
    X, y = _descriptors(n_classes=3)
    indicator = (y[:, None] == np.arange(3)).astype(int)
    a = LinearSVMProbe(C=1.0).fit(X, indicator)
    b = LinearSVMProbe(C=1.0).fit(X, 2 * indicator - 1)
    np.testing.assert_allclose(a.coef_, b.coef_)
    assert a.multi_label_ and a.predict(X[:4]).shape == (4, 3)


def test_c_is_chosen_per_class_on_training_data_and_reproducibly():
    X, y = _descriptors(n_classes=4, per_class=24, seed=3)
    a = LinearSVMProbe(C=(0.01, 0.1, 1.0), cv=3, random_state=5, C_selection="per-class")
    a.fit(X, y)
    b = LinearSVMProbe(C=(0.01, 0.1, 1.0), cv=3, random_state=5, C_selection="per-class")
    b.fit(X, y)
    np.testing.assert_array_equal(a.C_, b.C_)
    assert a.cv_scores_.shape == (4, 3) and a.C_selection_ == "per-class"
    # Each class's C is the grid value with the best mean held-out AP (smallest on ties).
    np.testing.assert_array_equal(a.C_, np.asarray(a.C)[np.argmax(a.cv_scores_, axis=1)])


def test_binary_gives_one_svm():
    X, y = _descriptors(n_classes=2)
    probe = LinearSVMProbe(C=1.0).fit(X, np.where(y == 1, "dog", "cat"))
    assert probe.coef_.shape == (1, X.shape[1])
    assert probe.decision_function(X).shape == (len(X),)
    assert probe.score(X, np.where(y == 1, "dog", "cat")) > 0.9


def test_bad_inputs_fail_before_fitting():
    X, y = _descriptors(n_classes=3)
    bad = X.copy()
    bad[3, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        LinearSVMProbe().fit(bad, y)
    bad[3, 5] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        LinearSVMProbe().fit(bad, y)
    Y = np.where(y[:, None] == np.arange(3), 1, -1)
    Y[:, 2] = -1
    with pytest.raises(ValueError, match="class 2 has no positive training example"):
        LinearSVMProbe().fit(X, Y)
    with pytest.raises(ValueError, match="C must be positive"):
        LinearSVMProbe(C=0).fit(X, y)


def test_holdout_is_per_class_and_disjoint():
    y = np.repeat(np.arange(4), 30)
    train, val = holdout_split(y, 0.2, random_state=0)
    assert np.bincount(y[val]).tolist() == [6, 6, 6, 6]
    assert not set(train) & set(val) and len(train) + len(val) == len(y)
    train2, val2 = holdout_split(y, 0.2, random_state=0)
    np.testing.assert_array_equal(val, val2)
    folds = cv_folds(len(y), y, 3, random_state=0)
    assert sorted(np.concatenate([v for _, v in folds]).tolist()) == list(range(len(y)))


def _assert_at_liblinears_optimum(X, Y, W, b, C):
    """Each column's objective equals liblinear's at its C (a tight reference fit)."""
    W_ref, b_ref, _ = solve_squared_hinge_liblinear(X, Y, C, tol=1e-8, max_iter=100_000)
    for k in range(Y.shape[1]):
        assert _objective(X, Y[:, k], W[k], b[k], C[k]) == pytest.approx(
            _objective(X, Y[:, k], W_ref[k], b_ref[k], C[k]), rel=1e-5)


def test_refit_along_the_path_reaches_each_chosen_c():
    X, y = _descriptors(n_classes=4, per_class=20)
    Y = np.where(y[:, None] == np.arange(4), 1, -1)
    grid, chosen = (0.1, 1.0, 10.0), np.array([2, 0, 1, 2])
    W, b, _ = refit_path(X, Y, grid, chosen, tol=1e-6)
    _assert_at_liblinears_optimum(X, Y, W, b, np.take(grid, chosen))


@pytest.mark.parametrize("select", ["shared", "per-class"])
def test_folds_fitted_together_give_each_folds_svms(select, monkeypatch):
    """The folds' SVMs as one solve on all training rows (0 outside a fold's part) score
    the held-out rows as the folds fitted one by one on their own rows do."""
    from vggfeat.evaluation.svm import selection

    X, y = _descriptors(n_classes=4, per_class=30, seed=3)
    Y = np.where(y[:, None] == np.arange(4), 1, -1).astype(np.int8)
    grid = (0.1, 1.0, 10.0)

    def chooser():
        if select == "shared":
            return selection.select_shared_C(X, Y, grid, strata=y, cv=3)
        return selection.select_C(X, Y, grid, cv=3)

    folds = selection.cv_folds(len(Y), y, 3, 0)
    together = list(selection.held_out_scores(X, Y, folds, grid, tol=1e-6))
    monkeypatch.setattr(selection, "FOLD_BATCH_COLUMNS", 1)  # one fold per solve
    alone = list(selection.held_out_scores(X, Y, folds, grid, tol=1e-6))
    for (val_a, scores_a), (val_b, scores_b) in zip(together, alone, strict=True):
        np.testing.assert_array_equal(val_a, val_b)
        for a, b in zip(scores_a, scores_b, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    one_by_one = chooser()
    monkeypatch.undo()
    batched = chooser()
    np.testing.assert_array_equal(batched[1], one_by_one[1])  # the same C chosen


def test_refit_from_the_folds_mean_reaches_each_chosen_c():
    """The refit started from the folds' mean SVM ends where the path ends: each column at
    liblinear's optimum for its chosen C."""
    from vggfeat.evaluation.svm import refit_from, select_C

    X, y = _descriptors(n_classes=4, per_class=30, seed=4)
    Y = np.where(y[:, None] == np.arange(4), 1, -1)
    grid = (0.1, 1.0, 10.0)
    fold_mean = {}
    _, chosen = select_C(X, Y, grid, cv=3, fold_mean=fold_mean)
    assert sorted(fold_mean) == [0, 1, 2] and fold_mean[0][0].shape == (4, X.shape[1])
    W, b, _ = refit_from(X, Y, grid, chosen, fold_mean, tol=1e-6)
    _assert_at_liblinears_optimum(X, Y, W, b, np.take(grid, chosen))


@pytest.mark.parametrize("direct_max", [0, 40, 10**9], ids=["cg", "mixed", "woodbury"])
def test_exact_newton_steps_and_cg_reach_the_same_optimum(direct_max):
    """Columns with small active sets take exact (Woodbury) Newton steps, the rest CG;
    either way, and mixed in one batch, the solver reaches liblinear's optimum, also with
    ignored (0) rows."""
    X, y = _descriptors(n_classes=4, per_class=30, seed=2)
    Y = np.where(y[:, None] == np.arange(4), 1, -1)
    Y[::7, 1] = 0
    C = np.array([0.01, 1.0, 10.0, 100.0])
    W, b, _ = solve_squared_hinge_torch(X, Y, C, tol=1e-6, dtype=torch.float64,
                                        direct_max=direct_max, gram_cache={})
    W_ref, b_ref, _ = solve_squared_hinge_liblinear(X, Y, C, tol=1e-8, max_iter=100_000)
    for k in range(4):
        rows = Y[:, k] != 0
        ours = _objective(X[rows], Y[rows, k], W[k], b[k], C[k])
        ref = _objective(X[rows], Y[rows, k], W_ref[k], b_ref[k], C[k])
        assert ours == pytest.approx(ref, rel=1e-5)


def test_one_c_for_all_classes_by_cross_validated_mean_class_recall():
    """Shared selection against scikit-learn: LinearSVC (liblinear, one-vs-rest) predicted
    out of fold on the same stratified folds, scored by balanced accuracy (= mean class
    recall)."""
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.svm import LinearSVC

    X, y = _descriptors(n_classes=6, per_class=10, dim=48, noise=3.0, seed=11)
    grid = (0.01, 0.1, 1.0, 10.0)
    probe = LinearSVMProbe(C=grid, cv=5, random_state=2).fit(X, y)
    assert probe.C_selection_ == "shared" and probe.cv_scores_.shape == (len(grid),)
    assert len(set(probe.C_)) == 1 and probe.C_.shape == (6,)
    folds = StratifiedKFold(5, shuffle=True, random_state=2)
    expected = []
    for c in grid:
        svc = LinearSVC(C=c, tol=1e-6, max_iter=100_000)
        expected.append(balanced_accuracy_score(y, cross_val_predict(svc, X, y, cv=folds)))
    # Solvers agree to tolerance: at most one image of 60 predicted differently per C.
    np.testing.assert_allclose(probe.cv_scores_, expected, atol=1 / 10 + 1e-9)
    assert len(set(np.round(expected, 6))) > 1  # the choice is not trivial here
    assert probe.C_[0] == grid[int(np.argmax(probe.cv_scores_))]
    # Refit on all the training data at that C: the same SVMs as a single-C fit (to the
    # solver's tolerance: the refit is warm-started along the grid).
    single = LinearSVMProbe(C=float(probe.C_[0])).fit(X, y)
    np.testing.assert_allclose(probe.coef_, single.coef_, atol=1e-4 * np.abs(single.coef_).max())


def test_c_selection_follows_the_labels():
    X, y = _descriptors(n_classes=3, per_class=12, seed=4)
    Y = np.where(y[:, None] == np.arange(3), 1, -1)
    assert LinearSVMProbe(C=(0.1, 1.0), cv=2).fit(X, Y).C_selection_ == "per-class"
    binary = LinearSVMProbe(C=(0.1, 1.0), cv=2).fit(X, y == 1)
    assert binary.C_selection_ == "shared" and binary.cv_scores_.shape == (2,)
    with pytest.raises(ValueError, match="single-label"):
        LinearSVMProbe(C=(0.1, 1.0), cv=2, C_selection="shared").fit(X, Y)
    with pytest.raises(ValueError, match="C_selection"):
        LinearSVMProbe(C=(0.1, 1.0), C_selection="each").fit(X, y)


def test_liblinear_reference_one_call_for_a_shared_C_equals_a_call_per_class():
    """The reference solves a one-vs-rest coding with a shared C in one multi-class
    LinearSVC; each row must equal the binary LinearSVC of that class alone, and a mix of
    Cs (one binary fit per class, sparse input) must agree with the shared-C call."""
    X, y = _descriptors(n_classes=5, per_class=20)
    X[X < np.quantile(X, 0.7)] = 0  # mostly zeros, like ReLU features: the sparse path
    Y = np.tile(np.where(y[:, None] == np.arange(5), 1, -1), (1, 2))[:, :9]  # 9 columns
    W, b, _ = solve_squared_hinge_liblinear(X, Y[:, :5], np.full(5, 1.0), tol=1e-8,
                                            max_iter=100_000)
    for k in range(5):
        Wk, bk, _ = solve_squared_hinge_liblinear(X, Y[:, [k]], [1.0], tol=1e-8,
                                                  max_iter=100_000)
        np.testing.assert_allclose(W[k], Wk[0], atol=1e-5)
        assert b[k] == pytest.approx(bk[0], abs=1e-5)
    mixed = np.array([1.0] * 5 + [1.0 + 1e-12] * 4)  # not all equal: one fit per column
    Wm, bm, _ = solve_squared_hinge_liblinear(X, Y, mixed, tol=1e-8, max_iter=100_000)
    np.testing.assert_allclose(Wm[:5], W, atol=1e-5)
    np.testing.assert_allclose(Wm[5:], W[:4], atol=1e-5)
