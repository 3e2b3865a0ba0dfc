"""Training data: ImageFolder trees, bad-file accounting, synthetic data, loaders.

Layout: `DIR/train/<class>/*.JPEG` and `DIR/val/<class>/*.JPEG` (ImageNet's, or any
ImageFolder-style tree). Classes are the sorted folder names of `train`; `val` must have
the same folders. Problems a user can fix (missing folders, empty classes, mismatched
class lists) raise `TrainingDataError` at start, before any work is done. The folders are
scanned as the dataset readers scan class folders (`vggfeat.data.readers.folders`), and
images are decoded by `vggfeat.data.images.open_rgb`, JPEGs at a reduced size (draft).

Samples are looked up by `(epoch, index)` keys (see `EpochKeySampler`) so that the
per-image augmentation seed travels with the request and persistent worker processes
need no epoch state.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from vggfeat.data.images import BadImageError, open_rgb
from vggfeat.data.readers.folders import class_folders, class_images
from vggfeat.training.augment import sample_generator
from vggfeat.utils.errors import InputError


class TrainingDataError(InputError):
    """The training data is laid out wrongly or has too many unreadable images."""


@dataclass(frozen=True)
class ImageList:
    """Where one split's images are: root, sorted class names, (relative path, label) pairs."""

    root: Path
    classes: tuple[str, ...]
    samples: tuple[tuple[str, int], ...]

    def digest(self) -> str:
        """SHA-256 of the class list and file list: identifies the dataset for --resume."""
        h = hashlib.sha256()
        for name in self.classes:
            h.update(f"class {name}\n".encode())
        for rel, label in self.samples:
            h.update(f"{label} {rel}\n".encode())
        return h.hexdigest()


def scan_split(root: Path) -> ImageList:
    """Index an ImageFolder-style split; raises TrainingDataError on layout problems."""
    root = Path(root)
    if not root.is_dir():
        raise TrainingDataError(f"{root} is not a folder; expected {root}/<class>/<image> "
                                "(ImageNet layout DIR/train/<class>/*.JPEG and DIR/val/...).")
    classes = [p.name for p in class_folders(root)]
    if not classes:
        raise TrainingDataError(f"{root} has no class folders; put each class's images in "
                                f"{root}/<class>/.")
    samples, empty = [], []
    for label, name in enumerate(classes):
        files = class_images(root / name)
        if not files:
            empty.append(name)
        samples.extend((str(p.relative_to(root)), label) for p in files)
    if empty:
        raise TrainingDataError(f"class folder(s) without images in {root}: {', '.join(empty)}; "
                                "add images or remove the folder(s).")
    return ImageList(root, tuple(classes), tuple(samples))


def scan_image_folder(data_dir: Path) -> tuple[ImageList, ImageList]:
    """Index DIR/train and DIR/val and check they have the same classes."""
    data_dir = Path(data_dir)
    train, val = scan_split(data_dir / "train"), scan_split(data_dir / "val")
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        raise TrainingDataError(
            f"train and val classes differ in {data_dir}: only in train: {only_train[:10]}, "
            f"only in val: {only_val[:10]}; both splits need the same class folders.")
    return train, val


class FolderDataset(Dataset):
    """Images of an ImageList through a transform; unreadable files come back as None.

    `dataset[(epoch, index)]` -> (uint8 image, label, rgb shift, None) or
    (None, label, None, path) for a file that cannot be decoded.
    """

    def __init__(self, images: ImageList, transform, seed: int = 0):
        self.root = images.root
        # numpy arrays, not lists of Python objects: forked workers touching list items
        # would copy the pages (refcounts), growing memory with every epoch on ImageNet.
        self.paths = np.array([rel for rel, _ in images.samples])
        self.labels = np.array([label for _, label in images.samples], dtype=np.int64)
        self.transform = transform
        self.seed = seed

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        label, path = int(self.labels[index]), self.root / str(self.paths[index])
        try:
            img = open_rgb(path, draft_size=self.transform.draft_size)
        except BadImageError:
            return None, label, None, str(path)
        x, shift = self.transform(img, sample_generator(self.seed, epoch, index))
        return x, label, shift, None


class SyntheticDataset(Dataset):
    """Fixed random uint8 crops, for measuring the model and training step alone."""

    def __init__(self, size: int, num_classes: int, crop_size: int):
        self.size = size
        self.num_classes = num_classes
        gen = torch.Generator().manual_seed(0)
        self.image = torch.randint(0, 256, (3, crop_size, crop_size), dtype=torch.uint8,
                                   generator=gen)

    def __len__(self):
        return self.size

    def __getitem__(self, key):
        _, index = key if isinstance(key, tuple) else (0, key)
        return self.image, index % self.num_classes, torch.zeros(3), None


def collate(batch):
    """Stack good samples; returns (images, labels, shifts, bad_paths)."""
    good = [b for b in batch if b[3] is None]
    bad = [b[3] for b in batch if b[3] is not None]
    if not good:
        return None, None, None, bad
    images = torch.stack([b[0] for b in good])
    labels = torch.tensor([b[1] for b in good], dtype=torch.long)
    shifts = torch.stack([b[2] for b in good])
    return images, labels, shifts, bad


class EpochKeySampler(Sampler):
    """Wraps a sampler so that it yields (epoch, index) keys.

    The epoch reaches the dataset with each request, which keeps the per-image seeds right
    in persistent worker processes. `set_epoch` also reshuffles the wrapped
    DistributedSampler (seed + epoch), so the order is a function of (seed, epoch) alone.
    """

    def __init__(self, sampler):
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        return ((self.epoch, int(i)) for i in self.sampler)

    def __len__(self):
        return len(self.sampler)


class ShardSampler(Sampler):
    """Indices rank, rank + world, ... without padding (validation: every image once)."""

    def __init__(self, n: int, rank: int, world: int):
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def train_loader(dataset, *, batch_size: int, rank: int, world: int, seed: int,
                 workers: int, pin_memory: bool, collate_fn=collate) -> DataLoader:
    """Per-rank loader of batch_size // world images; the global batch is batch_size.

    The DistributedSampler (also for one process) makes step i's global batch the same
    set of images whatever the number of processes: rank r takes every world-th image of
    one shuffled permutation, and consecutive per-rank batches tile it in blocks of
    batch_size. Incomplete last batches are dropped.
    """
    if batch_size % world:
        raise TrainingDataError(f"--batch-size {batch_size} is not divisible by the "
                                f"{world} processes; the global batch must split evenly.")
    per_rank = batch_size // world
    if len(dataset) < batch_size:
        raise TrainingDataError(f"{len(dataset)} training images is fewer than one batch of "
                                f"{batch_size}; lower --batch-size.")
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                 seed=seed, drop_last=True)
    return DataLoader(dataset, batch_size=per_rank, sampler=EpochKeySampler(sampler),
                      num_workers=workers, collate_fn=collate_fn, pin_memory=pin_memory,
                      drop_last=True, persistent_workers=workers > 0,
                      # A private generator: worker seeding must not consume the global
                      # RNG, whose stream (dropout) has to be the same after --resume.
                      generator=torch.Generator().manual_seed(seed),
                      prefetch_factor=4 if workers > 0 else None)


def val_loader(dataset, *, batch_size: int, rank: int, world: int, workers: int,
               pin_memory: bool, collate_fn=collate) -> DataLoader:
    """Per-rank loader over this rank's shard of the validation images, in order."""
    return DataLoader(dataset, batch_size=max(1, batch_size // world),
                      sampler=ShardSampler(len(dataset), rank, world), num_workers=workers,
                      collate_fn=collate_fn, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(0))
