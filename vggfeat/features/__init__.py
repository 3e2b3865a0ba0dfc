"""Descriptors: dense multi-scale pooling, the batching engine, the HDF5 cache, the API.

    images -> engine (batches of one shape) -> descriptor (pool, flip) -> cache (HDF5)

Names are imported on first use (PEP 562), so that `vggfeat extract`, which imports
`vggfeat.features.pipeline`, does not also import scikit-learn (and with it scipy and
pandas) for `FeatureExtractor`, which it does not use.
"""
import importlib

_LAZY = {
    "FeatureExtractor": "vggfeat.features.api",
    "FeatureDataset": "vggfeat.features.cache",
    "load_features": "vggfeat.features.cache",
    "DescriptorConfig": "vggfeat.features.descriptor",
    "Engine": "vggfeat.features.engine",
    "ExtractSummary": "vggfeat.features.pipeline",
    "extract_to_cache": "vggfeat.features.pipeline",
}

__all__ = ["DescriptorConfig", "Engine", "ExtractSummary", "FeatureDataset", "FeatureExtractor",
           "extract_to_cache", "load_features"]


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vggfeat.features' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
