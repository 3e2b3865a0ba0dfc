"""Evaluation: VOC metrics, linear-SVM probes, benchmark protocols and reports.

    cache -> inputs (checked) -> protocols (SVMs per split) -> metrics -> report

`run_svm_eval` is that whole pipeline as one call (`vggfeat svm-eval`), with its
output-folder policy (`output_folder`); `evaluate_features` its second half, for
descriptors already in memory.
"""
from vggfeat.evaluation.inputs import EvaluationInputError, Features
from vggfeat.evaluation.metrics import mean_class_recall, voc07_ap, voc_ap
from vggfeat.evaluation.probes import KNNProbe, LogisticRegressionProbe
from vggfeat.evaluation.protocols import Result, Settings, run_protocol
from vggfeat.evaluation.run import SvmEvalRun, evaluate_features, run_svm_eval
from vggfeat.evaluation.svm import C_GRID, LinearSVMProbe

__all__ = ["C_GRID", "EvaluationInputError", "Features", "KNNProbe", "LinearSVMProbe",
           "LogisticRegressionProbe", "Result", "Settings",
           "SvmEvalRun", "evaluate_features", "mean_class_recall", "run_protocol",
           "run_svm_eval", "voc07_ap", "voc_ap"]
