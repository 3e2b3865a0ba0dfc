"""VOC AP (2007 11-point and 2010+) and mean class recall against hand-worked examples and a
literal, loop-by-loop translation of the devkit's MATLAB code."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vggfeat.evaluation.metrics import (
    mean_class_recall,
    per_class_recall,
    precision_recall,
    voc07_ap,
    voc_ap,
)


def _matlab_colon_0_01_1():
    """MATLAB's 0:0.1:1 (colon operator: first half a+k*d, second half b-k*d)."""
    n = 10
    c = [0.0] * (n + 1)
    for k in range(n // 2 + 1):
        c[k] = 0 + k * 0.1
        c[n - k] = 1 - k * 0.1
    return c


def _devkit(out, gt, year):
    """VOCevalcls.m / VOCap.m, translated literally: difficult items stay in the ranking
    (contributing neither tp nor fp), 0/0 precision is NaN, and MATLAB's max ignores NaN."""
    out, gt = list(map(float, out)), list(map(int, gt))
    si = sorted(range(len(out)), key=lambda i: -out[i])  # sort(-out): stable
    tp_c = fp_c = 0
    rec, prec = [], []
    npos = sum(1 for g in gt if g > 0)
    for i in si:
        tp_c += gt[i] > 0
        fp_c += gt[i] < 0
        rec.append(tp_c / npos)
        prec.append(tp_c / (tp_c + fp_c) if tp_c + fp_c else math.nan)

    def nanmax(a, b):
        return b if math.isnan(a) else a if math.isnan(b) else max(a, b)

    if year == 2007:
        ap = 0.0
        for t in _matlab_colon_0_01_1():
            ps = [p for p, r in zip(prec, rec, strict=True) if r >= t and not math.isnan(p)]
            ap += (max(ps) if ps else 0.0) / 11
        return ap
    mrec = [0.0] + rec + [1.0]
    mpre = [0.0] + prec + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = nanmax(mpre[i], mpre[i + 1])
    changes = [i for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1]]
    return sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in changes)


def test_hand_worked_small_example():
    # Ranking: +, -, +  -> precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
    assert voc07_ap([0.9, 0.8, 0.7], [1, -1, 1]) == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)
    assert voc_ap([0.9, 0.8, 0.7], [1, -1, 1]) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_hand_worked_with_difficult_and_unsorted_input():
    # Sorted by score: + (0.95), difficult (0.9), - (0.8), + (0.6), - (0.5), + (0.1).
    scores = [0.1, 0.8, 0.95, 0.5, 0.9, 0.6]
    labels = [1, -1, 1, -1, 0, 1]
    # Non-difficult ranking: +, -, +, -, +: precision 1, 1/2, 2/3, 1/2, 3/5; recall 1/3, 1/3,
    # 2/3, 2/3, 1. Envelope: 1 up to recall 1/3, 2/3 up to 2/3, 3/5 up to 1.
    assert voc_ap(scores, labels) == pytest.approx(1 / 3 * 1 + 1 / 3 * 2 / 3 + 1 / 3 * 3 / 5)
    # 11-point: t in {0, .1, .2, .3} -> 1 (recall 1/3 = .333 >= .3); t in {.4, .5, .6} -> 2/3
    # (recall 2/3 = .667 >= .6); t in {.7, .8, .9, 1} -> 3/5.
    assert voc07_ap(scores, labels) == pytest.approx((4 * 1 + 3 * 2 / 3 + 4 * 3 / 5) / 11)


def test_voc07_thresholds_are_matlabs_not_numpy_arange():
    # 10 positives: seven first, then 3 negatives, then 3 positives. Recall after the
    # 7th item is 7/10, which reaches MATLAB's 8th threshold (1 - 0.3) but not 0.7000...01.
    labels = [1] * 7 + [-1] * 3 + [1] * 3
    scores = -np.arange(len(labels), dtype=float)
    assert voc07_ap(scores, labels) == pytest.approx((8 * 1 + 3 * 10 / 13) / 11)
    assert voc07_ap(scores, labels) == pytest.approx(_devkit(scores, labels, 2007))


def test_difficult_items_never_change_ap():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=30)
    labels = np.where(rng.random(30) < 0.3, 1, -1)
    labels[0] = 1
    base07, base10 = voc07_ap(scores, labels), voc_ap(scores, labels)
    more_scores = np.concatenate([scores, rng.normal(size=10) * 3])
    more_labels = np.concatenate([labels, np.zeros(10, int)])
    assert voc07_ap(more_scores, more_labels) == base07
    assert voc_ap(more_scores, more_labels) == base10


def test_perfect_and_worst_rankings():
    labels = [1, 1, -1, -1, -1]
    assert voc07_ap([5, 4, 3, 2, 1], labels) == 1.0
    assert voc_ap([5, 4, 3, 2, 1], labels) == 1.0
    # Positives last: precision 1/4 and 2/5 at recall 1/2 and 1.
    assert voc_ap([1, 2, 3, 4, 5], labels) == pytest.approx(0.5 * 2 / 5 + 0.5 * 2 / 5)


def test_ties_keep_input_order_like_matlab_sort():
    # Equal scores: the devkit's stable sort ranks the first-listed item first.
    assert voc_ap([1.0, 1.0], [1, -1]) == 1.0
    assert voc_ap([1.0, 1.0], [-1, 1]) == pytest.approx(0.5)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(-5, 5), st.sampled_from([1, -1, 0, 0, -1])), min_size=1, max_size=40
    )
)
def test_matches_literal_devkit_translation(items):
    scores = [s / 2 for s, _ in items]  # integers/2: many ties, exactly representable
    labels = [lab for _, lab in items]
    if not any(lab > 0 for lab in labels):
        with pytest.raises(ValueError, match="no positive"):
            voc_ap(scores, labels)
        return
    assert voc07_ap(scores, labels) == pytest.approx(_devkit(scores, labels, 2007), abs=1e-12)
    assert voc_ap(scores, labels) == pytest.approx(_devkit(scores, labels, 2010), abs=1e-12)


def test_precision_recall_drops_difficult():
    precision, recall = precision_recall([3, 2, 1], [1, 0, -1])
    np.testing.assert_allclose(precision, [1, 0.5])
    np.testing.assert_allclose(recall, [1, 1])


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        voc_ap([np.nan, 1], [1, -1])
    with pytest.raises(ValueError, match="1 .positive"):
        voc07_ap([1, 2], [1, 2])
    with pytest.raises(ValueError, match="2 scores but 3 labels"):
        voc_ap([1, 2], [1, -1, 1])


def test_mean_class_recall_hand_worked():
    y_true = [0, 0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 0, 1, 1, 0, 1]
    # Recalls: 3/4, 1/2, 0 -> mean 5/12 (accuracy would be 4/7).
    assert mean_class_recall(y_true, y_pred) == pytest.approx(5 / 12)
    np.testing.assert_allclose(per_class_recall(y_true, y_pred, [0, 1, 2, 3]),
                               [0.75, 0.5, 0, np.nan])
    with pytest.raises(ValueError, match="class 3"):
        mean_class_recall(y_true, y_pred, labels=[0, 1, 2, 3])
