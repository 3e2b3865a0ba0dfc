"""The bundled trainer (paper recipe, DDP, exact resume) and the ImageNet test protocols.

    config (DEFAULTS) -> model -> loop (one per task: trainer = classification)
                                  -> run_folder, checkpoint

The public names below are imported on first use (PEP 562 module ``__getattr__``), so that
the command line can read `DEFAULTS` (`vggfeat.training.config`) without importing torch.
"""
from vggfeat.utils.lazy import lazy_names

# Public name -> the module that defines it.
_LAZY = {
    "DEFAULTS": "vggfeat.training.config",
    "TrainingError": "vggfeat.training.config",
    "CheckpointError": "vggfeat.training.checkpoint",
    "load_checkpoint": "vggfeat.training.checkpoint",
    "save_checkpoint": "vggfeat.training.checkpoint",
    "TrainingDataError": "vggfeat.training.data",
    "scan_image_folder": "vggfeat.training.data",
    "EvaluationError": "vggfeat.training.evaluate",
    "evaluate_backbones": "vggfeat.training.evaluate",
    "format_table": "vggfeat.training.evaluate",
    "init_from_net_a": "vggfeat.training.model",
    "train": "vggfeat.training.trainer",
}

__all__ = ["DEFAULTS", "CheckpointError", "EvaluationError", "TrainingDataError",
           "TrainingError", "evaluate_backbones", "format_table", "init_from_net_a",
           "load_checkpoint", "save_checkpoint", "scan_image_folder", "train"]


__getattr__, __dir__ = lazy_names(__name__, _LAZY)
