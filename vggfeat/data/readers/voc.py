"""PASCAL VOC readers: VOC 2007 / 2012 classification (``ImageSets/Main``) and VOC 2012
action classification (person boxes, ``ImageSets/Action``), with the devkit's XML
annotation parser (also used for ILSVRC's boxes)."""
from __future__ import annotations

from pathlib import Path

import defusedxml.ElementTree as SafeET
import numpy as np

from vggfeat.data.readers.base import (
    VOC_SCALES,
    DatasetLayoutError,
    DatasetReader,
    Labels,
    Sample,
    listing,
    read_columns,
    require_dir,
    require_file,
)

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
VOC_ACTIONS = (
    "jumping", "phoning", "playinginstrument", "reading", "ridingbike", "ridinghorse",
    "running", "takingphoto", "usingcomputer", "walking",
)


def _find_voc_year(root: Path, year: str) -> Path:
    """Accept the VOC20xx folder itself, VOCdevkit, or the folder that holds VOCdevkit."""
    name = f"VOC{year}"
    for candidate in (root, root / name, root / "VOCdevkit" / name):
        if candidate.name == name and (candidate / "JPEGImages").is_dir():
            return candidate
    raise DatasetLayoutError(
        f"expected a VOC {year} devkit at {root / 'VOCdevkit' / name} (with JPEGImages/, "
        f"Annotations/, ImageSets/) or --root pointing at VOCdevkit or {name} itself; "
        f"{listing(root)}. Extract VOCtrainval (and VOCtest for 2007) from "
        "http://host.robots.ox.ac.uk/pascal/VOC/ into one folder."
    )


class VOCReader(DatasetReader):
    """PASCAL VOC classification: ``ImageSets/Main/<cls>_<split>.txt`` with labels 1/0/-1."""

    year = "2007"
    default_scales = VOC_SCALES
    multi_label = True
    required_splits: tuple[str, ...] = ("trainval", "test")
    optional_splits: tuple[str, ...] = ("train", "val")

    def __init__(self, root, **options):
        super().__init__(root, **options)
        self.classes = VOC_CLASSES
        self.voc_dir = _find_voc_year(self.root, self.year)
        self.main_dir = require_dir(self.voc_dir / "ImageSets" / "Main", "ImageSets/Main")
        self._split_ids: dict[str, list[str]] = {}
        self._labels: dict[str, Labels | None] = {}
        for split in self.required_splits + self.optional_splits:
            present = (self.main_dir / f"{split}.txt").is_file() or (
                self.main_dir / f"{self.classes[0]}_{split}.txt"
            ).is_file()
            if present or split in self.required_splits:
                self._load_split(split)
        self._check_images()

    def _load_split(self, split: str) -> None:
        list_file = self.main_dir / f"{split}.txt"
        class_files = [self.main_dir / f"{c}_{split}.txt" for c in self.classes]
        labelled = any(f.is_file() for f in class_files)
        if not labelled:
            # VOC 2012 test: ids only; labels live on the evaluation server.
            require_file(list_file, f"the {split} image list {list_file.name}")
            self._split_ids[split] = sorted(r[0] for r in read_columns(list_file, 1))
            self._labels[split] = None
            return
        ids: list[str] | None = None
        columns = []
        for class_file in class_files:
            require_file(class_file, f"the {split} labels of {class_file.stem.rsplit('_', 1)[0]}")
            rows = read_columns(class_file, 2)
            these = [r[0] for r in rows]
            if ids is None:
                ids = these
            elif sorted(these) != sorted(ids):
                raise DatasetLayoutError(
                    f"{class_file} lists different images from {class_files[0]}; "
                    "the split files are from different releases or truncated"
                )
            by_id = {r[0]: int(r[1]) for r in rows}
            columns.append(by_id)
        assert ids is not None
        ids = sorted(ids)
        if list_file.is_file():
            listed = sorted(r[0] for r in read_columns(list_file, 1))
            if listed != ids:
                raise DatasetLayoutError(
                    f"{list_file} and {class_files[0]} list different images; re-extract the devkit"
                )
        y = np.array([[col[i] for col in columns] for i in ids], dtype=np.int8).reshape(
            len(ids), len(self.classes)
        )
        if not np.isin(y, (-1, 0, 1)).all():
            raise DatasetLayoutError(f"{self.main_dir}: {split} labels must be 1, 0 or -1")
        self._split_ids[split] = ids
        self._labels[split] = Labels(ids, self.classes, y)

    def _check_images(self) -> None:
        jpeg_dir = require_dir(self.voc_dir / "JPEGImages", "JPEGImages/")
        for split, ids in self._split_ids.items():
            missing = [i for i in ids if not (jpeg_dir / f"{i}.jpg").is_file()]
            if missing:
                raise DatasetLayoutError(
                    f"{len(missing)} image(s) of split {split!r} are missing from {jpeg_dir}, "
                    f"e.g. {jpeg_dir / (missing[0] + '.jpg')}; extract the {split} archive too"
                )

    def images(self) -> list[Sample]:
        ids = sorted({i for ids in self._split_ids.values() for i in ids})
        return [Sample(i, self.voc_dir / "JPEGImages" / f"{i}.jpg") for i in ids]

    def splits(self) -> tuple[str, ...]:
        return tuple(s for s in ("train", "val", "trainval", "test") if s in self._split_ids)

    def split_ids(self, split: str) -> list[str]:
        if split not in self._split_ids:
            raise DatasetLayoutError(
                f"{self.main_dir}: no {split} split (found: {', '.join(self.splits())})"
            )
        return list(self._split_ids[split])

    def labels(self, split: str | None = None) -> Labels | None:
        if split is None:
            raise ValueError(f"{self.name}: give a split, one of {self.splits()}")
        self.split_ids(split)  # raises a layout error for an absent split
        return self._labels[split]


