"""Descriptors: dense multi-scale pooling, the batching engine, the HDF5 cache, the API.

    images -> engine (batches of one shape) -> descriptor (pool, flip) -> cache (HDF5)

Names are imported on first use (PEP 562), so that `vggfeat extract`, which imports
`vggfeat.features.pipeline`, does not also import scikit-learn (and with it scipy and
pandas) for `FeatureExtractor`, which it does not use.
"""
from vggfeat.utils.lazy import lazy_names

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


__getattr__, __dir__ = lazy_names(__name__, _LAZY)
