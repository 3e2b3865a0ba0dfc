"""Readers of images in one folder per class: Caltech-101, Caltech-256 and custom folders.

`class_folders` and `class_images` are the one scan of a class-folder tree; the
trainer's ImageFolder splits (`vggfeat.training.data`) are indexed with them too."""
from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from vggfeat.data.images import is_image_file
from vggfeat.data.readers.base import (
    SPLIT_NAMES,
    DatasetLayoutError,
    DatasetReader,
    Labels,
    Sample,
    listing,
    one_hot_labels,
    require_dir,
)

# Folder names read as splits by the folder reader (validation/ is val/).
SPLIT_ALIASES = {"train": "train", "val": "val", "validation": "val", "test": "test"}
FOLDER_LAYOUTS = (
    "--dataset folder accepts two layouts: ROOT/<class>/<images> (seeded splits are drawn), "
    "or ROOT/train/<class>/<images> plus ROOT/test/<class>/... and/or ROOT/val/<class>/... "
    "(validation/ also accepted; without test/, val/ is the test split)"
)


def class_folders(base: Path) -> list[Path]:
    """The visible sub-folders of `base`, sorted: its classes (or its splits)."""
    return sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))


def class_images(class_dir: Path, recursive: bool = True) -> list[Path]:
    """The image files of one class folder (`is_image_file`), sorted; sub-folders are
    searched too when `recursive`."""
    entries = class_dir.rglob("*") if recursive else class_dir.iterdir()
    return sorted(p for p in entries if is_image_file(p))


class _ClassFolderReader(DatasetReader):
    """Images in ``<base>/<class>/...``; ids are paths relative to ``base``."""

    recursive = False

    def _index(self, base: Path, class_dirs: list[Path], prefix: str = "") -> dict[str, str]:
        label_of = {}
        for class_dir in class_dirs:
            files = class_images(class_dir, self.recursive)
            if not files:
                raise DatasetLayoutError(
                    f"class folder {class_dir} has no image files; {listing(class_dir)}"
                )
            for path in files:
                label_of[prefix + path.relative_to(base).as_posix()] = class_dir.name
        return label_of

    def images(self) -> list[Sample]:
        return [Sample(i, self.base / PurePosixPath(i)) for i in sorted(self._label_of)]

    def labels(self, split: str | None = None) -> Labels | None:
        ids = sorted(self._label_of) if split is None else self.split_ids(split)
        return one_hot_labels(ids, self.classes, {i: [self._label_of[i]] for i in ids})


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
        class_dirs = class_folders(self.base)
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
            f"at {self.folder} itself); {listing(self.root)}. Extract the dataset's archive "
            "from https://data.caltech.edu (Caltech-101: caltech-101.zip, then the "
            "101_ObjectCategories.tar.gz inside it) into --root."
        )

    def _check_class_dirs(self, class_dirs: list[Path]) -> None:
        if len(class_dirs) < 2:
            raise DatasetLayoutError(
                f"expected one folder per class in {self.base}; {listing(self.base)}"
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
        self.base = require_dir(self.root, "a folder with one sub-folder per class")
        subdirs = class_folders(self.base)
        split_dirs = [p for p in subdirs if _is_split_folder(p)]
        self._split_of: dict[str, str] = {}
        if split_dirs:
            self._check_split_layout(subdirs, split_dirs)
            self._label_of = {}
            classes = set()
            for split_dir in split_dirs:
                class_dirs = class_folders(split_dir)
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
                f"expected at least two class sub-folders in {self.base}; {listing(self.base)}. "
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
    return any(p.is_dir() for p in entries) and not any(is_image_file(p) for p in entries)
