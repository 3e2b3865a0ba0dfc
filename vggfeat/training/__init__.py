"""The bundled trainer (paper recipe, DDP, exact resume) and the ImageNet test protocols."""
from vggfeat.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from vggfeat.training.data import TrainingDataError, scan_image_folder
from vggfeat.training.evaluate import EvaluationError, evaluate_backbones, format_table
from vggfeat.training.trainer import DEFAULTS, TrainingError, init_from_net_a, train

__all__ = ["DEFAULTS", "CheckpointError", "EvaluationError", "TrainingDataError",
           "TrainingError", "evaluate_backbones", "format_table", "init_from_net_a",
           "load_checkpoint", "save_checkpoint", "scan_image_folder", "train"]
