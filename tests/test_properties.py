"""Property-based tests (hypothesis): the metrics against independent computations and
their invariances, the feature cache's round trip, and the resize geometry.

The references here are written from the definitions, not from vggfeat's code: AP as the
mean over positives of the interpolated precision (VOC 2010+), 11-point AP by brute force
over every cut-off, mean class recall with a confusion matrix.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from vggfeat.data.transforms import rescale, scaled_size
from vggfeat.evaluation.metrics import mean_class_recall, per_class_recall, voc07_ap, voc_ap

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def ranked(draw, min_size=1, max_size=40, difficult=True):
    """(scores, labels) with at least one positive; scores may tie."""
    n = draw(st.integers(min_size, max_size))
    values = [-1, 0, 1] if difficult else [-1, 1]
    labels = np.array(draw(st.lists(st.sampled_from(values), min_size=n, max_size=n)))
    assume((labels == 1).any())
    scores = np.array(draw(st.lists(st.integers(-5, 5), min_size=n, max_size=n)), float) / 2
    return scores, labels


def _cutoffs(scores, labels):
    """(precision, recall) after each of the first k items by descending score, stable."""
    keep = labels != 0
    s, y = scores[keep], labels[keep]
    order = sorted(range(len(s)), key=lambda i: -s[i])  # Python's sort is stable
    n_pos = int((y == 1).sum())
    points, tp = [], 0
    for k, i in enumerate(order, start=1):
        tp += y[i] == 1
        points.append((tp / k, tp / n_pos))
    return points


def reference_voc10(scores, labels) -> float:
    """Sum over recall steps of the best precision at that recall or more."""
    points = _cutoffs(scores, labels)
    total, previous = 0.0, 0.0
    for _, recall in points:
        if recall > previous:
            best = max(p for p, r in points if r >= recall)
            total += (recall - previous) * best
            previous = recall
    return total


def reference_voc07(scores, labels) -> float:
    points = _cutoffs(scores, labels)
    # The devkit's thresholds are MATLAB's 0:0.1:1, which computes the first half as k*0.1
    # and the second as 1 - (10-k)*0.1 (so 0.3 is 0.30000000000000004 and 0.7 is
    # 0.69999999999999996): a recall of 3/10 misses 0.3 but 7/10 reaches 0.7.
    thresholds = [k * 0.1 for k in range(6)] + [1 - (10 - k) * 0.1 for k in range(6, 11)]
    return sum(max([p for p, r in points if r >= t] or [0.0]) for t in thresholds) / 11


@FAST
@given(ranked())
def test_voc_ap_matches_the_definition(case):
    scores, labels = case
    assert voc_ap(scores, labels) == pytest.approx(reference_voc10(scores, labels), abs=1e-12)
    assert voc07_ap(scores, labels) == pytest.approx(reference_voc07(scores, labels), abs=1e-12)


@FAST
@given(ranked(), st.floats(0.1, 10), st.floats(-5, 5))
def test_ap_is_invariant_to_increasing_maps_of_the_scores(case, scale, shift):
    scores, labels = case
    for metric in (voc_ap, voc07_ap):
        base = metric(scores, labels)
        assert metric(scores * scale + shift, labels) == pytest.approx(base, abs=1e-12)
        assert metric(np.tanh(scores) * 3, labels) == pytest.approx(base, abs=1e-12)


@FAST
@given(ranked(difficult=False))
def test_ap_bounds_perfect_and_worst_rankings(case):
    scores, labels = case
    for metric in (voc_ap, voc07_ap):
        value = metric(scores, labels)
        assert 0.0 <= value <= 1.0 + 1e-12
        assert metric(labels.astype(float), labels) == pytest.approx(1.0)  # positives first
    n_pos = int((labels == 1).sum())
    worst = -labels.astype(float)  # every negative ranked first
    # precision only grows after the negatives, so the envelope is the final n_pos / n
    assert voc_ap(worst, labels) == pytest.approx(n_pos / len(labels), abs=1e-12)


@FAST
@given(ranked())
def test_difficult_items_change_nothing_and_a_permutation_without_ties_neither(case):
    scores, labels = case
    easy = labels != 0
    assert voc_ap(scores, labels) == pytest.approx(voc_ap(scores[easy], labels[easy]))
    distinct = scores + np.arange(len(scores)) * 1e-6  # break ties, keep the given order
    order = np.random.default_rng(0).permutation(len(scores))
    assert voc_ap(distinct[order], labels[order]) == pytest.approx(voc_ap(distinct, labels))


@FAST
@given(st.integers(2, 6).flatmap(lambda k: st.tuples(
    st.just(k), st.lists(st.integers(0, k - 1), min_size=1, max_size=60))), st.data())
def test_mean_class_recall_is_the_mean_diagonal_of_the_row_normalised_confusion(setup, data):
    k, truth = setup
    truth = np.array(truth)
    pred = np.array(data.draw(st.lists(st.integers(0, k - 1), min_size=len(truth),
                                       max_size=len(truth))))
    confusion = np.zeros((k, k))
    np.add.at(confusion, (truth, pred), 1)
    present = confusion.sum(axis=1) > 0
    expected = np.mean(np.diag(confusion)[present] / confusion.sum(axis=1)[present])
    assert mean_class_recall(truth, pred) == pytest.approx(expected)
    per_class = per_class_recall(truth, pred, range(k))
    assert np.isnan(per_class[~present]).all()
    assert np.nanmean(per_class) == pytest.approx(expected)
    # renaming the classes consistently changes nothing
    perm = np.random.default_rng(k).permutation(k)
    assert mean_class_recall(perm[truth], perm[pred]) == pytest.approx(expected)


# -- resize geometry ----------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 5000), st.integers(1, 2000))
def test_scaled_size_keeps_the_aspect_and_makes_the_short_side_q(h, w, q):
    sh, sw = scaled_size(h, w, q)
    assert min(sh, sw) == q
    # the short side stays the short side, the long one is the rounded exact scale
    if h <= w:
        assert sh == q and sw == max(q, math.floor(w * q / h + 0.5))
    else:
        assert sw == q and sh == max(q, math.floor(h * q / w + 0.5))
    assert abs(max(sh, sw) - max(h, w) * q / min(h, w)) <= 0.5 + 1e-9
    assert scaled_size(w, h, q) == (sw, sh)  # transposing commutes
    assert scaled_size(sh, sw, q) == (sh, sw)  # idempotent


@pytest.mark.parametrize("q", [0, -3])
def test_scaled_size_refuses_a_non_positive_scale(q):
    with pytest.raises(ValueError, match="positive"):
        scaled_size(10, 20, q)


@settings(max_examples=15, deadline=None)
@given(st.integers(4, 40), st.integers(4, 40), st.integers(4, 48), st.data())
def test_rescale_shape_range_and_constants(h, w, q, data):
    values = data.draw(arrays(np.float32, (3, h, w), elements=st.floats(0, 1, width=32)))
    x = torch.from_numpy(values)
    y = rescale(x, q)
    assert tuple(y.shape) == (3, *scaled_size(h, w, q))
    # an interpolating filter with non-negative weights stays within the input's range
    assert float(y.min()) >= float(x.min()) - 1e-5 and float(y.max()) <= float(x.max()) + 1e-5
    constant = torch.full((3, h, w), 0.25)
    assert torch.allclose(rescale(constant, q), torch.tensor(0.25), atol=1e-6)
    flipped = rescale(x.flip(-1), q)  # the filter is symmetric: mirroring commutes
    assert torch.allclose(flipped, y.flip(-1), atol=1e-5)


# -- the feature cache round trip -----------------------------------------------------------

@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.integers(1, 12), st.integers(1, 3), st.integers(1, 9), st.data())
def test_cache_round_trip_returns_what_was_written(tmp_path, n, n_scales, dim, data):
    from helpers_datasets import write_feature_cache

    from vggfeat.features.cache import load_features, read_descriptors

    ids = data.draw(st.lists(st.text(st.characters(codec="utf-8", exclude_characters="\x00"),
                                     min_size=1, max_size=12), min_size=n, max_size=n,
                             unique=True))
    x = data.draw(arrays(np.float32, (n, n_scales, dim),
                         elements=st.floats(-1e4, 1e4, width=32)))
    done = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    path = tmp_path / f"c{abs(hash((n, n_scales, dim, tuple(ids))))}.h5"
    write_feature_cache(path, dataset="folder", root=tmp_path, ids=ids, descriptors=x,
                        done=done)
    with pytest.warns(UserWarning) if not done.all() else _nothing():
        got_ids, got = read_descriptors(path)
    assert got_ids == [i for i, d in zip(ids, done, strict=True) if d]
    np.testing.assert_array_equal(got, x[done])
    if done.any():
        with pytest.warns(UserWarning) if not done.all() else _nothing():
            _, rows = load_features(path, aggregate="stack", l2=False)
        np.testing.assert_allclose(rows, x[done].reshape(int(done.sum()), -1), rtol=1e-6)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# -- plots over degenerate figures ----------------------------------------------------------
# A plot is drawn after the results are written, and must not fail on figures a real run
# makes: every class with the same recall on every split, all zero, one split, one class,
# and extreme but finite values (the smallest subnormal, one ulp below 1).

EXTREMES = (0.0, 1.0, 5e-324, 1e-300, 1 - 2 ** -53, 0.1, 1 / 3)
PLOTS = settings(max_examples=12, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture,
                                        HealthCheck.too_slow])


@st.composite
def figures(draw, max_rows=5, max_cols=4):
    """(rows, cols) values in [0, 1]: all equal, all zero, extremes, or any."""
    shape = (draw(st.integers(1, max_rows)), draw(st.integers(1, max_cols)))
    kind = draw(st.sampled_from(["equal", "zero", "extreme", "any"]))
    if kind == "zero":
        return np.zeros(shape)
    if kind == "equal":
        return np.full(shape, draw(st.sampled_from(EXTREMES) | st.floats(0, 1)))
    elements = st.sampled_from(EXTREMES) if kind == "extreme" else st.floats(0, 1)
    values = draw(st.lists(elements, min_size=shape[0] * shape[1],
                           max_size=shape[0] * shape[1]))
    return np.array(values).reshape(shape)


def _png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _recall_result(table):
    """A multi-class Result: class k's recall on split s is table[k, s]."""
    from vggfeat.evaluation.protocols import Result

    classes = tuple(f"class {k}" for k in range(table.shape[0]))
    rows = [{"split": s, "class": c, "C": 1.0, "recall": float(table[k, s])}
            for s in range(table.shape[1]) for k, c in enumerate(classes)]
    return Result("folder", "", classes, rows=rows,
                  headline={"mean_class_recall": float(table.mean())})


