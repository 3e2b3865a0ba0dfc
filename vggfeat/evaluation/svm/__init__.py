"""One-vs-rest linear SVMs with C chosen on training data only.

How C is chosen depends on what is measured. Multi-label data (VOC: AP per class) is one
binary problem per class, so each class picks its own C by held-out AP. Single-label
multi-class data (Caltech: mean class recall of the argmax) is one problem: the argmax
compares the classes' scores, which are comparable only when every SVM has the same C, so
one C is chosen for all classes by the cross-validated mean class recall of the argmax.

The problem solved for each class k and each candidate C is liblinear's L2-regularised
squared-hinge (L2-loss) SVM, bias included in the regularised weights (liblinear's
``intercept_scaling=1``)::

    min_w  0.5 * ||w||^2 + C * sum_i max(0, 1 - y_i * (w . [x_i, 1]))^2

so the default torch solver and ``solver="liblinear"`` (scikit-learn's ``LinearSVC``, the
reference path) fit the same models. The torch solver is a truncated Newton method
(conjugate gradient on the generalised Hessian, exact line search), batched: every class
and every value of C is one column of the same matrix products, which is what makes it
fast on CPU and GPU alike. A class whose active set (rows with margin < 1) is small, as at
large C, takes exact Newton steps instead: a Cholesky solve on the Gram matrix of its
active rows (Woodbury identity), the Gram matrix computed once per training set and kept
as its lower triangle (`gram`).

VOC labels: in a 2-D label matrix containing -1, a 0 marks a "difficult" example which is
left out of that class's training (``difficult="ignore"``, as the devkit leaves it out of
scoring) or counted as positive (``difficult="positive"``).

The package: `newton` (the torch solver), `liblinear` (the reference), `path` (either
solver along a grid of C), `selection` (choosing C), `probe` (the estimator).
"""
from vggfeat.evaluation.svm.liblinear import solve_squared_hinge_liblinear
from vggfeat.evaluation.svm.newton import solve_squared_hinge_torch
from vggfeat.evaluation.svm.path import fit_path, fit_svms, refit_from, refit_path
from vggfeat.evaluation.svm.probe import C_GRID, C_SELECTIONS, LinearSVMProbe
from vggfeat.evaluation.svm.selection import cv_folds, holdout_split, select_C, select_shared_C

__all__ = ["C_GRID", "C_SELECTIONS", "LinearSVMProbe", "cv_folds", "fit_path", "fit_svms",
           "holdout_split", "refit_from", "refit_path", "select_C", "select_shared_C",
           "solve_squared_hinge_liblinear", "solve_squared_hinge_torch"]
