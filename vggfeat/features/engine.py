"""The descriptor engine: decode, rescale, batch by exact shape, run, reassemble per image.

Why it is built this way:

- Padding changes dense results, so a batch only ever holds images of exactly the same
  resized shape (`ShapeBatcher`); an image's descriptor is therefore the same whatever the
  batch size, the number of loader workers, the order of the images or the number of
  processes (to float rounding), and results are keyed by dataset index, never by position.
- Memory is bounded by a pixel budget per batch (image and flip counted), by a cap on the
  pixels waiting in partly filled batches, and on CUDA by halving a batch that runs out of
  memory (the budget stays halved for the rest of the run).
- Decoding (and, except on CUDA, rescaling) runs in DataLoader workers (``workers`` > 0)
  while the net runs; on CUDA the decoded image is moved once and rescaled on the GPU.
- On the CPU in fp32 the net runs through `vggfeat.features.cpu.CpuDense` (same numbers).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vggfeat.data.images import BadImageError, open_rgb, to_rgb
from vggfeat.data.transforms import rescale, to_tensor
from vggfeat.features.cpu import fast_dense
from vggfeat.features.descriptor import DescriptorConfig, describe

DEFAULT_BATCH_SIZE = 32
# Pixels per batch, flipped copies included: 4.2 M, about 3 GB of fp32 activations for a
# full-width VGG16 (its largest maps hold 64 channels at full resolution).
DEFAULT_MAX_PIXELS = 16 * 512 * 512
# Partly filled batches may hold this many budgets' worth of pixels before the fullest is run.
PENDING_BUDGETS = 4


@dataclass(frozen=True)
class Result:
    """One image's outcome: `descriptor` (S, D) float32, or `error` (the reason)."""

    index: int
    descriptor: np.ndarray | None = None
    error: str | None = None


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> cuda, then mps, then cpu; anything else is passed to torch.device."""
    if str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def prepare_model(model, device: torch.device, channels_last: bool | None = None):
    """Move a backbone to `device` in eval mode, channels_last where that is faster.

    channels_last (NHWC) is what CUDA's tensor-core convolutions want; on this project's
    CPU (oneDNN, AVX-512) it measured no faster than NCHW for VGG16, so None picks it on
    CUDA only.
    """
    if channels_last is None:
        channels_last = device.type == "cuda"
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return model.to(device).eval().to(memory_format=layout)


def load_image(source) -> torch.Tensor:
    """A sample (``.path``/``.box``), path, PIL image or (3, H, W) tensor -> float (3, H, W)."""
    if isinstance(source, torch.Tensor):
        return source.float()
    if hasattr(source, "convert"):  # a PIL image
        return to_tensor(to_rgb(source))
    path = getattr(source, "path", source)
    return to_tensor(open_rgb(path, getattr(source, "box", None)))


class ScaledImages(Dataset):
    """Item k: (index, [one (3, h, w) tensor per scale]) or (index, reason) for a bad image.

    With ``scales=None`` the list holds the decoded image itself (the engine rescales it on
    the device: a third of the bytes to move at VOC's three scales, and GPU arithmetic).
    """

    def __init__(self, items: Sequence[tuple[int, object]], scales: Sequence[int] | None):
        self.items = items
        self.scales = None if scales is None else tuple(scales)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int):
        index, source = self.items[k]
        try:
            image = load_image(source)
        except BadImageError as error:
            return index, error.reason
        if self.scales is None:
            return index, [image]
        return index, [rescale(image, q).contiguous() for q in self.scales]


class ShapeBatcher:
    """Groups (index, scale slot, image) by exact shape; yields full batches.

    Args:
        batch_size: most images in a batch.
        max_pixels: most pixels in a batch, `copies` per image (2 with flips).
        copies: how many times each image goes through the net.
    """

    def __init__(self, batch_size: int, max_pixels: int, copies: int = 1):
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.copies = copies
        self.buckets: dict[tuple[int, int], list[tuple[int, int, torch.Tensor]]] = {}
        self.pending = 0

    def capacity(self, shape: tuple[int, int]) -> int:
        """Images of this shape per batch (at least one, however large)."""
        per_image = shape[0] * shape[1] * self.copies
        return max(1, min(self.batch_size, self.max_pixels // per_image))

    def add(self, index: int, slot: int, image: torch.Tensor) -> Iterator[list]:
        shape = tuple(image.shape[-2:])
        bucket = self.buckets.setdefault(shape, [])
        bucket.append((index, slot, image))
        self.pending += image.shape[-1] * image.shape[-2]
        if len(bucket) >= self.capacity(shape):
            yield self._take(shape)
        while self.pending > PENDING_BUDGETS * self.max_pixels // self.copies:
            yield self._take(max(self.buckets, key=lambda s: len(self.buckets[s]) * s[0] * s[1]))

    def flush(self) -> Iterator[list]:
        """The remaining partial batches, in a fixed order (by shape)."""
        for shape in sorted(self.buckets):
            while self.buckets.get(shape):
                yield self._take(shape)

    def _take(self, shape) -> list:
        bucket = self.buckets[shape]
        batch, rest = bucket[:self.capacity(shape)], bucket[self.capacity(shape):]
        if rest:
            self.buckets[shape] = rest
        else:
            del self.buckets[shape]
        self.pending -= sum(image.shape[-1] * image.shape[-2] for _, _, image in batch)
        return batch


class Engine:
    """Computes descriptors of many images with one backbone.

    Args:
        model: a backbone (``model.dense``, ``model.meta``), e.g. from `load_backbone`.
        config: what to compute (`DescriptorConfig.from_model`).
        batch_size: most images per batch.
        max_pixels: most pixels per batch (image and flip counted).
        workers: DataLoader worker processes for decoding and rescaling (0: in-process).
        device: "auto" (cuda, mps, cpu), or a torch device.
        channels_last: None picks it where faster (CUDA).
        fast_cpu: use `vggfeat.features.cpu.CpuDense` (same numbers, faster) for fp32 on the
            CPU; None means yes.
        resize_on_device: rescale on `device` instead of in the loader; None: on CUDA.
    """

    def __init__(self, model, config: DescriptorConfig, *, batch_size: int = DEFAULT_BATCH_SIZE,
                 max_pixels: int = DEFAULT_MAX_PIXELS, workers: int = 0,
                 device: str | torch.device = "auto", channels_last: bool | None = None,
                 fast_cpu: bool | None = None, resize_on_device: bool | None = None):
        if batch_size < 1 or max_pixels < 1 or workers < 0:
            raise ValueError("batch_size and max_pixels must be >= 1 and workers >= 0")
        self.device = resolve_device(device)
        self.model = prepare_model(model, self.device, channels_last)
        self.config = config
        self.resize_on_device = (self.device.type == "cuda" if resize_on_device is None
                                 else resize_on_device)
        self.dense = self.model.dense
        if self.device.type == "cpu" and config.precision == "fp32" and fast_cpu is not False:
            self.dense = fast_dense(self.model)
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.workers = workers
        self._batcher: ShapeBatcher | None = None  # the running batcher (OOM shrinks it)

    def run(self, items: Sequence[tuple[int, object]]) -> Iterator[Result]:
        """Yield one `Result` per (index, source) item, in completion order."""
        scales = self.config.scales
        batcher = ShapeBatcher(self.batch_size, self.max_pixels, 2 if self.config.flip else 1)
        self._batcher = batcher
        partial: dict[int, list] = {}
        for index, images in self._load(items, None if self.resize_on_device else scales):
            if isinstance(images, str):
                yield Result(index, error=images)
                continue
            if self.resize_on_device:
                images = self._rescale(images[0], scales)
            partial[index] = [None] * len(scales)
            for slot, image in enumerate(images):
                for batch in batcher.add(index, slot, image):
                    yield from self._complete(batch, partial)
        for batch in batcher.flush():
            yield from self._complete(batch, partial)

    @torch.inference_mode()
    def _rescale(self, image: torch.Tensor, scales) -> list[torch.Tensor]:
        image = image.to(self.device, non_blocking=True)
        return [rescale(image, q).contiguous() for q in scales]

    @torch.inference_mode()
    def describe_batch(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, h, w) in [0, 1] -> (N, D) on the CPU; halves the batch on CUDA OOM."""
        try:
            x = images.to(self.device, non_blocking=True)
            return describe(self.model, x, self.config, self.dense).cpu()
        except torch.OutOfMemoryError:
            if images.shape[0] == 1:
                raise
            torch.cuda.empty_cache()
            half = images.shape[0] // 2
            pixels = images.shape[-1] * images.shape[-2] * (2 if self.config.flip else 1)
            self.max_pixels = max(pixels, half * pixels)
            if self._batcher is not None:
                self._batcher.max_pixels = self.max_pixels
            return torch.cat([self.describe_batch(images[:half]),
                              self.describe_batch(images[half:])])

    def _complete(self, batch, partial) -> Iterator[Result]:
        pooled = self.describe_batch(torch.stack([image for _, _, image in batch])).numpy()
        for (index, slot, _), row in zip(batch, pooled, strict=True):
            slots = partial[index]
            slots[slot] = row
            if all(s is not None for s in slots):
                del partial[index]
                yield Result(index, descriptor=np.stack(slots).astype(np.float32, copy=False))

    def _load(self, items, scales):
        dataset = ScaledImages(items, scales)
        if self.workers == 0:
            return (dataset[k] for k in range(len(dataset)))
        return DataLoader(dataset, batch_size=None, num_workers=self.workers,
                          pin_memory=self.device.type == "cuda", prefetch_factor=2,
                          persistent_workers=False)
