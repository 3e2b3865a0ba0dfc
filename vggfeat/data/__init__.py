"""Datasets: readers (where images and labels are), decoding and transforms."""
from vggfeat.data.readers import (
    DATASETS,
    DatasetLayoutError,
    DatasetReader,
    Labels,
    Sample,
    open_dataset,
)

__all__ = ["DATASETS", "DatasetLayoutError", "DatasetReader", "Labels", "Sample", "open_dataset"]
