"""PASCAL VOC 2007 / 2012 classification and VOC 2012 action classification (paper
Appendix B): SVMs on the training split, AP per class on the evaluation split."""
from __future__ import annotations

import numpy as np

from vggfeat.evaluation.inputs import Features
from vggfeat.evaluation.probes import chosen_values
from vggfeat.evaluation.protocols.common import (
    Result,
    Settings,
    check_positives,
    decision_values,
    fit_probe,
    multilabel_split,
    new_result,
    record_chosen,
    score_rows,
    trainval_labels,
    write_server_files,
)

# --------------------------------------------------------------------------------------
# PASCAL VOC 2007 / 2012 classification
# --------------------------------------------------------------------------------------


def voc_classification(reader, features: Features, settings: Settings, out=None) -> Result:
    """VOC 2007: trainval -> test. VOC 2012: train -> val, and trainval -> test server files
    ``comp1_cls_test_<class>.txt`` when the test images are present."""
    result = new_result(reader.name, "", reader.classes, settings)
    if reader.name == "voc2007":
        train_split, eval_split = "trainval", "test"
    else:
        train_split, eval_split = "train", "val"
    result.protocol = f"SVMs on {train_split}, AP on {eval_split} (difficult: {settings.difficult})"
    train, test = reader.labels(train_split), reader.labels(eval_split)
    features.check(train.ids, f"split {train_split}")  # all inputs checked before fitting
    features.check(test.ids, f"split {eval_split}")
    server = reader.name == "voc2012" and "test" in reader.splits()
    if server:
        full = trainval_labels(reader)
        test_ids = reader.split_ids("test")
        features.check(test_ids, "split test")
        check_positives(full.y, result.classes, "voc2012 trainval")
    m07, m10 = multilabel_split(result, features, train, test, eval_split, settings, 3,
                                 train_name=train_split)
    result.headline = {"mAP_voc07": m07, "mAP_voc10": m10,
                       "headline": "mAP_voc07" if reader.name == "voc2007" else "mAP_voc10"}
    if server:
        probe = fit_probe(settings, features.rows(full.ids, "trainval"), full.y, 3)  # then freed
        scores = decision_values(probe, features, test_ids, "split test")
        record_chosen(result, "trainval", chosen_values(probe))
        score_rows(result, "test", test_ids, scores)
        result.files += write_server_files(
            out, "comp1_cls_test_{}.txt", result.classes, test_ids, scores,
            lambda i, s: f"{i} {s:.6f}\n",
        )
    return result


# --------------------------------------------------------------------------------------
# VOC 2012 action classification
# --------------------------------------------------------------------------------------


def _check_action(features: Features, box_ids, with_boxes: bool, what: str) -> None:
    """The error `_action_X` would raise, without copying descriptors."""
    features.check([b.split("#")[0] for b in box_ids], what)
    if with_boxes:
        features.check(box_ids, what, boxes=True)


def _action_X(features: Features, box_ids, with_boxes: bool, what: str) -> np.ndarray:
    """Image descriptor of each person's image, stacked with the person box's own (ii)."""
    image_X = features.rows([b.split("#")[0] for b in box_ids], what)
    if not with_boxes:
        return image_X
    box_X = features.rows(box_ids, what, boxes=True)
    stacked = np.concatenate([image_X, box_X], axis=1)
    return stacked / np.linalg.norm(stacked, axis=1, keepdims=True)


def voc_action(reader, features: Features, settings: Settings, out=None) -> Result:
    """(i) whole-image descriptors; (ii) whole-image and person-box descriptors stacked.

    SVMs on train, AP per action on val; with test persons present, trainval -> test
    server files ``comp9_action_test_<action>.txt`` (``<id> <objidx> <score>``) for the
    best variant available.
    """
    variants = ["image"] + (["image+box"] if features.box_ids is not None else [])
    result = new_result(reader.name, f"SVMs on train, AP on val; variants: "
                        f"{', '.join(variants)}", reader.classes, settings)
    train, val = reader.labels("train"), reader.labels("val")
    server = "test" in reader.splits()
    for variant in variants:  # every lookup before any fitting, no copies yet
        boxes = variant == "image+box"
        for name, lab in (("train", train), ("val", val)):
            _check_action(features, lab.ids, boxes, f"voc2012-action {name}")
        if server:
            _check_action(features, reader.split_ids("test"), boxes, "voc2012-action test")
    for variant in variants:  # one variant's rows at a time
        train_X, val_X = (_action_X(features, lab.ids, variant == "image+box",
                                    f"voc2012-action {name}")
                          for name, lab in (("train", train), ("val", val)))
        m07, m10 = multilabel_split(result, features, train, val, f"val:{variant}", settings,
                                     3, train_X, val_X)
        result.headline[f"mAP_voc10[{variant}]"] = m10
        result.headline[f"mAP_voc07[{variant}]"] = m07
    result.headline["headline"] = f"mAP_voc10[{variants[-1]}]"
    if server:
        full = trainval_labels(reader)
        test_ids = reader.split_ids("test")
        boxes = variants[-1] == "image+box"
        probe = fit_probe(settings, _action_X(features, full.ids, boxes, "trainval"), full.y, 3)
        scores = probe.decision_function(_action_X(features, test_ids, boxes, "test"))
        score_rows(result, f"test:{variants[-1]}", test_ids, scores)
        result.files += write_server_files(
            out, "comp9_action_test_{}.txt", result.classes, test_ids, scores,
            lambda i, s: "{} {} {:.6f}\n".format(*i.split("#"), s),
        )
    return result
