"""Dataset readers: where the images and labels of each benchmark are (SPEC section 6).

A reader only indexes files and parses label files; decoding and transforming images is
someone else's job (`vggfeat.data.images`, `vggfeat.data.transforms`). Every reader
validates its layout when it is opened, so a wrong or incomplete dataset fails at once
with the path that was expected and what was found there.

Label accessors (used by `vggfeat.evaluation.protocols`):

- ``reader.classes`` - class (or action) names, in a fixed order.
- ``reader.splits()`` - the named splits the dataset defines (``()`` for Caltech and
  split-less custom data: the protocol draws seeded splits itself).
- ``reader.labels(split=None)`` - a `Labels`: sample ids and an ``(n, n_classes)`` int8
  matrix in {1, 0, -1} (positive, difficult/ignored, negative), or ``None`` where the split
  has no public labels (VOC 2012 test).
- ``reader.split_ids(split)`` - the ids of a split, labelled or not.
- ``reader.multi_label`` - whether an image may carry several classes.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import defusedxml.ElementTree as SafeET
import numpy as np

DATASETS = ("voc2007", "voc2012", "voc2012-action", "caltech101", "caltech256", "folder", "csv")

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
VOC_ACTIONS = (
    "jumping", "phoning", "playinginstrument", "reading", "ridingbike", "ridinghorse",
    "running", "takingphoto", "usingcomputer", "walking",
)
# Suffixes counted as images when globbing folders (lower-cased); anything else is a stray
# entry (Caltech-256 ships a few, e.g. "RENAME2" and "greg" in 198.spider / 056.dog).
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
VOC_SCALES = (256, 384, 512, 640, 768)
CALTECH_SCALES = (256, 384, 512)
SPLIT_NAMES = ("train", "val", "test")
# Folder names read as splits by the folder reader (validation/ is val/).
SPLIT_ALIASES = {"train": "train", "val": "val", "validation": "val", "test": "test"}
FOLDER_LAYOUTS = (
    "--dataset folder accepts two layouts: ROOT/<class>/<images> (seeded splits are drawn), "
    "or ROOT/train/<class>/<images> plus ROOT/test/<class>/... and/or ROOT/val/<class>/... "
    "(validation/ also accepted; without test/, val/ is the test split)"
)


class DatasetLayoutError(ValueError):
    """A dataset folder does not have the layout its reader expects."""


@dataclass(frozen=True)
class Sample:
    """One image (or one person box in an image) of a dataset.

    ``id`` is unique in the dataset: the VOC image id, the path relative to the dataset
    root for folder/Caltech/csv data, or ``"<image id>#<objidx>"`` for an action box.
    ``box`` is a 0-based pixel box ``(x0, y0, x1, y1)`` with exclusive end, or None.
    """

    id: str
    path: Path
    box: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class Labels:
    """Ground truth of one split: ``y[i, k]`` is 1, 0 (difficult, ignored) or -1."""

    ids: list[str]
    classes: tuple[str, ...]
    y: np.ndarray = field(repr=False)

    def single_label(self) -> np.ndarray:
        """Class index per sample, for data where each sample has exactly one class."""
        counts = (self.y == 1).sum(axis=1)
        if not np.all(counts == 1):
            raise ValueError("these labels are multi-label; use the label matrix instead")
        return np.argmax(self.y == 1, axis=1)


def _listing(path: Path, limit: int = 8) -> str:
    """Describe what is at `path`, for error messages."""
    if not path.exists():
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        return f"{path} does not exist (nearest existing folder: {parent})"
    if not path.is_dir():
        return f"{path} is a file, not a folder"
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    more = f", ... ({len(names)} entries)" if len(names) > limit else ""
    shown = ", ".join(names[:limit]) + more
    return f"{path} contains: {shown or 'nothing'}"


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetLayoutError(f"expected {what} at {path}; {_listing(path)}")
    return path


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DatasetLayoutError(f"expected {what} at {path}; {_listing(path.parent)}")
    return path


def _is_image(path: Path) -> bool:
    visible = not path.name.startswith(".")
    return visible and path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def _read_columns(path: Path, min_cols: int) -> list[list[str]]:
    """Whitespace-separated rows of a devkit text file, blank lines skipped."""
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < min_cols:
            raise DatasetLayoutError(
                f"{path}, line {lineno}: expected {min_cols} columns, found {line!r}"
            )
        rows.append(parts)
    return rows


class DatasetReader:
    """Base class: a dataset root, its options and its images."""

    name = ""
    default_scales: tuple[int, ...] = CALTECH_SCALES
    # How per-scale descriptors are combined by default (SPEC section 5 table).
    default_aggregate = "avg"
    multi_label = False
    allowed_options: tuple[str, ...] = ()

    def __init__(self, root, **options):
        unknown = sorted(set(options) - set(self.allowed_options))
        if unknown:
            raise ValueError(
                f"dataset {self.name!r} has no option(s) {unknown}; "
                f"allowed: {list(self.allowed_options) or 'none'}"
            )
        self.root = Path(root).expanduser().resolve()
        self.options = dict(options)
        self.classes: tuple[str, ...] = ()

    def images(self) -> list[Sample]:
        """Every image the protocol needs, unique ids, sorted by id."""
        raise NotImplementedError

    def boxes(self) -> list[Sample]:
        """Person boxes (voc2012-action only); empty for other datasets."""
        return []

    def splits(self) -> tuple[str, ...]:
        """Named splits defined by the dataset; empty when the protocol draws its own."""
        return ()

    def split_ids(self, split: str) -> list[str]:
        labels = self.labels(split)
        if labels is None:
            raise DatasetLayoutError(f"{self.root}: no split {split!r}")
        return labels.ids

    def labels(self, split: str | None = None) -> Labels | None:
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}(root={str(self.root)!r}, options={self.options})"


# --------------------------------------------------------------------------------------
# PASCAL VOC
# --------------------------------------------------------------------------------------


def _find_voc_year(root: Path, year: str) -> Path:
    """Accept the VOC20xx folder itself, VOCdevkit, or the folder that holds VOCdevkit."""
    name = f"VOC{year}"
    for candidate in (root, root / name, root / "VOCdevkit" / name):
        if candidate.name == name and (candidate / "JPEGImages").is_dir():
            return candidate
    raise DatasetLayoutError(
        f"expected a VOC {year} devkit at {root / 'VOCdevkit' / name} (with JPEGImages/, "
        f"Annotations/, ImageSets/) or --root pointing at VOCdevkit or {name} itself; "
        f"{_listing(root)}. Extract VOCtrainval (and VOCtest for 2007) from "
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
        self.main_dir = _require_dir(self.voc_dir / "ImageSets" / "Main", "ImageSets/Main")
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
            _require_file(list_file, f"the {split} image list {list_file.name}")
            self._split_ids[split] = sorted(r[0] for r in _read_columns(list_file, 1))
            self._labels[split] = None
            return
        ids: list[str] | None = None
        columns = []
        for class_file in class_files:
            _require_file(class_file, f"the {split} labels of {class_file.stem.rsplit('_', 1)[0]}")
            rows = _read_columns(class_file, 2)
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
            listed = sorted(r[0] for r in _read_columns(list_file, 1))
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
        jpeg_dir = _require_dir(self.voc_dir / "JPEGImages", "JPEGImages/")
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
        self.action_dir = _require_dir(self.voc_dir / "ImageSets" / "Action", "ImageSets/Action")
        self.ann_dir = _require_dir(self.voc_dir / "Annotations", "Annotations/")
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
            path = _require_file(
                self.action_dir / f"{action}_{split}.txt", f"the {split} labels of {action}"
            )
            rows = _read_columns(path, 3)
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
        image_ids = sorted({r[0] for r in _read_columns(self.action_dir / f"{split}.txt", 1)})
        keys = []
        for image_id in image_ids:
            xml = _require_file(self.ann_dir / f"{image_id}.xml", "the annotation")
            persons = [o for o in parse_voc_objects(xml) if o["box"] is not None]
            if any(o["actions"] for o in persons):
                persons = [o for o in persons if o["actions"]]
            keys += [f"{image_id}#{o['objidx']}" for o in persons]
        self._split_ids[split] = sorted(keys)
        self._labels[split] = None

    def _read_boxes(self) -> dict[str, Sample]:
        keys = sorted({k for ks in self._split_ids.values() for k in ks})
        jpeg_dir = _require_dir(self.voc_dir / "JPEGImages", "JPEGImages/")
        objects_cache: dict[str, dict[int, dict]] = {}
        boxes = {}
        for key in keys:
            image_id, objidx = key.split("#")
            if image_id not in objects_cache:
                xml = _require_file(self.ann_dir / f"{image_id}.xml", "the annotation")
                _require_file(jpeg_dir / f"{image_id}.jpg", "the image")
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


# --------------------------------------------------------------------------------------
# Caltech and custom folders: one sub-folder per class
# --------------------------------------------------------------------------------------


def _one_hot(ids: list[str], classes: tuple[str, ...], label_of: dict[str, list[str]]) -> Labels:
    index = {c: k for k, c in enumerate(classes)}
    y = -np.ones((len(ids), len(classes)), dtype=np.int8)
    for row, sample_id in enumerate(ids):
        for name in label_of[sample_id]:
            y[row, index[name]] = 1
    return Labels(list(ids), classes, y)


class _ClassFolderReader(DatasetReader):
    """Images in ``<base>/<class>/...``; ids are paths relative to ``base``."""

    recursive = False

    def _index(self, base: Path, class_dirs: list[Path], prefix: str = "") -> dict[str, str]:
        label_of = {}
        for class_dir in class_dirs:
            pattern = class_dir.rglob("*") if self.recursive else class_dir.iterdir()
            files = sorted(p for p in pattern if _is_image(p))
            if not files:
                raise DatasetLayoutError(
                    f"class folder {class_dir} has no image files; {_listing(class_dir)}"
                )
            for path in files:
                label_of[prefix + path.relative_to(base).as_posix()] = class_dir.name
        return label_of

    def images(self) -> list[Sample]:
        return [Sample(i, self.base / PurePosixPath(i)) for i in sorted(self._label_of)]

    def labels(self, split: str | None = None) -> Labels | None:
        ids = sorted(self._label_of) if split is None else self.split_ids(split)
        return _one_hot(ids, self.classes, {i: [self._label_of[i]] for i in ids})


class Caltech101Reader(_ClassFolderReader):
    """``101_ObjectCategories/<class>/image_NNNN.jpg``; 102 classes incl. BACKGROUND_Google.

    Option ``drop_background=True`` gives torchvision's 101 classes.
    """

    name = "caltech101"
    folder = "101_ObjectCategories"
    allowed_options = ("drop_background",)
    default_aggregate = "stack"

    def __init__(self, root, **options):
        super().__init__(root, **options)
        self.base = self._find_base()
        class_dirs = sorted(p for p in self.base.iterdir() if p.is_dir())
        if options.get("drop_background", False):
            class_dirs = [p for p in class_dirs if p.name != "BACKGROUND_Google"]
        self._check_class_dirs(class_dirs)
        self.classes = tuple(p.name for p in class_dirs)
        self._label_of = self._index(self.base, class_dirs)

    def _find_base(self) -> Path:
        for candidate in (self.root, self.root / self.folder):
            if candidate.name == self.folder and candidate.is_dir():
                return candidate
        raise DatasetLayoutError(
            f"expected {self.root / self.folder} with one folder per class (or --root pointing "
            f"at {self.folder} itself); {_listing(self.root)}. Extract the dataset's archive "
            "from https://data.caltech.edu (Caltech-101: caltech-101.zip, then the "
            "101_ObjectCategories.tar.gz inside it) into --root."
        )

    def _check_class_dirs(self, class_dirs: list[Path]) -> None:
        if len(class_dirs) < 2:
            raise DatasetLayoutError(
                f"expected one folder per class in {self.base}; {_listing(self.base)}"
            )


class Caltech256Reader(Caltech101Reader):
    """``256_ObjectCategories/NNN.name/NNN_NNNN.jpg``; 257 classes incl. ``257.clutter``."""

    name = "caltech256"
    folder = "256_ObjectCategories"
    allowed_options = ()

    def _check_class_dirs(self, class_dirs: list[Path]) -> None:
        super()._check_class_dirs(class_dirs)
        bad = [p.name for p in class_dirs if not re.fullmatch(r"\d{3}\.\S+", p.name)]
        if bad:
            raise DatasetLayoutError(
                f"{self.base}: class folders must be named NNN.name (e.g. 001.ak47); "
                f"found {bad[:3]}"
            )


class FolderReader(_ClassFolderReader):
    """Custom data, one sub-folder per class (searched recursively for images).

    Two layouts (`FOLDER_LAYOUTS`): ``<root>/<class>/...`` (the protocol draws seeded
    splits), or predefined splits ``<root>/<split>/<class>/...`` with ``train`` and at least
    one of ``val`` (or ``validation``) and ``test``. With a test split, val joins training;
    without one (the ImageNet layout train/ + val/), val is the held-out split. A top-level
    folder named like a split that holds class folders (not images) is a split folder, so a
    class called "train" (VOC has one) stays a class; a mix of split folders and other
    folders is refused rather than guessed.
    """

    name = "folder"
    recursive = True

    def __init__(self, root, **options):
        super().__init__(root, **options)
        self.base = _require_dir(self.root, "a folder with one sub-folder per class")
        subdirs = sorted(
            p for p in self.base.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        split_dirs = [p for p in subdirs if _is_split_folder(p)]
        self._split_of: dict[str, str] = {}
        if split_dirs:
            self._check_split_layout(subdirs, split_dirs)
            self._label_of = {}
            classes = set()
            for split_dir in split_dirs:
                class_dirs = sorted(p for p in split_dir.iterdir()
                                    if p.is_dir() and not p.name.startswith("."))
                found = self._index(self.base, class_dirs)
                self._label_of.update(found)
                self._split_of.update({i: SPLIT_ALIASES[split_dir.name] for i in found})
                classes |= {p.name for p in class_dirs}
            class_dirs_names = sorted(classes)
        else:
            self._label_of = self._index(self.base, subdirs)
            class_dirs_names = [p.name for p in subdirs]
        if len(class_dirs_names) < 2:
            raise DatasetLayoutError(
                f"expected at least two class sub-folders in {self.base}; {_listing(self.base)}. "
                f"{FOLDER_LAYOUTS}"
            )
        self.classes = tuple(class_dirs_names)

    def _check_split_layout(self, subdirs: list[Path], split_dirs: list[Path]) -> None:
        names = [p.name for p in split_dirs]
        others = [p.name for p in subdirs if p not in split_dirs]
        splits = [SPLIT_ALIASES[n] for n in names]
        problem = ""
        if others:
            problem = (f"it mixes split folders ({', '.join(names)}) with other folders "
                       f"({', '.join(others[:5])})")
        elif len(set(splits)) != len(splits):
            problem = f"it has both val/ and validation/ ({', '.join(names)})"
        elif "train" not in splits or len(splits) < 2:
            problem = (f"its split folders ({', '.join(names)}) lack train/ and a held-out "
                       "val/ or test/")
        if problem:
            raise DatasetLayoutError(f"{self.base}: {problem}. {FOLDER_LAYOUTS}")

    def splits(self) -> tuple[str, ...]:
        return tuple(s for s in SPLIT_NAMES if s in set(self._split_of.values()))

    def split_ids(self, split: str) -> list[str]:
        ids = sorted(i for i, s in self._split_of.items() if s == split)
        if not ids:
            raise DatasetLayoutError(f"{self.base}: no {split} split (found: {self.splits()})")
        return ids


def _is_split_folder(path: Path) -> bool:
    """A folder named like a split (train, val, validation, test) that holds folders and no
    images directly: split/<class>/..., as opposed to a class folder called "train"."""
    if path.name not in SPLIT_ALIASES:
        return False
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    return any(p.is_dir() for p in entries) and not any(_is_image(p) for p in entries)


class CSVReader(DatasetReader):
    """Custom data listed in a CSV file with a header row.

    Columns: ``path`` (relative to the CSV's folder, or absolute), then ``label`` (a path
    may appear on several rows for several labels) or ``labels`` (separated by ``;``), and
    optionally ``split`` (train, val or test; val joins training). ``root`` is the CSV file,
    or a folder holding ``labels.csv`` (option ``csv`` names another file in it).
    """

    name = "csv"
    allowed_options = ("csv",)

    def __init__(self, root, **options):
        super().__init__(root, **options)
        self.csv_path = self.root
        if self.root.is_dir():
            self.csv_path = self.root / options.get("csv", "labels.csv")
        _require_file(self.csv_path, "a CSV file with columns path,label[,split]")
        self.base = self.csv_path.parent
        self._label_of: dict[str, list[str]] = {}
        self._path_of: dict[str, Path] = {}
        self._split_of: dict[str, str] = {}
        self._read()
        self.classes = tuple(sorted({c for labels in self._label_of.values() for c in labels}))
        if len(self.classes) < 2:
            raise DatasetLayoutError(f"{self.csv_path}: need at least two classes")
        self.multi_label = any(len(v) != 1 for v in self._label_of.values())

    def _read(self) -> None:
        with self.csv_path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            label_col = "labels" if "labels" in header else "label"
            if "path" not in header or label_col not in header:
                raise DatasetLayoutError(
                    f"{self.csv_path}: expected a header with columns path,label[,split] "
                    f"(or labels separated by ';'); found {header}"
                )
            for lineno, row in enumerate(reader, start=2):
                row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
                self._add_row(row, label_col, lineno)
        if not self._label_of:
            raise DatasetLayoutError(f"{self.csv_path}: no rows")
        if self._split_of and len(self._split_of) != len(self._label_of):
            raise DatasetLayoutError(f"{self.csv_path}: the split column is empty on some rows")

    def _add_row(self, row: dict, label_col: str, lineno: int) -> None:
        where = f"{self.csv_path}, line {lineno}"
        sample_id = PurePosixPath(row["path"].replace("\\", "/")).as_posix()
        labels = [x.strip() for x in row[label_col].split(";") if x.strip()]
        if not sample_id or not labels:
            raise DatasetLayoutError(f"{where}: empty path or label")
        path = Path(sample_id) if Path(sample_id).is_absolute() else self.base / sample_id
        if not path.is_file():
            raise DatasetLayoutError(f"{where}: image {path} does not exist")
        split = row.get("split", "")
        if split:
            if split not in SPLIT_NAMES:
                raise DatasetLayoutError(
                    f"{where}: split must be one of {SPLIT_NAMES}, not {split!r}"
                )
            if self._split_of.setdefault(sample_id, split) != split:
                raise DatasetLayoutError(f"{where}: {sample_id} is in two splits")
        known = self._label_of.setdefault(sample_id, [])
        known += [c for c in labels if c not in known]
        self._path_of[sample_id] = path

    def images(self) -> list[Sample]:
        return [Sample(i, self._path_of[i]) for i in sorted(self._label_of)]

    def splits(self) -> tuple[str, ...]:
        return tuple(s for s in SPLIT_NAMES if s in set(self._split_of.values()))

    def split_ids(self, split: str) -> list[str]:
        ids = sorted(i for i, s in self._split_of.items() if s == split)
        if not ids:
            raise DatasetLayoutError(f"{self.csv_path}: no rows with split {split!r}")
        return ids

    def labels(self, split: str | None = None) -> Labels | None:
        ids = sorted(self._label_of) if split is None else self.split_ids(split)
        return _one_hot(ids, self.classes, self._label_of)


_READERS: dict[str, type[DatasetReader]] = {
    "voc2007": VOC2007Reader,
    "voc2012": VOC2012Reader,
    "voc2012-action": VOCActionReader,
    "caltech101": Caltech101Reader,
    "caltech256": Caltech256Reader,
    "folder": FolderReader,
    "csv": CSVReader,
}


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
    if name not in _READERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return _READERS[name](root, **options)


class LabelTableReader(DatasetReader):
    """Labels given as a table rather than read from files: the labels that
    `extract_to_cache(..., labels=, splits=)` stores in a cache (ids are the items' ids).

    Evaluated with the folder/csv protocol (``protocol = "csv"``): the given train(+val) /
    test split when there is one, else seeded splits.
    """

    protocol = "csv"

    def __init__(self, name: str, root, ids, classes, y, splits=None):
        super().__init__(root or ".")
        self.name = name
        self.classes = tuple(classes)
        self._labels = Labels(list(ids), self.classes, np.asarray(y, dtype=np.int8))
        self._split_of = dict(zip(ids, splits, strict=True)) if splits is not None else {}
        self.multi_label = bool(((self._labels.y == 1).sum(axis=1) != 1).any())

    def images(self) -> list[Sample]:
        return [Sample(i, Path(i)) for i in self._labels.ids]

    def splits(self) -> tuple[str, ...]:
        return tuple(s for s in SPLIT_NAMES if s in set(self._split_of.values()))

    def split_ids(self, split: str) -> list[str]:
        ids = [i for i in self._labels.ids if self._split_of.get(i) == split]
        if not ids:
            raise DatasetLayoutError(f"{self.name}: no items with split {split!r}")
        return ids

    def labels(self, split: str | None = None) -> Labels | None:
        if split is None:
            return self._labels
        keep = set(self.split_ids(split))
        rows = [k for k, i in enumerate(self._labels.ids) if i in keep]
        return Labels([self._labels.ids[k] for k in rows], self.classes, self._labels.y[rows])
