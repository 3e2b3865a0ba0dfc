"""The estimator: `LinearSVMProbe`, one-vs-rest linear SVMs with C chosen by cross-validation."""
from __future__ import annotations

import sys

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d

from vggfeat.evaluation.svm.path import refit_from, refit_path
from vggfeat.evaluation.svm.selection import select_C, select_shared_C
from vggfeat.utils.progress import progress_bar

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data
except ImportError:  # pragma: no cover - older scikit-learn
    def validate_data(estimator, X, y="no_validation", reset=True, **kwargs):
        if isinstance(y, str):
            return estimator._validate_data(X, reset=reset, **kwargs)
        return estimator._validate_data(X, y, reset=reset, **kwargs)

# Default grid of C (choice: a decade apart around 1, suited to L2-normalised descriptors).
C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)
C_SELECTIONS = ("auto", "shared", "per-class")


class LinearSVMProbe(ClassifierMixin, BaseEstimator):
    """One-vs-rest linear SVMs on fixed descriptors, C chosen by cross-validation.

    Parameters
    ----------
    C : float or sequence of float, default=C_GRID
        One value: used for every class. Several: chosen on the training data as
        `C_selection` says (ties: the smallest C), then the SVMs are refit on all of it.
    C_selection : {"auto", "shared", "per-class"}, default="auto"
        "shared": one C for all classes, the best cross-validated mean class recall of the
        argmax prediction (single-label data only). "per-class": each class its best
        held-out VOC AP. "auto": shared for single-label data, per-class for multi-label.
    cv : int or float, default=3
        An int: k folds (stratified for single-label data). A float in (0, 1): that
        fraction of the training images held out once (per class for single-label data).
    solver : {"torch", "liblinear"}, default="torch"
        "torch": batched truncated Newton (all classes and Cs together); "liblinear":
        scikit-learn's LinearSVC per class and C, the reference.
    difficult : {"ignore", "positive"}, default="ignore"
        For VOC-style label matrices (values 1, 0, -1): what a 0 label means in training.
    tol : float, optional
        Solver tolerance; default 1e-3 relative gradient norm (torch) or 1e-4 (liblinear,
        LinearSVC's default).
    max_iter : int, optional
        Solver iteration limit; default 100 Newton steps (torch) or 1000 (liblinear).
    device : str, default="cpu"
        Torch device for the torch solver ("cuda" for a GPU).
    random_state : int, default=0
        Seed of the cross-validation folds.
    verbose : bool, default=False
        Show a progress bar (one step per fold and C) on stderr.
    copy_X : bool, default=True
        False: the torch solver's cross-validation may move X's rows in place instead of
        copying each fold's training rows (one fold's copy less memory: 193 MiB at
        Caltech-256 size); they are back in their order when `fit` returns. A read-only X
        is copied fold by fold as with True.

    Attributes
    ----------
    classes_ : ndarray
        Class labels (single-label data) or output indices (multi-label data).
    coef_ : ndarray of shape (n_svms, n_features)
        One row per class (a single row for binary data).
    intercept_ : ndarray of shape (n_svms,)
    C_ : ndarray of shape (n_svms,)
        The C each class uses (all equal with shared selection).
    C_selection_ : {"shared", "per-class"}
        How C was chosen.
    cv_scores_ : ndarray of shape (n_C,) or (n_svms, n_C), or None
        Shared: cross-validated mean class recall per C. Per-class: mean held-out AP per
        class and C. None when C is a single value.
    multi_label_ : bool
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[0.0, 1.0], [0.1, 0.9], [1.0, 0.0], [0.9, 0.2]] * 5)
    >>> y = np.array([0, 0, 1, 1] * 5)
    >>> probe = LinearSVMProbe(C=1.0).fit(X, y)
    >>> probe.predict([[0.0, 1.0], [1.0, 0.1]]).tolist()
    [0, 1]
    """

    def __init__(self, C=C_GRID, cv=3, solver="torch", difficult="ignore", tol=None,
                 max_iter=None, device="cpu", random_state=0, verbose=False,
                 C_selection="auto", copy_X=True):
        self.C = C
        self.copy_X = copy_X
        self.C_selection = C_selection
        self.cv = cv
        self.solver = solver
        self.difficult = difficult
        self.tol = tol
        self.max_iter = max_iter
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags

    def _targets(self, y):
        """-> (Y in {-1, 0, 1} of shape (n, n_svms), strata or None)."""
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] > 1:
            self.multi_label_ = True
            if not np.isin(y, (-1, 0, 1)).all():
                raise ValueError("a label matrix must hold 1/0 (indicator) or 1/0/-1 (VOC)")
            Y = y.astype(np.int8)
            if (Y == -1).any():  # VOC convention: 0 is "difficult"
                if self.difficult not in ("ignore", "positive"):
                    raise ValueError("difficult must be 'ignore' or 'positive'")
                if self.difficult == "positive":
                    Y = np.where(Y == 0, 1, Y).astype(np.int8)
            else:  # scikit-learn's indicator convention: 0 is negative
                Y = np.where(Y == 1, 1, -1).astype(np.int8)
            self.classes_ = np.arange(Y.shape[1])
            return Y, None
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        self.multi_label_ = False
        self.classes_, strata = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(
                f"need at least two classes to train, found only {self.classes_.tolist()}"
            )
        if len(self.classes_) == 2:  # one SVM for classes_[1], as scikit-learn does
            return np.where(strata == 1, 1, -1)[:, None].astype(np.int8), strata
        # built in int8 (no int64 (n, classes) intermediate: 31 MiB at Caltech-256 size)
        Y = np.where(strata[:, None] == np.arange(len(self.classes_)), np.int8(1), np.int8(-1))
        return Y, strata

    def fit(self, X, y):
        """Fit one SVM per class.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Finite descriptors.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Class labels, or a label matrix (1/0 indicator, or VOC 1/0/-1 where 0 is
            difficult).

        Returns
        -------
        self
        """
        X, y = validate_data(self, X, y, multi_output=True, dtype=(np.float64, np.float32),
                             ensure_min_samples=2)
        Y, strata = self._targets(y)
        for k in range(Y.shape[1]):
            if not (Y[:, k] == 1).any() or not (Y[:, k] == -1).any():
                kind = "positive" if not (Y[:, k] == 1).any() else "negative"
                name = self.classes_[k].item() if self.multi_label_ else self.classes_[k]
                raise ValueError(f"class {name!r} has no {kind} training example")
        grid = sorted(float(c) for c in np.atleast_1d(self.C))
        if not grid or min(grid) <= 0:
            raise ValueError(f"C must be positive, got {self.C!r}")
        if not isinstance(self.copy_X, bool | np.bool_):
            raise ValueError(f"copy_X must be True or False, got {self.copy_X!r}")
        fit_kwargs = {"solver": self.solver, "tol": self.tol, "max_iter": self.max_iter,
                      "device": self.device}
        if self.solver == "torch":  # X's Gram matrix and top directions, shared by folds and refit
            fit_kwargs["gram_cache"] = {"X": X}
        self.C_selection_ = self._selection()
        self.cv_scores_ = None
        chosen = np.zeros(Y.shape[1], dtype=np.int64)
        n_folds = 0 if len(grid) == 1 else 1 if isinstance(self.cv, float) else int(self.cv)
        # liblinear starts from zero whatever it is given: there the refit follows the path.
        fold_mean = {} if self.solver == "torch" else None
        with progress_bar(total=n_folds * len(grid) + 1, desc="SVMs (fold x C)", file=sys.stderr,
                          disable=not self.verbose, leave=False) as bar:
            if len(grid) > 1 and self.C_selection_ == "shared":
                self.cv_scores_, best = select_shared_C(
                    X, Y, grid, cv=self.cv, strata=strata, random_state=self.random_state,
                    progress=bar.update, fold_mean=fold_mean, copy_X=self.copy_X,
                    **fit_kwargs,
                )
                chosen[:] = best
            elif len(grid) > 1:
                self.cv_scores_, chosen = select_C(
                    X, Y, grid, cv=self.cv, strata=strata, random_state=self.random_state,
                    progress=bar.update, fold_mean=fold_mean, copy_X=self.copy_X,
                    **fit_kwargs,
                )
            self.C_ = np.asarray(grid)[chosen]
            if fold_mean:
                W, b, self.n_iter_ = refit_from(X, Y, grid, chosen, fold_mean, **fit_kwargs)
            else:
                W, b, self.n_iter_ = refit_path(X, Y, grid, chosen, **fit_kwargs)
            bar.update()
        self.coef_, self.intercept_ = W, b
        return self

    def _selection(self) -> str:
        if self.C_selection not in C_SELECTIONS:
            raise ValueError(f"C_selection must be one of {C_SELECTIONS}, got "
                             f"{self.C_selection!r}")
        if self.C_selection == "auto":
            return "per-class" if self.multi_label_ else "shared"
        if self.C_selection == "shared" and self.multi_label_:
            raise ValueError("C_selection='shared' needs single-label data (one class per "
                             "sample); multi-label data chooses C per class")
        return self.C_selection

    def decision_function(self, X):
        """Signed distance to each class's hyperplane.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_svms), or (n_samples,) for binary data
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        scores = X @ self.coef_.T + self.intercept_
        return scores.ravel() if scores.shape[1] == 1 and not self.multi_label_ else scores

    def predict(self, X):
        """Class with the highest score (label indicator for multi-label data)."""
        scores = self.decision_function(X)
        if self.multi_label_:
            return (scores > 0).astype(np.int64)
        if scores.ndim == 1:
            return self.classes_[(scores > 0).astype(np.int64)]
        return self.classes_[np.argmax(scores, axis=1)]
