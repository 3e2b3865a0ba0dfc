"""L2-regularised logistic regression on fixed descriptors (scikit-learn's
``LogisticRegression``, lbfgs), C chosen as the SVM's is.

Single-label data is one multinomial (softmax) model, one C for all classes chosen by the
cross-validated mean class recall of its argmax; multi-label data (VOC) is one binary model
per class, each with its own C chosen by held-out AP (one-vs-rest), a "difficult" row
left out of its class's model (``difficult="ignore"``) as the SVM leaves it out.
Each model starts from zero (no warm start along the grid), so a fit is exactly what
``LogisticRegression(C=c, max_iter=max_iter, tol=tol).fit`` gives on the same rows.
"""
from __future__ import annotations

import warnings

import numpy as np

from vggfeat.evaluation.probes.base import SelectedProbe, single_labels
from vggfeat.evaluation.svm.probe import C_GRID


class LogisticRegressionProbe(SelectedProbe):
    """Logistic regression on fixed descriptors, C chosen by cross-validation.

    Parameters
    ----------
    C : float or sequence of float, default=C_GRID
        The grid of inverse regularisation strengths (one value: no selection).
    cv : int or float, default=3
        Folds, or a held-out fraction, of the training images (as `LinearSVMProbe`).
    difficult : {"ignore", "positive"}, default="ignore"
        What a 0 in a VOC label matrix means in training.
    tol : float, default=1e-4
        lbfgs tolerance (scikit-learn's default).
    max_iter : int, default=1000
        lbfgs iteration limit (choice: scikit-learn's 100 stops short on 4096-D
        descriptors at large C).
    random_state : int, default=0
        Seed of the cross-validation folds.

    Attributes
    ----------
    chosen_ : ndarray of shape (n_columns,)
        The C of each score column (all equal for single-label data).
    cv_scores_ : ndarray or None
        As `LinearSVMProbe.cv_scores_`.
    coef_ : ndarray of shape (n_columns, n_features)
    intercept_ : ndarray of shape (n_columns,)
    n_iter_ : ndarray of shape (n_columns,)
        lbfgs iterations of each column's final model.
    classes_ : ndarray
    multi_label_ : bool

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[0.0, 1.0], [0.1, 0.9], [1.0, 0.0], [0.9, 0.2]] * 5)
    >>> y = np.array([0, 0, 1, 1] * 5)
    >>> LogisticRegressionProbe(C=1.0).fit(X, y).predict([[0.0, 1.0], [1.0, 0.1]]).tolist()
    [0, 1]
    """

    hyperparameter = "C"

    def __init__(self, C=C_GRID, cv=3, difficult="ignore", tol=1e-4, max_iter=1000,
                 random_state=0):
        self.C = C
        self.cv = cv
        self.difficult = difficult
        self.tol = tol
        self.max_iter = max_iter
        self.random_state = random_state

    def _grid(self, n_rows):
        grid = sorted(float(c) for c in np.atleast_1d(self.C))
        if not grid or min(grid) <= 0:
            raise ValueError(f"C must be positive, got {self.C!r}")
        return grid

    def _fold_scores(self, X_train, Y_train, X_val, grid, progress=None):
        scores = []
        for c in grid:
            W, b, _ = self._fit_columns(X_train, Y_train, np.full(Y_train.shape[1], c))
            scores.append(X_val @ W.T + b)
        return scores

    def _refit(self, X, Y, chosen):
        self.coef_, self.intercept_, self.n_iter_ = self._fit_columns(X, Y, chosen)

    def _scores(self, X):
        return X @ self.coef_.T + self.intercept_

    def _fit_columns(self, X, Y, C):
        """(W, b, lbfgs iterations) with one row per column of Y: one multinomial model for
        single-label data (C all equal), one binary model per column for multi-label data."""
        if not self.multi_label_:
            return self._multinomial(X, single_labels(Y), float(C[0]), Y.shape[1])
        W, b = np.zeros((Y.shape[1], X.shape[1])), np.zeros(Y.shape[1])
        n_iter = np.zeros(Y.shape[1], dtype=np.int64)
        for k in range(Y.shape[1]):
            rows = Y[:, k] != 0
            y = Y[rows, k] == 1
            if y.all() or not y.any():  # a fold without both kinds: no information
                continue
            model = self._model(C[k]).fit(X[rows], y)
            W[k], b[k], n_iter[k] = model.coef_[0], model.intercept_[0], model.n_iter_[0]
        return W, b, n_iter

    def _multinomial(self, X, labels, C, n_columns):
        """Scores for every class; a class absent from a fold's training rows scores -inf
        (never the argmax), as it cannot be predicted."""
        model = self._model(C).fit(X, labels)
        n_iter = np.full(n_columns, int(model.n_iter_[0]))
        if n_columns == 1:  # two classes: one column, class 1 vs class 0
            return model.coef_, model.intercept_, n_iter
        W = np.zeros((n_columns, X.shape[1]))
        b = np.full(n_columns, -np.inf)
        if len(model.classes_) == 2:  # binary model: class 1's score against class 0's zero
            b[model.classes_[0]] = 0.0
            W[model.classes_[1]], b[model.classes_[1]] = model.coef_[0], model.intercept_[0]
        else:
            W[model.classes_], b[model.classes_] = model.coef_, model.intercept_
        return W, b, n_iter

    def _model(self, C):
        from sklearn.linear_model import LogisticRegression

        return _Quiet(LogisticRegression(C=float(C), tol=self.tol, max_iter=self.max_iter))


class _Quiet:
    """A LogisticRegression whose fit does not warn when lbfgs reaches max_iter (its
    documented limit, as the liblinear reference's)."""

    def __init__(self, model):
        self.model = model

    def fit(self, X, y):
        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return self.model.fit(X, y)
