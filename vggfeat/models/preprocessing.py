"""What a net expects of its input pixels. It travels with the weights (model.meta).

Images enter the pipeline as RGB float tensors in [0, 1]; `normalize` turns them into
whatever the weights were trained on, so no mean is ever hard-coded downstream.
"""
from __future__ import annotations

import math

import torch

# torchvision's VGG weights: RGB in [0, 1], ImageNet mean/std.
TORCHVISION_IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                        "channel_order": "RGB", "value_scale": 1.0}
# The original Caffe release: BGR in [0, 255], mean pixel subtracted, no std (paper Sec. 2.1).
CAFFE_VGG = {"mean": [103.939, 116.779, 123.68], "std": [1.0, 1.0, 1.0],
             "channel_order": "BGR", "value_scale": 255.0}


def validate(preprocessing: dict) -> dict:
    """Check a preprocessing record and return it; raises ValueError naming the problem."""
    missing = {"mean", "std", "channel_order", "value_scale"} - set(preprocessing)
    if missing:
        raise ValueError(f"preprocessing lacks {sorted(missing)}: {preprocessing}")
    if preprocessing["channel_order"] not in ("RGB", "BGR"):
        order = preprocessing["channel_order"]
        raise ValueError(f"channel_order must be RGB or BGR, got {order!r}")
    try:
        mean = [float(v) for v in preprocessing["mean"]]
        std = [float(v) for v in preprocessing["std"]]
        scale = float(preprocessing["value_scale"])
    except (TypeError, ValueError):
        raise ValueError(f"mean, std and value_scale must be numbers: {preprocessing}") from None
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values each: {preprocessing}")
    # A NaN mean or a zero std would turn every image into NaN or Inf, and the pipeline's
    # non-finite guards into all-zero descriptors: refuse it where it enters.
    if not all(math.isfinite(v) for v in mean + std + [scale]):
        raise ValueError(f"mean, std and value_scale must be finite numbers: {preprocessing}")
    if min(std) <= 0 or scale <= 0:
        raise ValueError(f"std and value_scale must be positive: {preprocessing}")
    return preprocessing


def normalize(x: torch.Tensor, preprocessing: dict) -> torch.Tensor:
    """RGB in [0, 1], shape (N, 3, H, W) -> the input the weights expect.

    Values are in the record's order (mean and std are given in that channel order).
    """
    if preprocessing["channel_order"] == "BGR":
        x = x.flip(1)
    mean = torch.tensor(preprocessing["mean"], dtype=x.dtype, device=x.device)
    std = torch.tensor(preprocessing["std"], dtype=x.dtype, device=x.device)
    x = x * preprocessing["value_scale"]
    return (x - mean[:, None, None]) / std[:, None, None]