@PLOTS
@given(figures())
@example(np.full((2, 3), 0.1))  # the mean of three 0.1s is not 0.1: no negative error bar
def test_recall_plot_draws_any_recalls(tmp_path, table):
    from vggfeat.evaluation import report

    assert _png(report.plot_recall(_recall_result(table), tmp_path))


@PLOTS
@given(st.integers(1, 6), st.sampled_from(["zero", "equal", "huge", "any"]), st.data())
def test_confusion_plot_draws_any_counts(tmp_path, k, kind, data):
    from vggfeat.evaluation import report

    if kind == "zero":
        counts = np.zeros((k, k), np.int64)
    elif kind == "equal":
        counts = np.full((k, k), data.draw(st.integers(0, 2 ** 40)), np.int64)
    else:
        top = 2 ** 40 if kind == "huge" else 50
        counts = data.draw(arrays(np.int64, (k, k), elements=st.integers(0, top)))
    result = _recall_result(np.full((k, 2), 0.5))
    assert _png(report.plot_confusion(result, counts, tmp_path))


@PLOTS
@given(figures(max_rows=4, max_cols=6), st.data())
def test_precision_recall_plot_draws_any_curves(tmp_path, table, data):
    """One curve per row of `table` (as precision and recall, cut to a drawn length)."""
    from vggfeat.evaluation import report
    from vggfeat.evaluation.protocols import Result

    classes = tuple(f"c{k}" for k in range(table.shape[0]))
    curves = {}
    for k, c in enumerate(classes):
        n = data.draw(st.integers(0, table.shape[1]))
        curves[c] = (table[k, :n], np.sort(table[k, :n]))
    rows = [{"split": "test", "class": c, "ap_voc10": float(table[k].mean())}
            for k, c in enumerate(classes)]
    result = Result("voc2007", "", classes, rows=rows, curves={"test": curves})
    assert _png(report.plot_pr_split(result, "test", curves, tmp_path / "pr.png"))


