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
- On CUDA (``decode_on_device``) JPEGs are decoded on the GPU, a chunk of files at a time
  (torchvision's batched ``decode_jpeg``), other files on the CPU (`decode_route`), and a
  `Prefetcher` thread reads, decodes and rescales the next chunk on its own CUDA stream
  while the current batches run: loading overlaps compute.
- On the CPU in fp32 a VGG runs through `vggfeat.models.cpu.CpuDense` (same numbers)
  when one of pool5/fc6/fc7/fc8 is asked for; in bf16 too, on a CPU with bf16
  instructions (`vggfeat.models.cpu_bf16`: weights packed once in bf16, the map handed
  back in fp32; elsewhere bf16 is autocast). Other families run their own modules, and
  several layers come from one ``dense_layers`` call per batch.
- ``VGGFEAT_FIRST_RESULT_FILE``: when set, the wall-clock time (``time.time()``) of the
  first finished image is written there once (benchmarks measure start-up with it).
"""
from __future__ import annotations

import os
import queue
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from vggfeat.data.images import BadImageError, device_decodable
from vggfeat.data.scaled import ScaledImages, load_image
from vggfeat.data.transforms import rescale
from vggfeat.features.descriptor import DescriptorConfig, describe
from vggfeat.models.backbone import check_backbone
from vggfeat.models.cpu import fast_dense
from vggfeat.models.cpu_bf16 import bf16_support
from vggfeat.models.families import family_of
from vggfeat.models.inference import inference_copy
from vggfeat.models.vgg import DENSE_LAYERS, VGG
from vggfeat.utils.devices import resolve_device

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


def decode_route(source, device: torch.device | str) -> str:
    """"device" when `source` is a JPEG file that `device`'s decoder handles as `open_rgb`
    would (see `device_decodable`), else "cpu". Tensors and PIL images are already decoded
    ("cpu": nothing to decode). On the CPU "device" means torchvision's libjpeg decoder."""
    if isinstance(source, torch.Tensor) or hasattr(source, "convert"):
        return "cpu"
    path = getattr(source, "path", source)
    return "device" if device_decodable(path) else "cpu"


def decode_on(sources: Sequence, device: torch.device) -> list:
    """Decode a chunk of images to float (3, H, W) in [0, 1] on `device`, JPEGs on the
    device (one batched call), the rest on the CPU; a bad image becomes its reason (str)."""
    # torchvision 0.29 points to TorchCodec for decoding (not a dependency here, and no GPU
    # JPEG decoder there yet to compare with): silence that one notice, once, for everyone
    # (catch_warnings is not thread-safe and this runs in the prefetch thread).
    warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities",
                            category=DeprecationWarning)
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    out: list = [None] * len(sources)
    jpegs = [k for k, s in enumerate(sources) if decode_route(s, device) == "device"]
    if jpegs:
        data = [read_file(str(getattr(sources[k], "path", sources[k]))) for k in jpegs]
        try:
            decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one undecodable file fails the batch: those go to the CPU
            decoded = [None] * len(jpegs)
        for k, image in zip(jpegs, decoded, strict=True):
            if image is not None:
                image = _crop(image, getattr(sources[k], "box", None), sources[k])
                out[k] = image if isinstance(image, str) else image.float().div_(255)
    for k, source in enumerate(sources):
        if out[k] is None:
            try:
                out[k] = load_image(source).to(device, non_blocking=True)
            except BadImageError as error:
                out[k] = error.reason
    return out


def _crop(image: torch.Tensor, box, source):
    """`vggfeat.data.images.crop` for a (3, H, W) tensor; an empty box -> its reason."""
    if box is None:
        return image
    height, width = image.shape[-2:]
    x0, y0, x1, y1 = (int(v) for v in box)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if x1 <= x0 or y1 <= y0:
        return BadImageError(getattr(source, "path", source), f"box {tuple(box)} is empty "
                             f"inside the {width} x {height} image").reason
    return image[:, y0:y1, x0:x1]


class Prefetcher:
    """Runs an iterator in a background thread, `depth` items ahead of the consumer.

    On CUDA the producer works on its own stream and the consumer's stream waits for each
    item's work (an event) before using it, so that decoding and rescaling the next chunk
    overlaps the current batches' compute. On the CPU it is a plain read-ahead thread
    (decoding releases the GIL). An exception in the producer is raised in the consumer.

    Args:
        source: the iterable to run ahead (its items may nest tensors in lists/tuples).
        depth: most items produced and not yet consumed.
        device: where the producer's tensors live.
    """

    _DONE = object()

    def __init__(self, source: Iterable, depth: int = 2, device: torch.device | str = "cpu"):
        self.source = source
        self.device = torch.device(device)
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._produce, daemon=True)

    def _produce(self):
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        try:
            with torch.inference_mode(), _on_stream(stream):
                for item in self.source:
                    event = None
                    if stream is not None:
                        event = torch.cuda.Event()
                        event.record(stream)
                    if not self._put((item, event)):
                        return
        except BaseException as error:  # handed to the consumer, raised there
            self._put((error, None))
            return
        self._put((self._DONE, None))

    def _put(self, entry) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        self.thread.start()
        try:
            while True:
                item, event = self.queue.get()
                if item is self._DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                if event is not None:
                    consumer = torch.cuda.current_stream(self.device)
                    consumer.wait_event(event)
                    _record_stream(item, consumer)
                yield item
        finally:
            self.stop.set()
            self.thread.join(timeout=5)


