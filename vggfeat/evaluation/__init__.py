"""Evaluation: VOC metrics, linear-SVM probes, benchmark protocols and reports.

    cache -> inputs (checked) -> protocols (SVMs per split) -> metrics -> report
"""
from vggfeat.evaluation.inputs import EvaluationInputError, Features
from vggfeat.evaluation.metrics import mean_class_recall, voc07_ap, voc_ap
from vggfeat.evaluation.protocols import Result, Settings, run_protocol
from vggfeat.evaluation.svm import C_GRID, LinearSVMProbe

__all__ = ["C_GRID", "EvaluationInputError", "Features", "LinearSVMProbe", "Result", "Settings",
           "mean_class_recall", "run_protocol", "voc07_ap", "voc_ap"]
