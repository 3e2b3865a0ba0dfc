"""vggfeat: transfer-learning features from the VGG paper (Simonyan & Zisserman, 2014)."""
from vggfeat.models import (
    VGG,
    WeightsError,
    build_backbone,
    export_torchvision,
    load_backbone,
    save_backbone,
)
from vggfeat.version import __version__

__all__ = ["VGG", "WeightsError", "__version__", "build_backbone", "export_torchvision",
           "load_backbone", "save_backbone"]
