"""`vggfeat.metrics`: the VOC devkit's AP variants and mean class recall (SPEC section 7)."""
from vggfeat.evaluation.metrics import (
    mean_class_recall,
    per_class_recall,
    precision_recall,
    voc07_ap,
    voc_ap,
)

__all__ = ["mean_class_recall", "per_class_recall", "precision_recall", "voc07_ap", "voc_ap"]
