"""VGG configurations A, A-LRN, B, C, D, E (paper Table 1) with a convolutional head.

The architecture is data: each configuration is one list of layer tokens, turned into
layers by one function, as in torchvision. Parameter names and shapes equal
torchvision's (`features.N.*`, `classifier.{0,3,6}.*`), so its state dicts load unchanged.

fc6/fc7/fc8 keep their `nn.Linear` parameters but can also run as convolutions (fc6 as a
k x k conv with k = crop_size / 32, fc7/fc8 as 1x1 convs) by viewing the same weights
(timm's ConvMlp idea). That gives dense evaluation over whole images of any size without
copying or converting weights.

Pooling rounding: torch's max pooling rounds an odd side down, Caffe's (which ran the
paper's released nets) rounds it up, so for a side that is not a multiple of 32 the two
disagree by one row or column of the dense map (a 256x341 image: Caffe's fc map is 2x5,
torch's 2x4). Each net records its rounding in ``meta["pool_rounding"]`` ("floor" or
"ceil") and its pools are built with the matching ``ceil_mode``; with 2x2/2 windows and no
padding, torch's ``ceil_mode=True`` is exactly Caffe's ``ceil((H - 2) / 2) + 1``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Layer tokens: an int is a 3x3 conv with that many channels, ("1x1", n) a 1x1 conv
# (configuration C), "M" a 2x2/2 max pool, "LRN" AlexNet's local response normalisation.
CONFIGS: dict[str, list] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg11-lrn": [64, "LRN", "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16-1x1": [64, 64, "M", 128, 128, "M", 256, 256, ("1x1", 256), "M",
                  512, 512, ("1x1", 512), "M", 512, 512, ("1x1", 512), "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
              512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
# Batch-norm variants exist for torchvision's BN checkpoints.
BN_ARCHS = {f"{name}-bn": name for name in ("vgg11", "vgg13", "vgg16", "vgg19")}
PAPER_NAMES = {"A": "vgg11", "A-LRN": "vgg11-lrn", "B": "vgg13", "C": "vgg16-1x1",
               "D": "vgg16", "E": "vgg19"}
ARCHS = tuple(CONFIGS) + tuple(BN_ARCHS)
DENSE_LAYERS = ("pool5", "fc6", "fc7", "fc8")
POOL_ROUNDINGS = ("floor", "ceil")  # torch's default; Caffe's (the paper's released nets)
FC_WIDTH = 4096
TOTAL_STRIDE = 32  # five 2x2/2 max pools


def canonical_arch(arch: str) -> str:
    """Return vggfeat's name for an architecture given by name or paper letter.

    Accepts "vgg16", "D", "vgg16_bn", "VGG16-BN" and the like.
    """
    if arch in PAPER_NAMES:
        return PAPER_NAMES[arch]
    name = arch.lower().replace("_", "-")
    if name.upper() in PAPER_NAMES:
        return PAPER_NAMES[name.upper()]
    if name not in ARCHS:
        known = ", ".join(list(ARCHS) + list(PAPER_NAMES))
        raise ValueError(f"unknown architecture {arch!r}; choose one of: {known}")
    return name


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def check_pool_rounding(rounding: str) -> str:
    """Return `rounding` if it is "floor" or "ceil"; raise ValueError otherwise."""
    if rounding not in POOL_ROUNDINGS:
        raise ValueError(f"pool rounding must be one of {POOL_ROUNDINGS}, got {rounding!r}")
    return rounding


def make_features(config: list, width: float = 1.0, batch_norm: bool = False,
                  pool_rounding: str = "floor") -> nn.Sequential:
    """Turn a list of layer tokens into the convolutional trunk."""
    ceil_mode = check_pool_rounding(pool_rounding) == "ceil"
    layers: list[nn.Module] = []
    in_channels = 3
    for token in config:
        if token == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=ceil_mode))
        elif token == "LRN":
            # AlexNet's n=5, alpha=1e-4, k=2; torch divides alpha by n (paper Sec. 2.1).
            layers.append(nn.LocalResponseNorm(size=5, alpha=5e-4, beta=0.75, k=2.0))
        else:
            kernel, channels = (1, token[1]) if isinstance(token, tuple) else (3, token)
            out_channels = _scaled(channels, width)
            layers.append(nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
            in_channels = out_channels
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """A VGG net whose head also runs densely over whole images.

    Args:
        features: the convolutional trunk (ends with pool5).
        num_classes: outputs of fc8.
        width: channel multiplier (1.0 for the paper's nets; 0.125 for test-sized nets).
        crop_size: training crop side; fc6's kernel is crop_size / 32.
        dropout: dropout probability after fc6 and fc7.

    It implements `vggfeat.models.backbone.Backbone`: trunk ``features`` (conv1_1..pool5),
    head ``classifier`` (fc6..fc8).
    """

    stride = TOTAL_STRIDE
    default_layer = "fc7"  # the paper's transfer descriptor (Appendix B)

    def __init__(self, features: nn.Sequential, num_classes: int = 1000, width: float = 1.0,
                 crop_size: int = 224, dropout: float = 0.5):
        super().__init__()
        if crop_size % TOTAL_STRIDE:
            raise ValueError(f"crop_size must be a multiple of 32, got {crop_size}")
        self.features = features
        self.kernel = crop_size // TOTAL_STRIDE
        pool5_channels = [m for m in features if isinstance(m, nn.Conv2d)][-1].out_channels
        hidden = _scaled(FC_WIDTH, width)
        self.classifier = nn.Sequential(
            nn.Linear(pool5_channels * self.kernel**2, hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        self.meta: dict = {}

    @property
    def layers(self) -> tuple[str, ...]:
        """Every name `dense` accepts, trunk first: the convolutions as the paper's Table 1
        names them (conv<block>_<n>, each map after its ReLU; configuration C's 1x1 convs
        counted in order, A-LRN's LRN unnamed), then `DENSE_LAYERS` (pool5, fc6, fc7, fc8)."""
        return tuple(self.conv_taps()) + DENSE_LAYERS

    def conv_taps(self) -> dict[str, int]:
        """conv layer name -> index in ``features`` of the ReLU after that convolution.

        Blocks are the stretches between max pools (Table 1's "maxpool" rows), so the
        n-th convolution of block b is conv<b>_<n>, e.g. conv5_3 for configuration D.
        """
        taps, block, n, name = {}, 1, 0, None
        for index, module in enumerate(self.features):
            if isinstance(module, nn.MaxPool2d):
                block, n = block + 1, 0
            elif isinstance(module, nn.Conv2d):
                n += 1
                name = f"conv{block}_{n}"
            elif isinstance(module, nn.ReLU) and name is not None:
                taps[name], name = index, None
        return taps

    # -- the three parts -------------------------------------------------------------

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """pool5 map (N, 512*width, H/32, W/32)."""
        return self.features(x)

    def forward_head(self, pool5: torch.Tensor, layer: str = "fc8") -> torch.Tensor:
        """Apply fc6..`layer` at every k x k window of pool5; returns (N, C, h, w) maps.

        fc6 is a k x k convolution and fc7/fc8 are 1x1 convolutions, computed as matrix
        products over pool5's windows (`unfold`, in fc6's (channel, row, column) flatten
        order). That reads the Linear weights as they are, where a convolution would
        repack fc6's 411 MB weight on every call; at exactly k x k it is the Linear head.
        """
        fc6, relu6, drop6, fc7, relu7, drop7, fc8 = self.classifier
        n, _, h, w = pool5.shape
        k = self.kernel
        if h < k or w < k:
            raise ValueError(f"input of {h * TOTAL_STRIDE}x{w * TOTAL_STRIDE} pixels or less is "
                             f"smaller than the {k * TOTAL_STRIDE}-pixel crop this net was "
                             "built for; rescale it to at least the crop size")
        windows = F.unfold(pool5, k).transpose(1, 2).reshape(-1, fc6.in_features)
        x = drop6(relu6(fc6(windows)))
        if layer != "fc6":
            x = drop7(relu7(fc7(x)))
        if layer == "fc8":
            x = fc8(x)
        return x.view(n, h - k + 1, w - k + 1, -1).permute(0, 3, 1, 2)

    def dense(self, x: torch.Tensor, layer: str = "fc8") -> torch.Tensor:
        """Maps of `layer` over whole images: (N, C, dense_output_size(H), dense_output_size(W)),
        i.e. floor(H/32) - k + 1 (torch's pooling) or ceil(H/32) - k + 1 (Caffe's).

        Args:
            x: normalised images (N, 3, H, W), H and W at least crop_size.
            layer: a conv layer (e.g. "conv5_3", after its ReLU; its map is the trunk's at
                that depth, larger than the fc maps), "pool5", "fc6", "fc7" (both after
                ReLU) or "fc8" (class scores); see `layers`.
        """
        if layer not in DENSE_LAYERS:
            return self.dense_layers(x, (layer,))[layer]
        pool5 = self.forward_features(x)
        return pool5 if layer == "pool5" else self.forward_head(pool5, layer)

    def dense_layers(self, x: torch.Tensor, layers) -> dict[str, torch.Tensor]:
        """Maps of several of `layers` from one pass: the trunk runs once, tapped after the
        ReLU of each conv layer asked for, and only as far as the deepest layer asked for
        (the head only when an fc layer is asked for)."""
        taps = self.conv_taps()
        unknown = [name for name in layers if name not in taps and name not in DENSE_LAYERS]
        if unknown:
            raise ValueError(f"layer must be one of {self.layers}, got {unknown[0]!r}")
        maps, pool5 = self._trunk_taps(x, {taps[n]: n for n in layers if n in taps},
                                       needs_pool5=any(n in DENSE_LAYERS for n in layers))
        if pool5 is None:
            return {name: maps[name] for name in layers}
        if "pool5" in layers:
            maps["pool5"] = pool5
        heads = [name for name in DENSE_LAYERS[1:] if name in layers]
        if heads:
            fc6, relu6, drop6, fc7, relu7, drop7, fc8 = self.classifier
            n, _, h, w = pool5.shape
            k = self.kernel
            x = self.forward_head(pool5, "fc6")
            rows = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
            maps["fc6"] = x
            if "fc7" in heads or "fc8" in heads:
                rows = drop7(relu7(fc7(rows)))
                maps["fc7"] = rows.view(n, h - k + 1, w - k + 1, -1).permute(0, 3, 1, 2)
            if "fc8" in heads:
                maps["fc8"] = fc8(rows).view(n, h - k + 1, w - k + 1, -1).permute(0, 3, 1, 2)
        return {name: maps[name] for name in layers}

    def _trunk_taps(self, x: torch.Tensor, wanted: dict[int, str], needs_pool5: bool):
        """({name: map after features[index]} for `wanted` index -> name, pool5 or None).

        The modules run one by one as ``nn.Sequential`` runs them (same numbers). A tapped
        map is never changed afterwards: the module after a ReLU is a conv, an LRN or a
        max pool, none of which writes into its input.
        """
        if not wanted:
            return {}, (self.forward_features(x) if needs_pool5 else None)
        last = len(self.features) - 1 if needs_pool5 else max(wanted)
        maps = {}
        for index, module in enumerate(self.features):
            x = module(x)
            if index in wanted:
                maps[wanted[index]] = x
            if index == last:
                break
        return maps, (x if needs_pool5 else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes); for inputs larger than a crop, the spatial mean."""
        return self.dense(x, "fc8").mean((2, 3))

    # -- introspection ----------------------------------------------------------------

    @property
    def pool_rounding(self) -> str:
        """"ceil" if the trunk's max pools round output sizes up (Caffe), else "floor"."""
        pools = [m for m in self.features if isinstance(m, nn.MaxPool2d)]
        return "ceil" if pools and all(m.ceil_mode for m in pools) else "floor"

    def set_pool_rounding(self, rounding: str) -> VGG:
        """Make every max pool round `rounding` and record it in `meta`; returns self."""
        ceil_mode = check_pool_rounding(rounding) == "ceil"
        for module in self.features:
            if isinstance(module, nn.MaxPool2d):
                module.ceil_mode = ceil_mode
        self.meta["pool_rounding"] = rounding
        return self

    def dense_size(self, size: int) -> int:
        """Side of this net's dense fc maps for an input side (see `dense_output_size`)."""
        return dense_output_size(size, self.kernel * TOTAL_STRIDE, self.pool_rounding)

    def conv_layers(self) -> list[nn.Conv2d]:
        """The trunk's convolutions, in order."""
        return [m for m in self.features if isinstance(m, nn.Conv2d)]

    def fc_layers(self) -> list[nn.Linear]:
        """fc6, fc7, fc8."""
        return [m for m in self.classifier if isinstance(m, nn.Linear)]

    def feature_dim(self, layer: str = "fc7") -> int:
        """Channels of a layer's map (any of `layers`)."""
        taps = self.conv_taps()
        if layer in taps:
            conv = [m for m in self.features[:taps[layer]] if isinstance(m, nn.Conv2d)][-1]
            return conv.out_channels
        fc6, fc7, fc8 = self.fc_layers()
        dims = {"pool5": self.conv_layers()[-1].out_channels, "fc6": fc6.out_features,
                "fc7": fc7.out_features, "fc8": fc8.out_features}
        return dims[layer]


def init_weights(model: VGG, init: str = "normal", std: float = 0.01) -> None:
    """Initialise as the paper (Sec. 3.1): zero-mean normal or Glorot; biases 0.

    The paper says "10^-2 variance"; std 0.01 is torchvision's and most re-implementations'
    reading, and `std` changes it.
    """
    if init not in ("normal", "xavier"):
        raise ValueError(f"init must be 'normal' or 'xavier', got {init!r}")
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            if init == "normal":
                nn.init.normal_(module.weight, 0.0, std)
            else:
                nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def build_backbone(arch: str, *, num_classes: int = 1000, width: float = 1.0,
                   crop_size: int = 224, init: str | None = "normal", dropout: float = 0.5,
                   pool_rounding: str = "floor") -> VGG:
    """Build a VGG configuration in train mode.

    Args:
        arch: "vgg11", "vgg11-lrn", "vgg13", "vgg16-1x1", "vgg16", "vgg19", a "-bn"
            variant, or a paper letter ("A", "A-LRN", "B", "C", "D", "E").
        num_classes: outputs of fc8.
        width: channel multiplier; 1.0 is the paper's net.
        crop_size: training crop side (a multiple of 32).
        init: "normal" (std 0.01, biases 0), "xavier", or None: torch's module defaults
            (for a net whose weights are loaded next).
        dropout: dropout after fc6 and fc7.
        pool_rounding: "floor" (torch's max pooling, torchvision's weights) or "ceil"
            (Caffe's, for the paper's released nets); recorded in ``meta``.

    Example:
        >>> net = build_backbone("A", width=0.125, crop_size=64, num_classes=10)
        >>> net(torch.zeros(2, 3, 64, 64)).shape
        torch.Size([2, 10])
    """
    name = canonical_arch(arch)
    batch_norm = name in BN_ARCHS
    config = CONFIGS[BN_ARCHS.get(name, name)]
    features = make_features(config, width, batch_norm, pool_rounding)
    model = VGG(features, num_classes, width, crop_size, dropout)
    if init is not None:
        init_weights(model, init)
    model.meta = default_meta(name, width=width, crop_size=crop_size, num_classes=num_classes)
    model.meta["pool_rounding"] = pool_rounding
    return model.train()


def default_meta(arch: str, *, width: float, crop_size: int, num_classes: int) -> dict:
    """Metadata of a freshly built net; preprocessing defaults to torchvision's ImageNet stats."""
    from vggfeat.models.preprocessing import TORCHVISION_IMAGENET

    return {"arch": arch, "width": width, "crop_size": crop_size, "num_classes": num_classes,
            "batch_norm": arch in BN_ARCHS, "preprocessing": dict(TORCHVISION_IMAGENET),
            "source": None, "sha256": None}


def pool5_size(size: int, pool_rounding: str = "floor") -> int:
    """Side of pool5 for an input side: five 2x2/2 pools, each rounding the same way.

    Nested floors (ceils) of halvings equal one floor (ceil) of the division by 32.
    """
    rounding = math.ceil if check_pool_rounding(pool_rounding) == "ceil" else math.floor
    return rounding(size / TOTAL_STRIDE)


def dense_output_size(size: int, crop_size: int = 224, pool_rounding: str = "floor") -> int:
    """Side of the dense fc map for an input side: pool5's side - crop_size/32 + 1."""
    return pool5_size(size, pool_rounding) - crop_size // TOTAL_STRIDE + 1


def recorded_pool_rounding(meta: dict) -> str:
    """The pooling rounding a checkpoint's metadata records.

    Checkpoints written before the rounding was recorded: Caffe conversions ran in Caffe,
    which rounds up; everything else was built with torch's default, which rounds down.
    """
    if "pool_rounding" in meta:
        return check_pool_rounding(meta["pool_rounding"])
    return "ceil" if meta.get("converted_from") else "floor"
