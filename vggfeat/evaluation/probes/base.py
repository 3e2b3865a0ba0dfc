"""What the probes share: the targets, the choice of their hyper-parameter on training data
only (the SVM's selection, `vggfeat.evaluation.svm.selection`), the refit and the scores.

A probe is a scikit-learn classifier whose ``decision_function`` gives one score column
per class (a single column for two classes, as scikit-learn's), and whose ``chosen_``
holds the value of its hyper-parameter (``hyperparameter``: "C" or "k") used by each
column. The protocols (`vggfeat.evaluation.protocols.common.fit_probe`) use nothing else.
"""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from vggfeat.evaluation.svm.probe import LinearSVMProbe, validate_data
from vggfeat.evaluation.svm.selection import select_C, select_shared_C


class SelectedProbe(ClassifierMixin, BaseEstimator):
    """Base of the probes beside the SVM: a grid of one hyper-parameter, chosen as the
    SVM's C is (``C_selection="auto"``: per class by held-out AP for multi-label data, one
    value for all classes by cross-validated mean class recall for single-label data).

    Subclasses set ``hyperparameter`` and implement ``_grid(n_rows)``,
    ``_fold_scores(X_train, Y_train, X_val, grid, progress=None)`` (held-out scores at each
    grid value), ``_refit(X, Y, chosen_values)`` and ``_scores(X)``.
    """

    hyperparameter = "C"
    C_selection = "auto"  # the SVM's rule; the other probes have no other

    # The SVM's conversion of y (class labels, or a 1/0/-1 VOC label matrix) into
    # one-vs-rest columns in {-1, 0, 1}, and its rule for how the grid is chosen.
    _targets = LinearSVMProbe._targets
    _selection = LinearSVMProbe._selection

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags

    def fit(self, X, y):
        """Choose the hyper-parameter by cross-validation on (X, y), then refit on all of it.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Class labels, or a label matrix (1/0 indicator, or VOC 1/0/-1, 0 difficult).

        Returns
        -------
        self
        """
        X, y = validate_data(self, X, y, multi_output=True, dtype=(np.float64, np.float32),
                             ensure_min_samples=2)
        X = np.asarray(X, dtype=np.float64)
        Y, strata = self._targets(y)
        _check_columns(self, Y)
        grid = self._grid(len(Y))
        self.grid_ = np.asarray(grid)
        self.C_selection_ = self._selection()
        self.cv_scores_ = None
        chosen = np.zeros(Y.shape[1], dtype=np.int64)
        if len(grid) > 1:
            select = select_shared_C if self.C_selection_ == "shared" else select_C
            self.cv_scores_, chosen = select(X, Y, grid, cv=self.cv, strata=strata,
                                             random_state=self.random_state,
                                             fold_scores=self._fold_scores)
            chosen = np.broadcast_to(chosen, (Y.shape[1],)).copy()
        self.chosen_ = np.asarray(grid)[chosen]
        self._refit(X, Y, self.chosen_)
        return self

    def decision_function(self, X):
        """Each class's score (one column; 1-D for two single-label classes).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_columns), or (n_samples,) for binary data
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        scores = self._scores(np.asarray(X, dtype=np.float64))
        return scores.ravel() if scores.shape[1] == 1 and not self.multi_label_ else scores

    def predict(self, X):
        """Class with the highest score (label indicator for multi-label data)."""
        scores = self.decision_function(X)
        if self.multi_label_:
            return (scores > self._threshold).astype(np.int64)
        if scores.ndim == 1:
            return self.classes_[(scores > 0).astype(np.int64)]
        return self.classes_[np.argmax(scores, axis=1)]

    _threshold = 0.0  # a multi-label column's positive decision (kNN: a majority vote)


def _check_columns(probe, Y) -> None:
    """Every column needs a positive and a negative training example (as the SVM's)."""
    for k in range(Y.shape[1]):
        if not (Y[:, k] == 1).any() or not (Y[:, k] == -1).any():
            kind = "positive" if not (Y[:, k] == 1).any() else "negative"
            name = probe.classes_[k].item() if probe.multi_label_ else probe.classes_[k]
            raise ValueError(f"class {name!r} has no {kind} training example")


def single_labels(Y) -> np.ndarray:
    """Class index of each row of a single-label one-vs-rest coding (one column: 0 or 1)."""
    Y = np.asarray(Y)
    return (Y[:, 0] == 1).astype(np.int64) if Y.shape[1] == 1 else np.argmax(Y, axis=1)
