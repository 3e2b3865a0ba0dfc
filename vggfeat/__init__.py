"""vggfeat: transfer-learning features from the VGG paper (Simonyan & Zisserman, 2014).

    datasets -> transforms -> backbone -> descriptor -> cache -> SVM -> metrics -> report
"""
from vggfeat.features import FeatureExtractor, extract_to_cache, load_features
from vggfeat.models import (
    VGG,
    WeightsError,
    build_backbone,
    export_torchvision,
    load_backbone,
    save_backbone,
)
from vggfeat.version import __version__

__all__ = ["VGG", "FeatureExtractor", "WeightsError", "__version__", "build_backbone",
           "export_torchvision", "extract_to_cache", "load_backbone", "load_features",
           "save_backbone"]