class _on_stream:
    """``torch.cuda.stream(stream)``, or nothing when `stream` is None (the CPU)."""

    def __init__(self, stream):
        self.context = torch.cuda.stream(stream) if stream is not None else None

    def __enter__(self):
        return self.context.__enter__() if self.context is not None else None

    def __exit__(self, *exc):
        return self.context.__exit__(*exc) if self.context is not None else False


def _record_stream(item, stream) -> None:
    """Tell the caching allocator that `stream` uses the tensors inside `item` (they were
    allocated on the producer's stream; without this their memory could be reused early)."""
    if isinstance(item, torch.Tensor):
        if item.is_cuda:
            item.record_stream(stream)
    elif isinstance(item, list | tuple):
        for part in item:
            _record_stream(part, stream)


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


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
        model: a `vggfeat.models.backbone.Backbone` (``dense``, ``meta``), e.g. from
            `load_backbone`.
        config: what to compute (`DescriptorConfig.from_model`).
        batch_size: most images per batch.
        max_pixels: most pixels per batch (image and flip counted).
        workers: DataLoader worker processes for decoding and rescaling (0: in-process).
        device: "auto" (cuda, mps, cpu), or a torch device.
        channels_last: None picks it where faster (CUDA).
        fast_cpu: use `vggfeat.models.cpu.CpuDense` (same numbers, faster) for fp32 on the
            CPU; None means yes.
        resize_on_device: rescale on `device` instead of in the loader; None: on CUDA.
        decode_on_device: decode JPEGs with torchvision on `device` (batched, GPU on CUDA)
            and prefetch the next chunk in a thread; None: on CUDA. Implies rescaling on
            the device.
        prefetch: chunks decoded ahead with `decode_on_device`.
    """

    def __init__(self, model, config: DescriptorConfig, *, batch_size: int = DEFAULT_BATCH_SIZE,
                 max_pixels: int = DEFAULT_MAX_PIXELS, workers: int = 0,
                 device: str | torch.device = "auto", channels_last: bool | None = None,
                 fast_cpu: bool | None = None, resize_on_device: bool | None = None,
                 decode_on_device: bool | None = None, prefetch: int = 2):
        if batch_size < 1 or max_pixels < 1 or workers < 0:
            raise ValueError("batch_size and max_pixels must be >= 1 and workers >= 0")
        self.device = resolve_device(device)
        check_backbone(model)
        if family_of(model.meta.get("arch", "")) is not None and channels_last is not False:
            # torchvision's families: a copy, batch norms folded, channels_last (1.0-1.45x)
            self.model = inference_copy(model, self.device)
        else:
            self.model = prepare_model(model, self.device, channels_last)
        self.config = config
        self.decode_on_device = (self.device.type == "cuda" if decode_on_device is None
                                 else decode_on_device)
        self.resize_on_device = (self.device.type == "cuda" if resize_on_device is None
                                 else resize_on_device) or self.decode_on_device
        self.prefetch = prefetch
        self.dense = self.model.dense
        if (self.device.type == "cpu" and fast_cpu is not False
                and isinstance(self.model, VGG)  # the packed path is VGG's (plain convs)
                and _fast_path_covers(config) and _fast_precision(config.precision)):
            self.dense = fast_dense(self.model, precision=config.precision)
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
        first = os.environ.get("VGGFEAT_FIRST_RESULT_FILE")
        for result in self._results(items, scales, batcher, partial):
            if first:
                _write_first_result_time(first)
                first = None
            yield result

    def _results(self, items, scales, batcher, partial) -> Iterator[Result]:
        for index, images in self._scaled(items, scales):
            if isinstance(images, str):
                yield Result(index, error=images)
                continue
            partial[index] = [None] * len(scales)
            for slot, image in enumerate(images):
                for batch in batcher.add(index, slot, image):
                    yield from self._complete(batch, partial)
        for batch in batcher.flush():
            yield from self._complete(batch, partial)

    def _scaled(self, items, scales) -> Iterator[tuple[int, list | str]]:
        """(index, one image per scale on the device) or (index, reason), in item order."""
        if self.decode_on_device:
            def decode(chunk):
                images = decode_on([source for _, source in chunk], self.device)
                return [(index, image if isinstance(image, str) else
                         [rescale(image, q).contiguous() for q in scales])
                        for (index, _), image in zip(chunk, images, strict=True)]

            chunks = (decode(chunk) for chunk in _chunks(list(items), self.batch_size))
            for done in Prefetcher(chunks, self.prefetch, self.device):
                yield from done
            return
        for index, images in self._load(items, None if self.resize_on_device else scales):
            if not isinstance(images, str) and self.resize_on_device:
                images = self._rescale(images[0], scales)
            yield index, images

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


def _fast_path_covers(config: DescriptorConfig) -> bool:
    """`CpuDense` computes one of pool5, fc6, fc7, fc8 at a time; conv layers and several
    layers in one pass go through the model's own ``dense_layers`` (its eager trunk)."""
    return len(config.layers) == 1 and config.layer in DENSE_LAYERS


def _fast_precision(precision: str) -> bool:
    """fp32 always; bf16 where the CPU has bf16 instructions (emulated bf16 gains nothing:
    there it stays under autocast, as before the bf16 fast path) unless
    ``VGGFEAT_CPU_TRUNK=eager`` asks for the model's own modules (then autocast too)."""
    if precision == "fp32":
        return True
    return (precision == "bf16" and bf16_support().native
            and os.environ.get("VGGFEAT_CPU_TRUNK") != "eager")


def _write_first_result_time(path: str) -> None:
    try:
        with open(path, "x") as f:  # never overwrite a file vggfeat did not make
            f.write(f"{time.time():.6f}\n")
    except OSError:
        pass
