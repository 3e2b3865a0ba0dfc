"""Training rows moved in place instead of copied (issue 22's memory): the permutation, the
features' own rows, and cross-validation that moves a fold's rows to the front of X."""
import numpy as np
import pytest
from helpers_datasets import class_descriptors, make_caltech

from vggfeat.data.readers import open_dataset
from vggfeat.evaluation.inputs import Features
from vggfeat.evaluation.protocols import Settings, run_protocol
from vggfeat.evaluation.svm import LinearSVMProbe
from vggfeat.evaluation.svm.selection import cv_folds, held_out_scores
from vggfeat.utils.row_order import RowOrder, permute_rows


@pytest.mark.parametrize("n", [1, 2, 7, 500])
def test_permute_rows_equals_fancy_indexing(n):
    rng = np.random.default_rng(n)
    X = rng.normal(size=(n, 5)).astype(np.float32)
    for source in (rng.permutation(n), np.arange(n), np.roll(np.arange(n), 1)):
        moved = X.copy()
        permute_rows(moved, source)
        np.testing.assert_array_equal(moved, X[source])


def test_permute_rows_refuses_what_is_not_a_permutation():
    X = np.zeros((3, 2))
    for source in ([0, 0, 1], [0, 1], [0, 1, 3]):
        with pytest.raises(ValueError, match="permutation"):
            permute_rows(X, source)


def test_row_order_front_is_a_view_and_restore_puts_every_row_back():
    rng = np.random.default_rng(0)
    X0 = rng.normal(size=(50, 4))
    X = X0.copy()
    order = RowOrder(X)
    for _ in range(4):  # fronts one after another, each from the order the last left
        rows = rng.choice(50, size=30, replace=False)
        view = order.front(rows)
        assert np.shares_memory(view, X) and view.shape == (30, 4)
        np.testing.assert_array_equal(view, X0[rows])
        np.testing.assert_array_equal(X[order.position(rows)], X0[rows])
    order.restore()
    np.testing.assert_array_equal(X, X0)


def test_features_move_only_their_own_rows():
    ids = [f"img{i}" for i in range(6)]
    X0 = np.arange(12, dtype=np.float32).reshape(6, 2)
    borrowed = Features(list(ids), X0.copy(), [])
    part = borrowed.front(["img4", "img1"], "test")
    np.testing.assert_array_equal(part, X0[[4, 1]])
    assert not np.shares_memory(part, borrowed.X)
    np.testing.assert_array_equal(borrowed.X, X0)  # a caller's array is never reordered

    own = Features(list(ids), X0.copy(), [], own_rows=True)
    part = own.front(["img4", "img1"], "test")
    assert np.shares_memory(part, own.X)
    np.testing.assert_array_equal(part, X0[[4, 1]])
    for k, i in enumerate(ids):  # every id still finds its own descriptor
        np.testing.assert_array_equal(own.rows([i], "test")[0], X0[k])


