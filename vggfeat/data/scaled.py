"""Images decoded once and rescaled to every test scale Q, for a DataLoader.

Extraction (`vggfeat.features.engine`) and eval-backbone (`vggfeat.training.evaluate`)
both load through `ScaledImages`; they differ only in the representation they rescale:

- extraction: float tensors in [0, 1], rescaled by `rescale` (antialiased, no 8-bit
  rounding after decoding: the descriptor's numbers);
- eval-backbone: 8-bit PIL images rescaled by `rescale_pil`, as the trainer validates
  (``pil=True``), handed over as uint8 tensors.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset

from vggfeat.data.images import BadImageError, open_rgb, to_rgb
from vggfeat.data.transforms import rescale, rescale_pil, to_tensor, to_uint8_tensor


def load_pil(source) -> Image.Image:
    """A sample (``.path``/``.box``), path or PIL image -> 8-bit RGB PIL image."""
    if isinstance(source, Image.Image):
        return to_rgb(source)
    path = getattr(source, "path", source)
    return open_rgb(path, getattr(source, "box", None))


def load_image(source) -> torch.Tensor:
    """A sample (``.path``/``.box``), path, PIL image or (3, H, W) tensor -> float (3, H, W)."""
    if isinstance(source, torch.Tensor):
        return source.float()
    return to_tensor(load_pil(source))


class ScaledImages(Dataset):
    """Item k: (index, [one (3, h, w) tensor per scale]) or (index, reason) for a bad image.

    Args:
        items: (index, source) pairs; a source is what `load_image` takes.
        scales: the smallest sides Q. None: the list holds the decoded image itself (the
            engine then rescales it on the device: a third of the bytes to move at VOC's
            three scales, and GPU arithmetic).
        pil: rescale the 8-bit PIL image (`rescale_pil`) and give uint8 tensors, instead
            of float tensors in [0, 1] rescaled by `rescale`.
    """

    def __init__(self, items: Sequence[tuple[int, object]], scales: Sequence[int] | None,
                 pil: bool = False):
        self.items = items
        self.scales = None if scales is None else tuple(scales)
        self.pil = pil

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int):
        index, source = self.items[k]
        try:
            return index, self._scaled(source)
        except BadImageError as error:
            return index, error.reason

    def _scaled(self, source) -> list[torch.Tensor]:
        if self.pil:
            image = load_pil(source)
            if self.scales is None:
                return [to_uint8_tensor(image)]
            return [to_uint8_tensor(rescale_pil(image, q)) for q in self.scales]
        image = load_image(source)
        if self.scales is None:
            return [image]
        return [rescale(image, q).contiguous() for q in self.scales]
