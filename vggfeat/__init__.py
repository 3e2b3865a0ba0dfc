"""vggfeat: transfer-learning features from the VGG paper (Simonyan & Zisserman, 2014).

    datasets -> transforms -> backbone -> descriptor -> cache -> SVM -> metrics -> report

The public names below are imported on first use (PEP 562 module ``__getattr__``), so that
``import vggfeat`` -- and with it ``vggfeat --version`` / ``--help`` -- does not pay for
importing torch. ``from vggfeat import FeatureExtractor`` works as usual.
"""
from vggfeat.utils.lazy import lazy_names
from vggfeat.version import __version__

# Public name -> the module that defines it.
_LAZY = {
    "FeatureExtractor": "vggfeat.features",
    "extract_to_cache": "vggfeat.features",
    "load_features": "vggfeat.features",
    "VGG": "vggfeat.models",
    "WeightsError": "vggfeat.models",
    "build_backbone": "vggfeat.models",
    "export_torchvision": "vggfeat.models",
    "load_backbone": "vggfeat.models",
    "save_backbone": "vggfeat.models",
}

__all__ = ["VGG", "FeatureExtractor", "WeightsError", "__version__", "build_backbone",
           "export_torchvision", "extract_to_cache", "load_backbone", "load_features",
           "save_backbone"]


__getattr__, __dir__ = lazy_names(__name__, _LAZY)
