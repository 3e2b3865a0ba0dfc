"""Object localisation as in the paper's Appendix A: box geometry, data, prediction, error.

A localisation net is a VGG whose last layer predicts a box (centre x, centre y, width,
height, relative to its input crop): 4 outputs (single-class regression) or 4 per class
(per-class regression). It is trained by `vggfeat train-backbone --task localisation`
(`vggfeat.localisation.train`) and evaluated by `vggfeat eval-localisation`
(`vggfeat.localisation.run_eval`).

The public names below are imported on first use (PEP 562 module ``__getattr__``), so that
the command line can read the localisation defaults (`vggfeat.localisation.config`)
without importing torch.
"""
from vggfeat.utils.lazy import lazy_names

# Public name -> the module that defines it.
_LAZY = {
    "box_iou": "vggfeat.localisation.boxes",
    "crop_target": "vggfeat.localisation.boxes",
    "decode_boxes": "vggfeat.localisation.boxes",
    "encode_boxes": "vggfeat.localisation.boxes",
    "merge_boxes": "vggfeat.localisation.boxes",
    "LocImages": "vggfeat.data.readers",
    "LocalisationDataError": "vggfeat.data.readers",
    "read_localisation": "vggfeat.data.readers",
    "evaluate_localisation": "vggfeat.localisation.evaluate",
    "format_table": "vggfeat.localisation.evaluate",
    "predict_boxes": "vggfeat.localisation.predict",
    "run_eval_localisation": "vggfeat.localisation.run_eval",
    "train_localisation": "vggfeat.localisation.train",
}

__all__ = ["LocImages", "LocalisationDataError", "box_iou", "crop_target", "decode_boxes",
           "encode_boxes", "evaluate_localisation", "format_table", "merge_boxes",
           "predict_boxes", "read_localisation", "run_eval_localisation",
           "train_localisation"]


__getattr__, __dir__ = lazy_names(__name__, _LAZY)
