"""Descriptors: dense multi-scale pooling, the batching engine, the HDF5 cache, the API.

    images -> engine (batches of one shape) -> descriptor (pool, flip) -> cache (HDF5)
"""
from vggfeat.features.api import FeatureExtractor
from vggfeat.features.cache import FeatureDataset, load_features
from vggfeat.features.descriptor import DescriptorConfig
from vggfeat.features.engine import Engine
from vggfeat.features.pipeline import ExtractSummary, extract_to_cache

__all__ = ["DescriptorConfig", "Engine", "ExtractSummary", "FeatureDataset", "FeatureExtractor",
           "extract_to_cache", "load_features"]
