"""vggfeat: transfer-learning features from the VGG paper (Simonyan & Zisserman, 2014).

    datasets -> transforms -> backbone -> descriptor -> cache -> SVM -> metrics -> report

The public names below are imported on first use (PEP 562 module ``__getattr__``), so that
``import vggfeat`` -- and with it ``vggfeat --version`` / ``--help`` -- does not pay for
importing torch. ``from vggfeat import FeatureExtractor`` works as usual.
"""
import importlib

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


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vggfeat' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
