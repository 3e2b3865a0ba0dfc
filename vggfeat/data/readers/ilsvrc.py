"""Localisation data (paper Appendix A): images with one class and its boxes, read from
ILSVRC CLS-LOC folders or from a CSV file.

- ILSVRC CLS-LOC: ``ROOT/Data/CLS-LOC/train/<wnid>/<id>.JPEG`` with boxes in
  ``ROOT/Annotations/CLS-LOC/train/<wnid>/<id>.xml`` (only the images that have an XML
  are used: ILSVRC boxes a subset of its training images), and
  ``ROOT/Data/CLS-LOC/val/<id>.JPEG`` (flat) with ``ROOT/Annotations/CLS-LOC/val/<id>.xml``
  whose ``<object><name>`` gives the class. XML boxes are PASCAL-style (1-based,
  inclusive) and are read with defusedxml by the VOC reader's parser.
- CSV: columns ``path,label,xmin,ymin,xmax,ymax`` and optionally ``split`` (train/val);
  paths relative to the CSV's folder; pixel coordinates, 0-based with an exclusive end
  (a box over a whole W x H image is 0,0,W,H); several rows per image for several boxes.
  Without a ``split`` column every image belongs to both splits.

Every image has one class (the ILSVRC localisation task's definition) and one or more
boxes of it. Problems a user can fix raise `LocalisationDataError` naming the file.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vggfeat.data.images import is_image_file
from vggfeat.data.readers.base import DatasetLayoutError
from vggfeat.data.readers.folders import class_folders
from vggfeat.data.readers.voc import parse_voc_objects
from vggfeat.utils.tables import csv_rows

SPLITS = ("train", "val")
CSV_COLUMNS = ("path", "label", "xmin", "ymin", "xmax", "ymax")


class LocalisationDataError(DatasetLayoutError):
    """The localisation data is laid out wrongly; the message names the file and the fix."""


@dataclass(frozen=True)
class LocImages:
    """One split: root, sorted class names, and per image (relative path, label, boxes).

    ``boxes[i]`` is a (K, 4) float array of xyxy boxes in the image's pixels.
    """

    root: Path
    classes: tuple[str, ...]
    paths: tuple[str, ...]
    labels: tuple[int, ...]
    boxes: tuple[np.ndarray, ...]

    def __len__(self):
        return len(self.paths)

    def digest(self) -> str:
        """SHA-256 of classes, files and boxes: identifies the dataset for --resume."""
        h = hashlib.sha256()
        for name in self.classes:
            h.update(f"class {name}\n".encode())
        for path, label, boxes in zip(self.paths, self.labels, self.boxes, strict=True):
            h.update(f"{label} {path} {np.round(boxes, 3).tolist()}\n".encode())
        return h.hexdigest()


def read_localisation(data, split: str) -> LocImages:
    """Read one split ("train" or "val") of an ILSVRC CLS-LOC folder or a CSV file."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    data = Path(data)
    if data.is_file():
        return read_csv(data, split)
    if (data / "Data" / "CLS-LOC").is_dir():
        return read_ilsvrc(data, split)
    raise LocalisationDataError(
        f"{data} is neither a CSV file (path,label,xmin,ymin,xmax,ymax[,split]) nor an ILSVRC "
        "folder with Data/CLS-LOC/{train/<wnid>,val}/ and Annotations/CLS-LOC/ (the ILSVRC "
        "2012 localisation archives, or ILSVRC/ of Kaggle's copy).")


# -- ILSVRC CLS-LOC ---------------------------------------------------------------------

def _xml_boxes(xml: Path) -> tuple[str, np.ndarray]:
    """(class name, boxes) of one ILSVRC annotation; one class per image."""
    try:
        objects = [o for o in parse_voc_objects(xml) if o["box"] is not None]
    except DatasetLayoutError as error:
        raise LocalisationDataError(str(error)) from None
    names = sorted({o["name"] for o in objects})
    if len(names) != 1:
        raise LocalisationDataError(f"{xml}: expected boxes of one class, found {names or 'none'}; "
                                    "fix or remove the annotation.")
    return names[0], np.array([o["box"] for o in objects], dtype=np.float64)


def ilsvrc_classes(root: Path) -> tuple[str, ...]:
    """Sorted class folders of Data/CLS-LOC/train (the wnids)."""
    train = root / "Data" / "CLS-LOC" / "train"
    if not train.is_dir():
        raise LocalisationDataError(f"{train} is missing; the classes are its folder names "
                                    "(ILSVRC layout: Data/CLS-LOC/train/<wnid>/<id>.JPEG).")
    classes = tuple(p.name for p in class_folders(train))
    if not classes:
        raise LocalisationDataError(f"{train} has no class folders.")
    return classes


