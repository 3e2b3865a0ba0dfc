"""Box predictions of a localisation net, in image pixels (paper Appendix A.1, testing).

- centre: the image rescaled to smallest side Q, its central crop, one box per head.
- dense: the box head applied at every crop-sized window of the whole rescaled image
  (fc6 as a k x k convolution, as the class head in `VGG.dense`), for the image and its
  horizontal flip, at each scale Q. The window at dense position (i, j) is the crop
  at (32 j, 32 i) of the rescaled image, so its box is decoded relative to that crop.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from vggfeat.data.transforms import rescale_pil, to_uint8_tensor
from vggfeat.localisation.boxes import crop_to_image, decode_boxes
from vggfeat.models import normalize


def box_heads(model) -> int:
    """Boxes per window: 1 (single-class regression) or the number of classes (per-class)."""
    out = model.feature_dim("fc8")
    if out % 4:
        raise ValueError(f"a box head has 4 or 4 x classes outputs, this net has {out}; give a "
                         "net trained with --task localisation.")
    return out // 4


@dataclass
class WindowBoxes:
    """Dense predictions of one net on one image at one scale and flip.

    boxes: (n, B, 4) xyxy in original image pixels; B = 1 (SCR) or classes (PCR).
    centres: (n, 2) window centres in the rescaled (and flipped, if `flip`) image.
    size: (W', H') of the rescaled image; flip: whether it was flipped.
    """

    boxes: np.ndarray
    centres: np.ndarray
    size: tuple[int, int]
    flip: bool


def to_input(img: Image.Image, q: int, model, device) -> tuple[torch.Tensor, tuple]:
    """Rescale to smallest side q; normalised (1, 3, H', W') tensor and (sx, sy)."""
    scaled = rescale_pil(img, q)
    x = to_uint8_tensor(scaled).to(device)[None].float().div_(255)
    sx, sy = scaled.size[0] / img.size[0], scaled.size[1] / img.size[1]
    return normalize(x, model.meta["preprocessing"]), (sx, sy)


@torch.no_grad()
def window_boxes(model, x: torch.Tensor, scale_xy, flip: bool) -> WindowBoxes:
    """Boxes of every dense window of one normalised image (1, 3, H', W')."""
    crop = model.meta["crop_size"]
    heads = box_heads(model)
    if flip:
        x = x.flip(-1)
    codes = model.dense(x, "fc8")[0].float().cpu()  # (4B, h, w)
    _, h, w = codes.shape
    codes = codes.view(heads, 4, h, w).permute(2, 3, 0, 1).reshape(h * w, heads, 4)
    rows, cols = np.divmod(np.arange(h * w), w)
    offsets = np.stack([cols, rows], 1) * model.stride
    boxes = decode_boxes(codes, crop).numpy().astype(np.float64)
    boxes[..., [0, 2]] += offsets[:, None, :1]
    boxes[..., [1, 3]] += offsets[:, None, 1:]
    width = x.shape[-1]
    if flip:  # back to the unflipped image: x -> W' - x
        boxes[..., [0, 2]] = width - boxes[..., [2, 0]]
    boxes[..., [0, 2]] /= scale_xy[0]
    boxes[..., [1, 3]] /= scale_xy[1]
    return WindowBoxes(boxes, offsets + crop / 2, (width, x.shape[-2]), flip)


@torch.no_grad()
def centre_boxes(model, img: Image.Image, q: int, device="cpu") -> np.ndarray:
    """(B, 4) boxes in image pixels from the central crop at smallest side q."""
    crop = model.meta["crop_size"]
    x, scale_xy = to_input(img, q, model, device)
    h, w = x.shape[-2:]
    top, left = (h - crop) // 2, (w - crop) // 2
    codes = model(x[..., top:top + crop, left:left + crop])[0].float().cpu()
    boxes = decode_boxes(codes.view(-1, 4), crop).numpy()
    return crop_to_image(boxes, scale_xy, (left, top), crop, False)


def predict_boxes(model, images, scales=None, *, center: bool = False, flip: bool = True,
                  device="cpu") -> list[np.ndarray]:
    """Boxes of a localisation net in each image's pixels.

    Args:
        model: a VGG whose fc8 has 4 (SCR) or 4 x classes (PCR) outputs.
        images: RGB PIL images.
        scales: smallest sides Q [the net's training scale].
        center: the central crop at the first scale only (paper Table 8's protocol);
            else the dense windows at every scale (and of the flipped image if `flip`).
        flip: also the horizontally flipped image (dense only).
        device: where to run the net.

    Returns:
        One (n, B, 4) float64 array of xyxy boxes per image: n = 1 for `center`, else
        every window of every scale and flip; B = 1 (SCR) or the number of classes (PCR).
    """
    model = model.to(device).eval()
    scales = list(scales or [default_scale(model)])
    out = []
    for img in images:
        if center:
            out.append(centre_boxes(model, img, scales[0], device)[None])
            continue
        sets = []
        for q in scales:
            x, scale_xy = to_input(img, q, model, device)
            sets += [window_boxes(model, x, scale_xy, f).boxes for f in ((False, True) if flip
                                                                          else (False,))]
        out.append(np.concatenate(sets))
    return out


def default_scale(model) -> int:
    """The net's training scale S (the middle of a jitter range), else 256."""
    s = model.meta.get("training", {}).get("scale")
    if isinstance(s, list | tuple):
        return (s[0] + s[1]) // 2
    return int(s) if s else 256


@torch.no_grad()
def window_posteriors(model, x: torch.Tensor, flip: bool) -> torch.Tensor:
    """(C, h, w) softmax posteriors of a classification net at every dense window."""
    if flip:
        x = x.flip(-1)
    return torch.softmax(model.dense(x, "fc8")[0].float(), 0).cpu()


def scores_at(posteriors: torch.Tensor, centres: np.ndarray, crop: int,
              stride: int) -> np.ndarray:
    """(n, C) posteriors of the classifier window nearest to each window centre.

    Nets of the same crop size and scale have the same windows, so this is then the
    window itself; for another crop size it is the window whose centre is nearest.
    `stride` is the classifier's (`Backbone.stride`).
    """
    _, h, w = posteriors.shape
    j = np.clip(np.rint((centres[:, 0] - crop / 2) / stride), 0, w - 1).astype(int)
    i = np.clip(np.rint((centres[:, 1] - crop / 2) / stride), 0, h - 1).astype(int)
    return posteriors[:, i, j].T.numpy().astype(np.float64)
