"""Object localisation as in the paper's Appendix A: box geometry, data, prediction, error.

A localisation net is a VGG whose last layer predicts a box (centre x, centre y, width,
height, relative to its input crop): 4 outputs (single-class regression) or 4 per class
(per-class regression). It is trained by `vggfeat train-backbone --task localisation`
(`vggfeat.localisation.train`) and evaluated by `vggfeat eval-localisation`.
"""
from vggfeat.data.readers import LocalisationDataError, LocImages, read_localisation
from vggfeat.localisation.boxes import (
    box_iou,
    crop_target,
    decode_boxes,
    encode_boxes,
    merge_boxes,
)
from vggfeat.localisation.evaluate import evaluate_localisation, format_table
from vggfeat.localisation.predict import predict_boxes

__all__ = ["LocImages", "LocalisationDataError", "box_iou", "crop_target", "decode_boxes",
           "encode_boxes", "evaluate_localisation", "format_table", "merge_boxes",
           "predict_boxes", "read_localisation"]
