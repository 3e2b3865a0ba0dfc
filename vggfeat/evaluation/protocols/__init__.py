"""The paper's transfer protocols (Appendix B; datasets/README.md), one function per benchmark.

Each protocol takes a dataset reader, the descriptors and `Settings`, fits one-vs-rest
linear SVMs (or the probe ``settings.probe`` names: `vggfeat.evaluation.probes`) on
training data only and returns a `Result`: per-class rows, the headline
metric, chosen C, test decision values and PR curves. Checks on the labels (a class
without a positive training example, ids without a descriptor) run before anything is
fitted.

C is chosen by cross-validation inside the training data, on the protocol's own metric:
per class by AP for the multi-label VOC protocols (each class its own problem), and one C
for all classes of a split by mean class recall for the multi-class protocols (Caltech,
single-label folder/csv data), whose argmax compares the classes' scores.

The package: `common` (settings, result, shared steps), `voc` (VOC classification and
action), `multiclass` (Caltech and folder/csv data), `splits` (seeded splits, splits.csv).
"""
from __future__ import annotations

from pathlib import Path

from vggfeat.data.readers import DatasetReader
from vggfeat.evaluation.inputs import Features
from vggfeat.evaluation.protocols.common import Result, Settings
from vggfeat.evaluation.protocols.multiclass import (
    CALTECH_SPLITS,
    CUSTOM_TEST_FRACTION,
    MULTICLASS_FOLDS,
    caltech,
    custom,
)
from vggfeat.evaluation.protocols.splits import draw_splits, read_splits, write_splits
from vggfeat.evaluation.protocols.voc import voc_action, voc_classification
from vggfeat.evaluation.svm import C_GRID

PROBE_LABELS = {"logreg": "logistic regression", "knn": "kNN"}

PROTOCOLS = {
    "voc2007": voc_classification,
    "voc2012": voc_classification,
    "voc2012-action": voc_action,
    "caltech101": caltech,
    "caltech256": caltech,
    "folder": custom,
    "csv": custom,
}


def run_protocol(reader: DatasetReader, features: Features, settings: Settings | None = None,
                 out=None) -> Result:
    """Evaluate `features` on `reader`'s dataset with its protocol (see `PROTOCOLS`; a
    reader may name another dataset's protocol in ``reader.protocol``, as labels stored in
    a cache by the Python API use the folder/csv one)."""
    protocol = PROTOCOLS[getattr(reader, "protocol", None) or reader.name]
    result = protocol(reader, features, settings or Settings(), None if out is None else Path(out))
    if result.probe != "svm":  # the protocols' descriptions name the paper's SVMs
        result.protocol = result.protocol.replace("SVMs", PROBE_LABELS[result.probe])
    return result


__all__ = ["CALTECH_SPLITS", "CUSTOM_TEST_FRACTION", "C_GRID", "MULTICLASS_FOLDS", "PROTOCOLS",
           "Result", "Settings", "caltech", "custom", "draw_splits", "read_splits",
           "run_protocol", "voc_action", "voc_classification", "write_splits"]