class VOC2007Reader(VOCReader):
    name = "voc2007"
    year = "2007"


class VOC2012Reader(VOCReader):
    name = "voc2012"
    year = "2012"
    required_splits = ("train", "val")
    optional_splits = ("trainval", "test")


def parse_voc_objects(xml_path: Path) -> list[dict]:
    """Objects of a VOC annotation file, parsed without entity expansion.

    Returns one dict per ``<object>`` (1-based ``objidx`` in file order) with ``name``,
    ``box`` (0-based, exclusive end: the devkit's 1-based inclusive ``xmin`` becomes
    ``xmin - 1`` and ``xmax`` stays) and ``actions`` (name -> 0/1, empty when absent).
    """
    try:
        tree = SafeET.parse(xml_path)
    except Exception as exc:  # defusedxml raises its own errors for entities/DTDs
        raise DatasetLayoutError(f"{xml_path}: unreadable annotation ({exc})") from exc
    objects = []
    for objidx, obj in enumerate(tree.getroot().iter("object"), start=1):
        bndbox = obj.find("bndbox")
        box = None
        if bndbox is not None:
            try:
                xmin, ymin, xmax, ymax = (
                    round(float(bndbox.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax")
                )
            except (TypeError, ValueError) as exc:
                raise DatasetLayoutError(f"{xml_path}: object {objidx} has a bad bndbox") from exc
            box = (xmin - 1, ymin - 1, xmax, ymax)
        actions_el = obj.find("actions")
        actions = {}
        if actions_el is not None:
            actions = {child.tag: int(float(child.text or 0)) for child in actions_el}
        objects.append(
            {"objidx": objidx, "name": (obj.findtext("name") or "").strip(), "box": box,
             "actions": actions}
        )
    return objects


class VOCActionReader(DatasetReader):
    """VOC 2012 action classification: person boxes, ``ImageSets/Action/<action>_<split>.txt``.

    Images and box ids come from the split files (``<id> <objidx> <label>``); boxes from
    ``Annotations/<id>.xml``. Test images without public labels are read from
    ``ImageSets/Action/test.txt`` and every person object with a box in their annotation.
    """

    name = "voc2012-action"
    default_scales = VOC_SCALES
    default_aggregate = "avg"
    multi_label = True

    def __init__(self, root, **options):
        super().__init__(root, **options)
        self.classes = VOC_ACTIONS
        self.voc_dir = _find_voc_year(self.root, "2012")
        self.action_dir = require_dir(self.voc_dir / "ImageSets" / "Action", "ImageSets/Action")
        self.ann_dir = require_dir(self.voc_dir / "Annotations", "Annotations/")
        self._split_ids: dict[str, list[str]] = {}
        self._labels: dict[str, Labels | None] = {}
        for split in ("train", "val", "trainval", "test"):
            first = self.action_dir / f"{self.classes[0]}_{split}.txt"
            if first.is_file() or split in ("train", "val"):
                self._load_labelled(split)
            elif (self.action_dir / f"{split}.txt").is_file():
                self._load_unlabelled(split)
        self._boxes = self._read_boxes()

    def _load_labelled(self, split: str) -> None:
        columns, keys = [], None
        for action in self.classes:
            path = require_file(
                self.action_dir / f"{action}_{split}.txt", f"the {split} labels of {action}"
            )
            rows = read_columns(path, 3)
            by_key = {f"{r[0]}#{int(r[1])}": int(r[2]) for r in rows}
            if keys is None:
                keys = sorted(by_key)
            elif sorted(by_key) != keys:
                raise DatasetLayoutError(f"{path} lists different persons from the other actions")
            columns.append(by_key)
        assert keys is not None
        y = np.array([[c[k] for c in columns] for k in keys], dtype=np.int8).reshape(
            len(keys), len(self.classes)
        )
        self._split_ids[split] = keys
        self._labels[split] = Labels(keys, self.classes, y)

    def _load_unlabelled(self, split: str) -> None:
        image_ids = sorted({r[0] for r in read_columns(self.action_dir / f"{split}.txt", 1)})
        keys = []
        for image_id in image_ids:
            xml = require_file(self.ann_dir / f"{image_id}.xml", "the annotation")
            persons = [o for o in parse_voc_objects(xml) if o["box"] is not None]
            if any(o["actions"] for o in persons):
                persons = [o for o in persons if o["actions"]]
            keys += [f"{image_id}#{o['objidx']}" for o in persons]
        self._split_ids[split] = sorted(keys)
        self._labels[split] = None

    def _read_boxes(self) -> dict[str, Sample]:
        keys = sorted({k for ks in self._split_ids.values() for k in ks})
        jpeg_dir = require_dir(self.voc_dir / "JPEGImages", "JPEGImages/")
        objects_cache: dict[str, dict[int, dict]] = {}
        boxes = {}
        for key in keys:
            image_id, objidx = key.split("#")
            if image_id not in objects_cache:
                xml = require_file(self.ann_dir / f"{image_id}.xml", "the annotation")
                require_file(jpeg_dir / f"{image_id}.jpg", "the image")
                objects_cache[image_id] = {o["objidx"]: o for o in parse_voc_objects(xml)}
            obj = objects_cache[image_id].get(int(objidx))
            if obj is None or obj["box"] is None:
                raise DatasetLayoutError(
                    f"{self.ann_dir / (image_id + '.xml')} has no object {objidx} with a bndbox, "
                    "but ImageSets/Action lists it"
                )
            boxes[key] = Sample(key, jpeg_dir / f"{image_id}.jpg", obj["box"])
        return boxes

    def images(self) -> list[Sample]:
        ids = sorted({key.split("#")[0] for key in self._boxes})
        return [Sample(i, self.voc_dir / "JPEGImages" / f"{i}.jpg") for i in ids]

    def boxes(self) -> list[Sample]:
        return [self._boxes[k] for k in sorted(self._boxes)]

    def splits(self) -> tuple[str, ...]:
        return tuple(s for s in ("train", "val", "trainval", "test") if s in self._split_ids)

    def split_ids(self, split: str) -> list[str]:
        if split not in self._split_ids:
            raise DatasetLayoutError(
                f"{self.action_dir}: no {split} split (found: {', '.join(self.splits())})"
            )
        return list(self._split_ids[split])

    def labels(self, split: str | None = None) -> Labels | None:
        if split is None:
            raise ValueError(f"{self.name}: give a split, one of {self.splits()}")
        self.split_ids(split)
        return self._labels[split]
