"""PASCAL VOC average precision (both devkit variants, as in the devkit's VOCevalcls.m) and
mean class recall.

A translation of ``VOCevalcls.m`` / ``VOCap.m`` from the VOC devkits. scikit-learn's
``average_precision_score`` is neither variant (it does not interpolate precision), so it
must not be used for VOC numbers.
"""
from __future__ import annotations

import numpy as np

# Recall thresholds of the 11-point AP, as MATLAB's ``0:0.1:1`` computes them: the colon
# operator fills the first half as k*0.1 and the second half as 1 - (10-k)*0.1, so e.g.
# the 8th threshold is 1 - 0.3 (0.6999...96), not 7 * 0.1 (0.7000...01) as np.arange gives.
# A recall of exactly 7/10 therefore reaches it, as in the devkit.
VOC07_THRESHOLDS = np.array([k * 0.1 for k in range(6)] + [1 - k * 0.1 for k in range(4, -1, -1)])


def _check(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores but {labels.size} labels")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or Inf")
    if not np.isin(labels, (-1, 0, 1)).all():
        raise ValueError("labels must be 1 (positive), -1 (negative) or 0 (difficult, ignored)")
    if not (labels > 0).any():
        raise ValueError("no positive labels: average precision is undefined")
    return scores, labels.astype(np.int64)


def precision_recall(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall after each retrieved non-difficult item, by descending score.

    Parameters
    ----------
    scores : array-like of shape (n,)
        Decision values; higher means more confident positive.
    labels : array-like of shape (n,)
        1 positive, -1 negative, 0 difficult (ignored, as the devkit does).

    Returns
    -------
    precision, recall : ndarray of shape (n_non_difficult,)
    """
    scores, labels = _check(scores, labels)
    keep = labels != 0
    scores, labels = scores[keep], labels[keep]
    # MATLAB's sort is stable: tied scores keep the order in which they were given.
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(labels[order] > 0)
    fp = np.cumsum(labels[order] < 0)
    recall = tp / tp[-1]
    precision = tp / (tp + fp)
    return precision, recall


def voc07_ap(scores, labels) -> float:
    """VOC 2007 11-point interpolated average precision.

    AP is the mean over t in {0, 0.1, ..., 1} of the best precision at recall >= t
    (0 where no recall reaches t).

    Parameters
    ----------
    scores : array-like of shape (n,)
    labels : array-like of shape (n,)
        1 positive, -1 negative, 0 difficult (ignored).

    Returns
    -------
    float

    Examples
    --------
    >>> voc07_ap([0.9, 0.8, 0.7], [1, -1, 1])
    0.8484848484848484
    """
    precision, recall = precision_recall(scores, labels)
    best = [precision[recall >= t].max() if (recall >= t).any() else 0.0 for t in VOC07_THRESHOLDS]
    return float(np.mean(best))


def voc_ap(scores, labels) -> float:
    """VOC 2010+ average precision: area under the monotone precision envelope.

    Parameters
    ----------
    scores : array-like of shape (n,)
    labels : array-like of shape (n,)
        1 positive, -1 negative, 0 difficult (ignored).

    Returns
    -------
    float

    Examples
    --------
    >>> voc_ap([0.9, 0.8, 0.7], [1, -1, 1])
    0.8333333333333333
    """
    precision, recall = precision_recall(scores, labels)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    changes = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[changes] - mrec[changes - 1]) * mpre[changes]))


def mean_class_recall(y_true, y_pred, labels=None) -> float:
    """Mean over classes of (correct predictions in the class / test images in the class).

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n,)
    labels : array-like, optional
        Classes to average over; default: the classes present in ``y_true``.

    Returns
    -------
    float

    Examples
    --------
    >>> mean_class_recall([0, 0, 0, 1], [0, 0, 1, 1])
    0.8333333333333333
    """
    y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{y_true.size} true labels but {y_pred.size} predictions")
    classes = np.unique(y_true) if labels is None else np.asarray(labels)
    recalls = []
    for c in classes:
        in_class = y_true == c
        if not in_class.any():
            name = c.item() if isinstance(c, np.generic) else c
            raise ValueError(f"class {name!r} has no test images: its recall is undefined")
        recalls.append(np.mean(y_pred[in_class] == c))
    return float(np.mean(recalls))


def per_class_recall(y_true, y_pred, labels) -> np.ndarray:
    """Recall of each class in ``labels`` (NaN for a class without test images)."""
    y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    out = np.full(len(labels), np.nan)
    for k, c in enumerate(labels):
        in_class = y_true == c
        if in_class.any():
            out[k] = np.mean(y_pred[in_class] == c)
    return out