def read_ilsvrc(root: Path, split: str) -> LocImages:
    """Images of one ILSVRC CLS-LOC split that have a box annotation."""
    classes = ilsvrc_classes(root)
    index = {c: i for i, c in enumerate(classes)}
    images_dir = root / "Data" / "CLS-LOC" / split
    xml_dir = root / "Annotations" / "CLS-LOC" / split
    for folder in (images_dir, xml_dir):
        if not folder.is_dir():
            raise LocalisationDataError(f"{folder} is missing; extract the ILSVRC CLS-LOC {split} "
                                        "images and bounding boxes there.")
    paths, labels, boxes = [], [], []
    for image in sorted(p for p in images_dir.rglob("*") if is_image_file(p)):
        rel = image.relative_to(images_dir)
        xml = xml_dir / rel.with_suffix(".xml")
        if not xml.is_file():
            continue  # ILSVRC has boxes for a subset of the training images
        name, b = _xml_boxes(xml)
        if name not in index:
            raise LocalisationDataError(f"{xml}: class {name!r} has no folder in "
                                        f"{root / 'Data/CLS-LOC/train'}.")
        if split == "train" and rel.parts[0] != name:
            raise LocalisationDataError(f"{xml}: boxes of {name!r} for an image in folder "
                                        f"{rel.parts[0]!r}.")
        paths.append(rel.as_posix())
        labels.append(index[name])
        boxes.append(b)
    if not paths:
        raise LocalisationDataError(f"no image of {images_dir} has an annotation in {xml_dir} "
                                    "(<id>.xml next to <id>.JPEG, by the same relative path).")
    return LocImages(images_dir, classes, tuple(paths), tuple(labels), tuple(boxes))


# -- CSV ----------------------------------------------------------------------------------

def read_csv(path: Path, split: str) -> LocImages:
    """Images of one split of a localisation CSV (see the module docstring)."""
    rows = _csv_rows(path)
    has_split = "split" in rows[0][1]
    by_image: dict[str, tuple[str, list]] = {}
    for lineno, row in rows:
        where = f"{path}, line {lineno}"
        if has_split and row["split"] not in SPLITS:
            raise LocalisationDataError(f"{where}: split must be train or val, not "
                                        f"{row['split']!r}.")
        try:
            box = [float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax")]
        except ValueError:
            raise LocalisationDataError(f"{where}: xmin,ymin,xmax,ymax must be numbers.") from None
        if not (box[0] < box[2] and box[1] < box[3]) or min(box) < 0:
            raise LocalisationDataError(f"{where}: box {box} is empty or negative; need "
                                        "0 <= xmin < xmax and 0 <= ymin < ymax (pixels).")
        label, boxes = by_image.setdefault(row["path"], (row["label"], []))
        if label != row["label"]:
            raise LocalisationDataError(f"{where}: {row['path']} has boxes of {label!r} and "
                                        f"{row['label']!r}; one class per image.")
        if not has_split or row["split"] == split:
            boxes.append(box)
    classes = tuple(sorted({label for label, _ in by_image.values()}))
    chosen = sorted((p, lab, b) for p, (lab, b) in by_image.items() if b)
    if not chosen:
        raise LocalisationDataError(f"{path}: no rows with split {split!r}.")
    missing = [p for p, _, _ in chosen if not (path.parent / p).is_file()]
    if missing:
        raise LocalisationDataError(f"{path}: {len(missing)} image(s) do not exist, e.g. "
                                    f"{path.parent / missing[0]}; paths are relative to the "
                                    "CSV's folder.")
    index = {c: i for i, c in enumerate(classes)}
    return LocImages(path.parent, classes, tuple(p for p, _, _ in chosen),
                     tuple(index[lab] for _, lab, _ in chosen),
                     tuple(np.array(b, dtype=np.float64) for _, _, b in chosen))


def _csv_rows(path: Path) -> list[tuple[int, dict]]:
    with csv_rows(path) as reader:  # a spreadsheet's BOM and CRLF too
        header = [h.strip() for h in reader.fieldnames or []]
        if not set(CSV_COLUMNS) <= set(header):
            raise LocalisationDataError(f"{path}: expected columns {','.join(CSV_COLUMNS)}"
                                        f"[,split]; found {header}.")
        rows = [(n, {(k or "").strip(): (v or "").strip() for k, v in row.items()})
                for n, row in enumerate(reader, start=2)]
    if not rows:
        raise LocalisationDataError(f"{path}: no rows.")
    return rows
