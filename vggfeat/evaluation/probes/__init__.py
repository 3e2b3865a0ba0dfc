"""The probes a descriptor is measured with: one file per probe, one interface.

``svm`` (the paper's one-vs-rest linear SVMs, `vggfeat.evaluation.svm`), ``logreg``
(L2-regularised logistic regression, `logreg`) and ``knn`` (cosine k nearest neighbours
with a similarity-weighted vote, `knn`). Each is a scikit-learn classifier whose
``decision_function`` gives a score per class and whose hyper-parameter (``C`` or ``k``)
is chosen on the training images by the same cross-validation (`base`,
`vggfeat.evaluation.svm.selection`). `make_probe` builds the one a protocol's settings
name; ``chosen_values`` reads what each fitted probe chose per score column.
"""
from __future__ import annotations

import numpy as np

from vggfeat.evaluation.probes.knn import K_GRID, KNNProbe
from vggfeat.evaluation.probes.logreg import LogisticRegressionProbe
from vggfeat.evaluation.svm import LinearSVMProbe

PROBES = ("svm", "logreg", "knn")
# The hyper-parameter each probe chooses (results.csv's column, summary.json's "chosen").
HYPERPARAMETER = {"svm": "C", "logreg": "C", "knn": "k"}


def make_probe(name: str, *, C, k, cv, solver="torch", device="cpu", difficult="ignore",
               random_state=0, verbose=False):
    """The probe `name` with its grid (``C`` for svm and logreg, ``k`` for knn)."""
    if name == "svm":
        return LinearSVMProbe(C=C, cv=cv, solver=solver, device=device, difficult=difficult,
                              random_state=random_state, verbose=verbose)
    if name == "logreg":
        return LogisticRegressionProbe(C=C, cv=cv, difficult=difficult,
                                       random_state=random_state)
    if name == "knn":
        return KNNProbe(k=k, cv=cv, difficult=difficult, random_state=random_state)
    raise ValueError(f"probe must be one of {', '.join(PROBES)}, not {name!r}")


def chosen_values(probe) -> np.ndarray:
    """The hyper-parameter value of each score column of a fitted probe."""
    return probe.C_ if isinstance(probe, LinearSVMProbe) else probe.chosen_


__all__ = ["HYPERPARAMETER", "K_GRID", "KNNProbe", "LogisticRegressionProbe", "PROBES",
           "chosen_values", "make_probe"]