def _many_classes(n_classes=110, per_class=5, d=300, seed=0):
    """More classes than `FOLD_BATCH_COLUMNS`: each fold is solved alone on its own rows."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), per_class)
    centres = rng.normal(size=(n_classes, d))
    X = np.abs(centres[y] + 2.0 * rng.normal(size=(len(y), d))).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    Y = np.where(y[:, None] == np.arange(n_classes), 1, -1).astype(np.int8)
    return X, Y, y


@pytest.mark.parametrize("width", [300, 100])  # 400 fold rows: Gram matrix (n <= 2d) or not
def test_folds_moved_in_place_score_as_copied_folds_and_leave_X_as_it_was(width):
    X, Y, y = _many_classes(d=width)
    folds = cv_folds(len(y), y, 5, 0)
    grid = [0.1, 10.0]
    copied = list(held_out_scores(X, Y, folds, grid, gram_cache={"X": X}))
    X_before = X.copy()
    cache = {"X": X}
    moved = list(held_out_scores(X, Y, folds, grid, copy_X=False, gram_cache=cache))
    np.testing.assert_array_equal(X, X_before)
    assert ("K" in cache) == (width == 300)  # the Gram path is the one exercised
    for (val_a, scores_a), (val_b, scores_b) in zip(copied, moved, strict=True):
        np.testing.assert_array_equal(val_a, val_b)
        for a, b in zip(scores_a, scores_b, strict=True):
            # Exact steps gather their Gram blocks in the matrix's row order, which differs
            # when rows were moved before it was made: float32 Cholesky rounding, within the
            # solver's tolerance (1e-3 of the gradient).
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)
            np.testing.assert_array_equal(a.argmax(1), b.argmax(1))


def test_a_selection_stopped_early_still_puts_the_rows_back():
    X, Y, y = _many_classes(d=100)
    X_before = X.copy()
    scores = held_out_scores(X, Y, cv_folds(len(y), y, 5, 0), [1.0], copy_X=False)
    next(scores)  # the first fold's rows are at the front now
    assert not np.array_equal(X, X_before)
    scores.close()
    np.testing.assert_array_equal(X, X_before)
    scores = held_out_scores(X, Y, cv_folds(len(y), y, 5, 0), [1.0], copy_X=False)
    next(scores)
    with pytest.raises(KeyboardInterrupt):  # a stop raised inside the selection
        scores.throw(KeyboardInterrupt)
    np.testing.assert_array_equal(X, X_before)


def test_probe_with_copy_X_false_fits_the_same_svms_and_returns_X_unchanged():
    X, _, y = _many_classes(d=100)
    X_before = X.copy()
    reference = LinearSVMProbe(C=[0.1, 10.0], cv=5).fit(X, y)
    probe = LinearSVMProbe(C=[0.1, 10.0], cv=5, copy_X=False).fit(X, y)
    np.testing.assert_array_equal(X, X_before)
    np.testing.assert_array_equal(probe.C_, reference.C_)
    np.testing.assert_allclose(probe.coef_, reference.coef_, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(probe.predict(X), reference.predict(X))
    X.flags.writeable = False  # e.g. a memory map opened read-only: copied as before
    frozen = LinearSVMProbe(C=[0.1, 10.0], cv=5, copy_X=False).fit(X, y)
    np.testing.assert_allclose(frozen.coef_, reference.coef_, rtol=1e-4, atol=1e-5)


def test_caltech_protocol_on_moved_rows_gives_the_results_of_copied_rows(tmp_path):
    """svm-eval's own rows (`own_rows`): each split's training rows moved to the front, and
    with more classes than `FOLD_BATCH_COLUMNS` / 2 each fold's too; the same SVMs, scores
    and choices as copies of them, and every descriptor still found by its id."""
    classes = [f"class{k:02d}" for k in range(60)]
    data = make_caltech(tmp_path, "101", classes=classes, per_class=7, size=(16, 16),
                        stray=False)
    reader = open_dataset("caltech101", data.root)
    ids = data.ids["all"]
    X = class_descriptors(data.labels["all"], dim=40, noise=0.8, seed=3)[:, 0]
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    settings = Settings(C=(0.1, 10.0), train_per_class=5, n_splits=2, verbose=False)
    copied = run_protocol(reader, Features(list(ids), X.copy(), []), settings)
    own = Features(list(ids), X.copy(), [], own_rows=True)
    moved = run_protocol(reader, own, settings)
    assert moved.headline == copied.headline
    assert moved.chosen_C == copied.chosen_C
    assert moved.rows == copied.rows
    assert moved.scores == copied.scores  # ids, truth and every decision value
    assert own.ids != list(ids)  # the rows did move
    np.testing.assert_array_equal(own.rows(ids, "all"), X)


def test_copy_x_other_than_a_bool_is_refused_before_any_row_moves():
    X, _, y = _many_classes(n_classes=3, d=10)
    X_before = X.copy()
    with pytest.raises(ValueError, match="copy_X must be True or False, got 'no'"):
        LinearSVMProbe(C=[0.1, 10.0], copy_X="no").fit(X, y)
    np.testing.assert_array_equal(X, X_before)
