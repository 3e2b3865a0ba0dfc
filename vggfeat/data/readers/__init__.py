"""Dataset readers: where the images and labels of each benchmark are (paper Appendix B;
datasets/README.md has the layouts).

One module per family, and the registry `READERS` (dataset name -> reader class) that
`open_dataset` and the command line choose from:

- `base`: `Sample`, `Labels`, the `DatasetReader` interface and the layout checks;
- `voc`: PASCAL VOC 2007 / 2012 classification and VOC 2012 action (person boxes);
- `folders`: Caltech-101, Caltech-256 and custom class folders (and the one class-folder
  scan, also used by the trainer);
- `csv`: custom data listed in a CSV file, and labels given as a table (from a cache);
- `ilsvrc`: localisation data (ILSVRC CLS-LOC or a box CSV), read by `read_localisation`.

A reader only indexes files and parses label files; decoding and transforming images is
someone else's job (`vggfeat.data.images`, `vggfeat.data.transforms`). Adding a dataset:
write its reader in the family's module (or a new one), then add it to `READERS`.
"""
from __future__ import annotations

from vggfeat.data.readers.base import (
    CALTECH_SCALES,
    SPLIT_NAMES,
    VOC_SCALES,
    DatasetLayoutError,
    DatasetReader,
    Labels,
    Sample,
)
from vggfeat.data.readers.csv import CSVReader, LabelTableReader
from vggfeat.data.readers.folders import (
    FOLDER_LAYOUTS,
    Caltech101Reader,
    Caltech256Reader,
    FolderReader,
)
from vggfeat.data.readers.ilsvrc import LocalisationDataError, LocImages, read_localisation
from vggfeat.data.readers.voc import (
    VOC_ACTIONS,
    VOC_CLASSES,
    VOC2007Reader,
    VOC2012Reader,
    VOCActionReader,
    VOCReader,
    parse_voc_objects,
)

READERS: dict[str, type[DatasetReader]] = {
    "voc2007": VOC2007Reader,
    "voc2012": VOC2012Reader,
    "voc2012-action": VOCActionReader,
    "caltech101": Caltech101Reader,
    "caltech256": Caltech256Reader,
    "folder": FolderReader,
    "csv": CSVReader,
}
DATASETS = tuple(READERS)


def open_dataset(name: str, root, **options) -> DatasetReader:
    """Open a dataset by reader name, validating its layout.

    Parameters
    ----------
    name : str
        One of `DATASETS`.
    root : path-like
        The dataset folder (the layout each reader accepts is in its docstring).
    **options
        Reader options, e.g. ``drop_background=True`` for caltech101.

    Returns
    -------
    DatasetReader

    Raises
    ------
    DatasetLayoutError
        When the layout is wrong or incomplete; the message names the expected path and
        what was found there.
    """
    if name not in READERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return READERS[name](root, **options)


__all__ = ["CALTECH_SCALES", "DATASETS", "FOLDER_LAYOUTS", "READERS", "SPLIT_NAMES",
           "VOC_ACTIONS", "VOC_CLASSES", "VOC_SCALES", "CSVReader", "Caltech101Reader",
           "Caltech256Reader", "DatasetLayoutError", "DatasetReader", "FolderReader",
           "LabelTableReader", "Labels", "LocImages", "LocalisationDataError", "Sample",
           "VOC2007Reader", "VOC2012Reader", "VOCActionReader", "VOCReader", "open_dataset",
           "parse_voc_objects", "read_localisation"]
