"""Isotropic rescale to smallest side Q, one version per image representation.

- `rescale` (float tensors; extraction): antialiased bilinear (a triangle filter whose
  support widens with the downscaling factor, the same filter as Pillow's ``BILINEAR``
  resize and torch's ``interpolate(..., antialias=True)``), computed in float32 on values
  in [0, 1], so no 8-bit rounding happens after decoding. Upscaling is plain bilinear (the
  filter is the same). The other side is rounded half up (`scaled_size`).
- `rescale_pil` (8-bit PIL images; training, eval-backbone, localisation): Pillow's
  ``BILINEAR`` resize, 8-bit output, the other side rounded by Python's `round`. It is the
  resize the bundled trainer has always trained and validated with, so it is kept as it
  is rather than made to round like `scaled_size` (the two differ by one pixel on the
  long side only at exact .5 ties).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def scaled_size(height: int, width: int, q: int) -> tuple[int, int]:
    """(height, width) after an isotropic rescale that makes the smallest side exactly q.

    The other side is ``floor(side * q / smallest + 0.5)`` (round half up), at least q.
    """
    if q <= 0:
        raise ValueError(f"scale must be positive, got {q}")
    short = min(height, width)

    def other(side: int) -> int:
        return q if side == short else max(q, math.floor(side * q / short + 0.5))

    return other(height), other(width)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """8-bit RGB PIL image -> float32 tensor (3, H, W) in [0, 1]."""
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """8-bit RGB PIL image -> uint8 tensor (3, H, W)."""
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def rescale_pil(image: Image.Image, size: int) -> Image.Image:
    """Rescale an RGB PIL image isotropically so that its smallest side equals `size`."""
    w, h = image.size
    if min(w, h) == size:
        return image
    ratio = size / min(w, h)
    new = (max(size, round(w * ratio)), max(size, round(h * ratio)))
    return image.resize(new, Image.Resampling.BILINEAR)


def rescale(x: torch.Tensor, q: int) -> torch.Tensor:
    """Rescale a (3, H, W) or (N, 3, H, W) float tensor so its smallest side is q."""
    size = scaled_size(x.shape[-2], x.shape[-1], q)
    if tuple(x.shape[-2:]) == size:
        return x
    batched = x if x.dim() == 4 else x[None]
    out = F.interpolate(batched, size=size, mode="bilinear", align_corners=False,
                        antialias=True)
    return out if x.dim() == 4 else out[0]


def multiscale(image: Image.Image, scales) -> list[torch.Tensor]:
    """One (3, h, w) float tensor in [0, 1] per scale, in the order of `scales`."""
    x = to_tensor(image)
    return [rescale(x, q).contiguous() for q in scales]
