"""The paper's transfer descriptor for a batch of same-sized images (paper Appendix B).

For images already rescaled to smallest side Q: normalise as the weights say, run the net
densely (pooling as the weights record: torch's floor or Caffe's ceil rounding),
global-average-pool the chosen layer's map (fc7 after ReLU by default), and average
with the same for the horizontally flipped images. Batching, devices and files are the
engine's and the cache's business; this module is the arithmetic and what determines it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import torch

from vggfeat.models.families import family_of
from vggfeat.models.preprocessing import normalize
from vggfeat.models.vgg import check_pool_rounding

LAYERS = ("fc7", "fc6", "pool5")
PRECISIONS = ("fp32", "bf16")
# Bumped when the arithmetic changes in a way that changes the numbers (invalidates caches).
DESCRIPTOR_VERSION = 1
RESIZE = "bilinear-antialias-float32"


@dataclass(frozen=True)
class DescriptorConfig:
    """Everything that determines a descriptor's numbers, for one backbone."""

    arch: str
    weights_sha256: str
    preprocessing: dict
    scales: tuple[int, ...]
    layer: str = "fc7"
    flip: bool = True
    precision: str = "fp32"
    pool_rounding: str = "floor"

    def __post_init__(self):
        if self.layer not in LAYERS and family_of(self.arch) is None:  # VGG; others: below
            raise ValueError(f"layer must be one of {LAYERS}, got {self.layer!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not self.scales or any(int(q) <= 0 for q in self.scales):
            raise ValueError(f"scales must be positive integers, got {self.scales}")
        if len(set(self.scales)) != len(self.scales):
            raise ValueError(f"scales must be distinct, got {self.scales}")
        check_pool_rounding(self.pool_rounding)
        object.__setattr__(self, "scales", tuple(int(q) for q in self.scales))

    @classmethod
    def from_model(cls, model, scales, **kwargs) -> DescriptorConfig:
        """The configuration of `model` (a loaded backbone) at `scales`."""
        meta = model.meta
        kwargs.setdefault("layer", model.default_layer)
        if kwargs["layer"] not in model.layers:
            raise ValueError(f"layer {kwargs['layer']!r} is not a layer of {meta['arch']}; "
                             f"choose one of: {', '.join(model.layers)}")
        # The pools themselves, not a record that could disagree with them, decide the maps.
        config = cls(arch=meta["arch"], weights_sha256=meta.get("sha256") or "unknown",
                     preprocessing=dict(meta["preprocessing"]), scales=tuple(scales),
                     pool_rounding=model.pool_rounding, **kwargs)
        check_scales(config.scales, meta.get("crop_size", 224))
        return config

    def as_dict(self) -> dict:
        record = asdict(self)
        record.update(scales=list(self.scales), resize=RESIZE, version=DESCRIPTOR_VERSION)
        if self.pool_rounding == "floor":
            # Caches written before the rounding was recorded were all torch's floor: leaving
            # the default out keeps their keys (and lets them resume); ceil changes the key.
            del record["pool_rounding"]
        return record


def check_scales(scales, crop_size: int) -> None:
    """Dense evaluation needs images at least one crop wide: Q >= crop_size."""
    small = [q for q in scales if q < crop_size]
    if small:
        raise ValueError(f"scales {small} are below this net's crop size {crop_size}; "
                         f"use scales >= {crop_size}")


def config_key(record: dict) -> str:
    """A short, stable hash of a JSON-able record (sorted keys)."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def describe(model, images: torch.Tensor, config: DescriptorConfig, dense=None) -> torch.Tensor:
    """Descriptors of same-sized images (N, 3, H, W) in [0, 1] on the model's device.

    Args:
        model: the backbone (its ``dense`` map and weight layout are used).
        images: RGB in [0, 1], all of one size.
        config: layer, flip, precision, preprocessing.
        dense: optional replacement for ``model.dense`` computing the same map
            (`vggfeat.models.cpu.CpuDense`).

    Returns:
        (N, D) float32: pooled `config.layer`, averaged with the flipped image's if
        `config.flip`. Image and flip go through the net as one batch of 2N.
    """
    dense = dense or model.dense
    x = normalize(images, config.preprocessing)
    if config.flip:
        x = torch.cat([x, x.flip(-1)])
    x = x.contiguous(memory_format=_memory_format(model))
    with _autocast(images.device.type, config.precision):
        pooled = dense(x, config.layer).float().mean(dim=(2, 3))
    if config.flip:
        n = images.shape[0]
        pooled = (pooled[:n] + pooled[n:]) / 2
    return pooled


def _memory_format(model) -> torch.memory_format:
    # The engine converts the weights; inputs follow whatever layout the weights have.
    weight = next(p for p in model.parameters() if p.dim() == 4)  # the first convolution
    if weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _autocast(device_type: str, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return torch.autocast(device_type, enabled=False)
