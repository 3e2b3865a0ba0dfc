"""The paper's transfer descriptor for a batch of same-sized images (paper Appendix B).

For images already rescaled to smallest side Q: normalise as the weights say, run the net
densely (pooling as the weights record: torch's floor or Caffe's ceil rounding),
global-average-pool the chosen layer's map (fc7 after ReLU by default; ``pool="max"`` takes
the maximum over positions instead), and average with the same for the horizontally
flipped images. Several layers come from one pass of the net (``dense_layers``); their
pooled vectors are concatenated in the order asked for (the cache splits them again).
Batching, devices and files are the engine's and the cache's business; this module is the
arithmetic and what determines it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import torch

from vggfeat.models.preprocessing import normalize
from vggfeat.models.vgg import check_pool_rounding
from vggfeat.utils.errors import InputError

PRECISIONS = ("fp32", "bf16")
POOLS = ("avg", "max")  # over a map's positions: the paper's average (Appendix B), or max
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
    pool: str = "avg"
    extra_layers: tuple[str, ...] = ()  # more layers from the same pass, after `layer`

    def __post_init__(self):
        # The names a net accepts are its own (`check_layers`, in `from_model`).
        if not self.layer or not isinstance(self.layer, str):
            raise ValueError(f"layer must be a layer name, got {self.layer!r}")
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {self.pool!r}")
        object.__setattr__(self, "extra_layers", tuple(self.extra_layers))
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers must be distinct, got {self.layers}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not self.scales or any(int(q) <= 0 for q in self.scales):
            raise ValueError(f"scales must be positive integers, got {self.scales}")
        if len(set(self.scales)) != len(self.scales):
            raise ValueError(f"scales must be distinct, got {self.scales}")
        check_pool_rounding(self.pool_rounding)
        object.__setattr__(self, "scales", tuple(int(q) for q in self.scales))

    @property
    def layers(self) -> tuple[str, ...]:
        """Every layer described, in the cache's order (`layer` first)."""
        return (self.layer, *self.extra_layers)

    @classmethod
    def from_model(cls, model, scales, layer=None, **kwargs) -> DescriptorConfig:
        """The configuration of `model` (a loaded backbone) at `scales`.

        `layer`: a name of ``model.layers``, several as a list or "conv5_3,fc7", or None for
        ``model.default_layer``; a name the net does not have raises `InputError`.
        """
        meta = model.meta
        first, *extra = check_layers(model, layer)
        # The pools themselves, not a record that could disagree with them, decide the maps.
        config = cls(arch=meta["arch"], weights_sha256=meta.get("sha256") or "unknown",
                     preprocessing=dict(meta["preprocessing"]), scales=tuple(scales),
                     pool_rounding=model.pool_rounding, layer=first,
                     extra_layers=tuple(extra), **kwargs)
        check_scales(config.scales, meta.get("crop_size", 224))
        return config

    def as_dict(self) -> dict:
        record = asdict(self)
        record.update(scales=list(self.scales), resize=RESIZE, version=DESCRIPTOR_VERSION)
        if self.pool_rounding == "floor":
            # Caches written before the rounding was recorded were all torch's floor: leaving
            # the default out keeps their keys (and lets them resume); ceil changes the key.
            del record["pool_rounding"]
        # Likewise, the options added with the layer choice enter the key only when used.
        if self.pool == "avg":
            del record["pool"]
        if self.extra_layers:
            record["extra_layers"] = list(self.extra_layers)
        else:
            del record["extra_layers"]
        return record


def parse_layers(layer) -> tuple[str, ...]:
    """"conv5_3,fc7", ["conv5_3", "fc7"] or "fc7" -> the names, in order."""
    names = layer.split(",") if isinstance(layer, str) else list(layer)
    return tuple(str(name).strip() for name in names if str(name).strip())


def check_layers(model, layer=None) -> tuple[str, ...]:
    """The layer names asked for, checked against ``model.layers`` before any work.

    Raises:
        InputError: a name the net does not have (the message lists the valid ones), none,
            or one given twice.
    """
    if layer is None:
        return (model.default_layer,)
    names, valid = parse_layers(layer), tuple(model.layers)
    arch = model.meta.get("arch", type(model).__name__)
    unknown = [name for name in names if name not in valid]
    if unknown or not names:
        what = f"{unknown[0]!r} is not a layer of {arch}" if unknown else "no layer given"
        raise InputError(f"--layer: {what}; choose from: {', '.join(valid)} (several: "
                         "comma-separated, e.g. conv5_3,fc7)")
    if len(set(names)) != len(names):
        raise InputError(f"--layer: {layer!r} names a layer twice; give each once")
    return names


def layer_dims(model, config: DescriptorConfig) -> dict[str, int]:
    """Descriptor length of each layer of `config`, in its order."""
    return {name: int(model.feature_dim(name)) for name in config.layers}


def check_scales(scales, crop_size: int) -> None:
    """Dense evaluation needs images at least one crop wide: Q >= crop_size."""
    small = [q for q in scales if q < crop_size]
    if small:
        raise InputError(f"scales {small} are below this net's crop size {crop_size}; "
                         f"use scales >= {crop_size}")


def config_key(record: dict) -> str:
    """A short, stable hash of a JSON-able record (sorted keys)."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def describe(model, images: torch.Tensor, config: DescriptorConfig, dense=None,
             dense_layers=None) -> torch.Tensor:
    """Descriptors of same-sized images (N, 3, H, W) in [0, 1] on the model's device.

    Args:
        model: the backbone (its ``dense`` map and weight layout are used).
        images: RGB in [0, 1], all of one size.
        config: layer, flip, precision, preprocessing.
        dense: optional replacement for ``model.dense`` computing the same map
            (`vggfeat.models.cpu.CpuDense`); used for a single layer.
        dense_layers: optional replacement for ``model.dense_layers``; used for several.

    Returns:
        (N, D) float32: pooled `config.layer` (or each of `config.layers`, concatenated),
        averaged with the flipped image's if `config.flip`. Image and flip go through the
        net as one batch of 2N.
    """
    dense = dense or model.dense
    x = normalize(images, config.preprocessing)
    if config.flip:
        x = torch.cat([x, x.flip(-1)])
    x = x.contiguous(memory_format=_memory_format(model))
    with _autocast(images.device.type, config.precision):
        if len(config.layers) == 1:
            pooled = _pool(dense(x, config.layer), config.pool)
        else:
            maps = (dense_layers or model.dense_layers)(x, config.layers)
            pooled = torch.cat([_pool(maps[name], config.pool) for name in config.layers], 1)
    if config.flip:
        n = images.shape[0]
        pooled = (pooled[:n] + pooled[n:]) / 2
    return pooled


def _pool(layer_map: torch.Tensor, pool: str) -> torch.Tensor:
    """(N, C, h, w) -> (N, C) float32: the mean or the maximum over the positions."""
    if pool == "max":
        return layer_map.float().amax(dim=(2, 3))
    return layer_map.float().mean(dim=(2, 3))


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