@PLOTS
@given(figures(max_rows=3, max_cols=4), st.lists(st.sampled_from([1, 2, 5, 10 ** 6]),
                                                  min_size=1, max_size=3, unique=True))
def test_learning_curve_plot_draws_any_figures(tmp_path, table, sizes):
    """Row s of `table`: the metric on split s, the same at every size and probe."""
    from vggfeat.evaluation.learning_curve import plot_curve

    rows = [{"probe": probe, "train_per_class": n, "split": s, "mean_class_recall": v}
            for probe in ("svm", "knn") for n in sorted(sizes)
            for s, v in enumerate(table[:, 0])]
    assert _png(plot_curve(rows, "mean_class_recall", tmp_path / "curve.png"))


@PLOTS
@given(figures(max_rows=4, max_cols=3))
def test_comparison_plot_draws_any_runs(tmp_path, table):
    """Column r of `table`: run r's recall of each class (row) and its headline."""
    from vggfeat.evaluation.compare import Run, plot_comparison

    runs = []
    for r in range(table.shape[1]):
        summary = {"dataset": "folder", "headline": {
            "headline": "mean_class_recall", "mean_class_recall": float(table[:, r].mean()),
            "mean_class_recall_std": float(table[:, r].std())}}
        rows = [{"split": "0", "class": f"c{k}", "recall": str(v)}
                for k, v in enumerate(table[:, r])]
        runs.append(Run(tmp_path / f"run{r}", f"run{r}", summary, rows))
    assert _png(plot_comparison(runs, tmp_path / "compare.png"))
