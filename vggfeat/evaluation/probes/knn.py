"""k nearest neighbours by cosine similarity, each neighbour voting with its similarity.

The descriptors are L2-normalised (a zero descriptor stays zero), so the cosine similarity
of two images is a dot product. A test image's score for a class is the similarity-weighted
share of its k most similar training images that belong to the class:

    score_c(x) = sum_{j in N_k(x)} w_j [y_j = c] / sum_{j in N_k(x)} w_j,
    w_j = max(cos(x, x_j), 0)   (0 / 0 is 0)

which is scikit-learn's ``KNeighborsClassifier(metric="cosine", weights=w).predict_proba``
with ``w(d) = max(1 - d, 0)`` (its cosine distance d is 1 - cos). A neighbour pointing away
(negative similarity) does not vote. For multi-label data (VOC) each class is a binary
vote among the training images labelled for it (a "difficult" image is left out of its
class's neighbours with ``difficult="ignore"``), and the score is the AP's ranking value.
k is chosen from its grid as the SVM's C is (multi-label: per class by held-out AP;
single-label: one k by the cross-validated mean class recall of the argmax); a k larger
than the training images available is that number.
"""
from __future__ import annotations

import numpy as np

from vggfeat.evaluation.probes.base import SelectedProbe, single_labels

# The grid of k (choice: the values DINOv2 and VISSL report, from 1 to 100).
K_GRID = (1, 5, 10, 20, 50, 100)
# Test rows whose similarities to all training rows are held at once (memory: rows x n).
CHUNK = 1024


def similarity_weight(distance):
    """scikit-learn's ``weights`` callable for this vote: the cosine similarity 1 - d,
    floored at 0."""
    return np.maximum(1.0 - np.asarray(distance), 0.0)


def l2_normalised(X) -> np.ndarray:
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return np.asarray(X, dtype=np.float64) / np.where(norms == 0, 1.0, norms)


def neighbour_votes(train, P, test, ks, rows=None) -> list[np.ndarray]:
    """Similarity-weighted vote shares of the k nearest training rows, for each k in `ks`.

    Args:
        train, test: L2-normalised rows.
        P: (n_train, m) what each training row votes for (one-hot or 0/1 columns).
        ks: ascending neighbour counts; each is capped at the candidate rows.
        rows: boolean mask of the candidate training rows [default: all].

    Returns:
        One (n_test, m) array per k.
    """
    candidates = np.flatnonzero(rows) if rows is not None else np.arange(len(train))
    cand_X, cand_P = train[candidates], np.asarray(P, dtype=np.float64)[candidates]
    kmax = min(max(ks), len(candidates))
    out = [np.zeros((len(test), P.shape[1])) for _ in ks]
    for start in range(0, len(test), CHUNK):
        sims = test[start:start + CHUNK] @ cand_X.T
        idx, weights = _nearest(sims, kmax)
        votes = np.zeros((len(sims), P.shape[1]))
        total = np.zeros(len(sims))
        done = 0
        for g, k in enumerate(ks):
            for j in range(done, min(k, kmax)):  # neighbours in order, as scikit-learn adds
                votes += weights[:, j, None] * cand_P[idx[:, j]]
                total += weights[:, j]
            done = max(done, min(k, kmax))
            out[g][start:start + len(sims)] = votes / np.where(total == 0, 1.0, total)[:, None]
    return out


def _nearest(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices of each row's k largest similarities, most similar first, and their
    weights."""
    if k < sims.shape[1]:
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(sims.shape[1]), sims.shape)
    order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1, kind="stable")
    idx = np.take_along_axis(part, order, axis=1)
    return idx, np.maximum(np.take_along_axis(sims, idx, axis=1), 0.0)


class KNNProbe(SelectedProbe):
    """Cosine k-nearest-neighbour classifier with a similarity-weighted vote, k chosen by
    cross-validation on the training data.

    Parameters
    ----------
    k : int or sequence of int, default=K_GRID
        The grid of neighbour counts (one value: no selection).
    cv : int or float, default=3
        Folds, or a held-out fraction, of the training images (as `LinearSVMProbe`).
    difficult : {"ignore", "positive"}, default="ignore"
        What a 0 in a VOC label matrix means in training.
    random_state : int, default=0
        Seed of the cross-validation folds.

    Attributes
    ----------
    chosen_ : ndarray of shape (n_columns,)
        The k of each score column (all equal for single-label data).
    grid_ : ndarray
        The grid after capping at the number of training images.
    cv_scores_ : ndarray or None
    classes_ : ndarray
    multi_label_ : bool

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[0.0, 1.0], [0.1, 0.9], [1.0, 0.0], [0.9, 0.2]] * 5)
    >>> y = np.array([0, 0, 1, 1] * 5)
    >>> KNNProbe(k=3).fit(X, y).predict([[0.0, 1.0], [1.0, 0.1]]).tolist()
    [0, 1]
    """

    hyperparameter = "k"
    _threshold = 0.5  # multi-label: the neighbours' weighted majority

    def __init__(self, k=K_GRID, cv=3, difficult="ignore", random_state=0):
        self.k = k
        self.cv = cv
        self.difficult = difficult
        self.random_state = random_state

    def _grid(self, n_rows):
        values = [int(k) for k in np.atleast_1d(self.k)]
        if not values or min(values) < 1:
            raise ValueError(f"k must be positive integers, got {self.k!r}")
        return sorted({min(k, n_rows) for k in values})

    def _votes(self, train, Y, test, ks) -> list[np.ndarray]:
        """Scores at each k: one column per class (one column, class 1's share minus class
        0's, for two single-label classes, as the SVM's single column)."""
        train, test = l2_normalised(train), l2_normalised(test)
        if not self.multi_label_:
            labels = single_labels(Y)
            n_classes = max(Y.shape[1], 2)
            shares = neighbour_votes(train, np.eye(n_classes)[labels], test, ks)
            return [s[:, 1:] - s[:, :1] if Y.shape[1] == 1 else s for s in shares]
        if not (Y == 0).any():  # every class votes among the same neighbours
            return neighbour_votes(train, Y == 1, test, ks)
        columns = [neighbour_votes(train, Y[:, [c]] == 1, test, ks, rows=Y[:, c] != 0)
                   for c in range(Y.shape[1])]
        return [np.concatenate([col[g] for col in columns], axis=1) for g in range(len(ks))]

    def _fold_scores(self, X_train, Y_train, X_val, grid, progress=None):
        return self._votes(X_train, Y_train, X_val, list(grid))

    def _refit(self, X, Y, chosen):
        self.train_X_, self.train_Y_ = X, Y

    def _scores(self, X):
        ks = sorted(set(self.chosen_.tolist()))
        votes = self._votes(self.train_X_, self.train_Y_, X, ks)
        columns = [votes[ks.index(k)][:, c] for c, k in enumerate(self.chosen_)]
        return np.stack(columns, axis=1) if len(columns) > 1 else votes[0]
