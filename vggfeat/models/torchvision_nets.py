"""torchvision's CNNs as vggfeat backbones: dense over whole images, any named layer.

One wrapper, `TorchvisionNet`, adopts a torchvision model's modules under their own names
(so torchvision's state dicts load unchanged) and runs the trunk stages its family lists
(`vggfeat.models.families`) over a whole rescaled image of any size at least the weights'
crop, as the paper runs VGG (Sec. 3.2). A layer's map is returned before any pooling over
positions; the descriptor code pools it and averages flips. The default layer is the map the
net's classifier receives (ResNet ``layer4``, ConvNeXt ``features``, ...); AlexNet runs
fc6/fc7 densely as VGG does (fc6 over 6x6 windows of ``features``) and defaults to fc7.

Nested module names (``layer4.1``, ``features.6``) are captured with forward hooks during
the same pass; the trunk stops after the stage holding the deepest layer asked for.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vggfeat.models.families import ALEXNET_HEAD, FAMILIES, Family, family_names, family_of
from vggfeat.models.families import is_refused as _is_refused
from vggfeat.models.files import WeightsError

ALEXNET_WINDOW = 6  # torchvision's AlexNet pools `features` to 6x6 before fc6


def check_arch(arch: str) -> tuple[str, Family]:
    """(torchvision's name, family) of a supported CNN; WeightsError (an InputError)
    for anything else."""
    from torchvision.models import list_models

    name = arch.lower().replace("-", "_")
    if _is_refused(name):
        raise WeightsError(
            f"--arch {arch}: vision transformers (vit_*, swin_*, maxvit_t) cannot run fully "
            "convolutionally over a whole image of any size, which dense evaluation needs. "
            f"Families that work: {family_names()}, and VGG.")
    family = family_of(name)
    if family is None or name not in list_models():
        raise WeightsError(f"--arch {arch}: not a torchvision CNN that vggfeat runs. Families "
                         f"that work: {family_names()}, and VGG (vgg11 ... vgg19, -bn).")
    return name, family


def weights_entry(arch: str, filename: str | None = None):
    """torchvision's weights entry for `arch`: the release named `filename`, else DEFAULT."""
    from torchvision.models import get_model_weights

    entries = get_model_weights(arch)
    if filename is not None:
        for entry in entries:
            if entry.url.rsplit("/", 1)[-1] == filename:
                return entry
    return entries.DEFAULT


def entry_meta(entry) -> dict:
    """Crop size and preprocessing from a torchvision weights entry's evaluation transforms."""
    transform = entry.transforms()
    return {"crop_size": int(transform.crop_size[0]),
            "preprocessing": {"mean": [float(v) for v in transform.mean],
                              "std": [float(v) for v in transform.std],
                              "channel_order": "RGB", "value_scale": 1.0}}


def torchvision_model(arch: str, num_classes: int = 1000, init: bool = True) -> nn.Module:
    """torchvision's own module for `arch` (no weights), configured as its releases are:
    GoogLeNet and Inception v3 with ``transform_input`` and without aux branches."""
    from torchvision.models import get_model

    name, family = check_arch(arch)
    kwargs: dict = {"num_classes": num_classes}
    if family.aux:
        kwargs.update(aux_logits=False, transform_input=True, init_weights=init)
    return get_model(name, weights=None, **kwargs)


class TorchvisionNet(nn.Module):
    """A torchvision CNN run densely (implements `vggfeat.models.backbone.Backbone`).

    Args:
        net: torchvision's module (its children are adopted under their names).
        arch: torchvision's name, e.g. "resnet50".
    """

    def __init__(self, net: nn.Module, arch: str):
        super().__init__()
        self.arch, self.family = check_arch(arch)
        for name, child in net.named_children():
            if child is not None:  # not add_module: MNASNet's `layers` is our `layers` too
                self._modules[name] = child
        # state dicts carry the module's version: MNASNet's v2 layout must say so, or
        # torchvision's MNASNet would rebuild its stem as v1 when loading ours
        self._version = getattr(net, "_version", 1)
        self.transform_input = bool(getattr(net, "transform_input", False))
        self._transform = getattr(net, "_transform_input", None)
        self.stride = self.family.stride
        self.default_layer = self.family.default_layer
        self._layer_tuple = self._layer_names()
        self.meta: dict = {}
        self._sizes: dict[int, int] = {}
        self._dims: dict[str, int] = {}

    @property
    def layers(self) -> tuple[str, ...]:
        """The layer names `dense` accepts, trunk first (torchvision's module names)."""
        return self._layer_tuple

    def module_at(self, name: str) -> nn.Module:
        """torchvision's submodule `name` ("layer4", "features.6"); looked up in the
        children table, since MNASNet's child "layers" is shadowed by `layers` above."""
        head, _, rest = name.partition(".")
        module = self._modules[head]
        return module.get_submodule(rest) if rest else module

    def _layer_names(self) -> tuple[str, ...]:
        names = []
        for stage in self.family.stages:
            if stage == "transform_input":
                continue
            names.append(stage)
            module = self._modules.get(stage)
            if isinstance(module, nn.Sequential):
                names += [f"{stage}.{child}" for child, _ in module.named_children()]
        if self.family.name == "AlexNet":
            names += list(ALEXNET_HEAD)
        return tuple(names)

    # -- the Backbone interface ------------------------------------------------------

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's last map (AlexNet: ``features``; otherwise the default layer)."""
        return self.dense_layers(x, [self.family.stages[-1]])[self.family.stages[-1]]

    def forward_head(self, trunk_map: torch.Tensor, layer: str | None = None) -> torch.Tensor:
        """AlexNet: fc6..`layer` at every 6x6 window of ``features`` (VGG's dense head).
        Other families' classifiers pool first, so their head map is the trunk's map."""
        if self.family.name != "AlexNet":
            return trunk_map
        return self._alexnet_head(trunk_map, layer or self.default_layer)

    def dense(self, x: torch.Tensor, layer: str | None = None) -> torch.Tensor:
        """The (N, C, h, w) map of a named layer over whole images (default layer if None)."""
        layer = layer or self.default_layer
        return self.dense_layers(x, [layer])[layer]

    def dense_layers(self, x: torch.Tensor, layers) -> dict[str, torch.Tensor]:
        """Maps of several named layers from one pass over `x`, by name."""
        layers = list(layers)
        self.check_layers(layers)
        trunk_names = [name for name in layers if name not in ALEXNET_HEAD
                       or self.family.name != "AlexNet"]
        head_names = [name for name in layers if name not in trunk_names]
        wanted_stages = {name.split(".")[0] for name in trunk_names}
        if head_names:
            wanted_stages.add(self.family.stages[-1])
        maps = self._run_trunk(x, trunk_names, wanted_stages, bool(head_names))
        if head_names:
            maps.update(self._alexnet_maps(maps.pop("_trunk"), head_names))
        return {name: maps[name] for name in layers}

    def check_layers(self, layers) -> None:
        unknown = [name for name in layers if name not in self.layers]
        if unknown:
            raise ValueError(f"layer {unknown[0]!r} is not a layer of {self.arch}; choose one "
                             f"of: {', '.join(self.layers)}")

    def dense_size(self, size: int) -> int:
        """Side of the default layer's map for an input side (shapes only, no compute)."""
        if size not in self._sizes:
            self._sizes[size] = int(self._shape(size, self.default_layer)[-1])
        return self._sizes[size]

    def feature_dim(self, layer: str | None = None) -> int:
        """Channels of a named layer's map (shapes only, no compute)."""
        layer = layer or self.default_layer
        if layer not in self._dims:
            self._dims[layer] = int(self._shape(self.meta.get("crop_size", 224), layer)[1])
        return self._dims[layer]

    def _shape(self, side: int, layer: str) -> torch.Size:
        """The shape of `layer`'s map for a side x side image, run on fake tensors (torch's
        FakeTensorMode: shapes propagate, nothing is computed or allocated)."""
        from torch._subclasses.fake_tensor import FakeTensorMode

        with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True):
            return self.dense(torch.empty(1, 3, side, side), layer).shape

    @property
    def pool_rounding(self) -> str:
        return "floor"  # torch's pooling, as torchvision's weights were trained with

    def forward(self, x: torch.Tensor, layer: str | None = None) -> torch.Tensor:
        """Logits (N, num_classes) as torchvision's forward computes them (the default
        map pooled over positions, then the classifier); or a named layer's map."""
        if layer is not None:
            return self.dense(x, layer)
        if self.family.name == "AlexNet":
            return self.dense(x, "fc8").mean((2, 3))
        trunk_map = self.dense(x, self.default_layer)
        if self.family.head_on_map:  # SqueezeNet: conv classifier, then global pooling
            return torch.flatten(self.classifier(trunk_map), 1)
        pooled = trunk_map.mean((2, 3), keepdim=self.family.keep_dims)
        for name in self.family.head:
            pooled = self._modules[name](pooled)
        return pooled

    # -- inside ---------------------------------------------------------------------

    def _run_trunk(self, x, names, wanted_stages, keep_trunk) -> dict:
        """Run stages up to the deepest one needed, keeping the maps of `names`."""
        maps: dict[str, torch.Tensor] = {}
        nested = [name for name in names if "." in name]
        hooks = [self.module_at(name).register_forward_hook(_keeper(maps, name))
                 for name in nested]
        stages = self.family.stages
        last = max(stages.index(stage) for stage in wanted_stages)
        try:
            for position, stage in enumerate(stages[:last + 1]):
                x = self._step(stage, x)
                if stage in names or (keep_trunk and position == len(stages) - 1):
                    following = stages[position + 1] if position + 1 < last + 1 else None
                    # an in-place ReLU next would change a kept map: keep a copy then
                    inplace = following is not None and getattr(
                        self._modules.get(following), "inplace", False)
                    kept = x.clone() if inplace else x
                    if stage in names:
                        maps[stage] = kept
                    if keep_trunk and position == len(stages) - 1:
                        maps["_trunk"] = kept
        finally:
            for hook in hooks:
                hook.remove()
        return maps

    def _step(self, stage: str, x: torch.Tensor) -> torch.Tensor:
        if stage == "transform_input":
            return self._transform(x) if self.transform_input else x
        if stage == "features_relu":
            return F.relu(x)
        return self._modules[stage](x)

    def _alexnet_maps(self, features: torch.Tensor, names) -> dict:
        deepest = max(names, key=ALEXNET_HEAD.index)
        n, _, h, w = features.shape
        if h < ALEXNET_WINDOW or w < ALEXNET_WINDOW:
            raise ValueError(f"AlexNet's fc6 needs a {ALEXNET_WINDOW}x{ALEXNET_WINDOW} map of "
                             f"`features`; got {h}x{w}: rescale the image to at least "
                             f"{self.meta.get('crop_size', 224)} pixels")
        drop6, fc6, relu6, drop7, fc7, relu7, fc8 = self.classifier
        windows = F.unfold(features, ALEXNET_WINDOW).transpose(1, 2).reshape(-1, fc6.in_features)
        rows = {"fc6": relu6(fc6(drop6(windows)))}
        if deepest != "fc6":
            rows["fc7"] = relu7(fc7(drop7(rows["fc6"])))
        if deepest == "fc8":
            rows["fc8"] = fc8(rows["fc7"])
        side = (h - ALEXNET_WINDOW + 1, w - ALEXNET_WINDOW + 1)
        return {name: rows[name].view(n, *side, -1).permute(0, 3, 1, 2) for name in names}

    def _alexnet_head(self, features: torch.Tensor, layer: str) -> torch.Tensor:
        return self._alexnet_maps(features, [layer])[layer]


def _keeper(maps: dict, name: str):
    def hook(module, inputs, output):
        maps[name] = output.clone()  # a later in-place op must not change the kept map
    return hook


def build_torchvision(arch: str, *, num_classes: int = 1000, init: bool = True,
                      entry=None) -> TorchvisionNet:
    """A torchvision CNN as a vggfeat backbone, in eval mode.

    Args:
        arch: torchvision's name ("resnet18", "convnext_tiny", ...).
        num_classes: outputs of the classifier.
        init: torchvision's random initialisation; False for a net whose weights are
            loaded next (build it under ``torch.device("meta")``).
        entry: the torchvision weights entry whose crop and preprocessing to record
            (default: the architecture's DEFAULT entry).

    Example:
        >>> net = build_torchvision("resnet18")
        >>> net.dense(torch.zeros(1, 3, 224, 288), "layer4").shape
        torch.Size([1, 512, 7, 9])
    """
    name, _ = check_arch(arch)
    model = TorchvisionNet(torchvision_model(name, num_classes, init), name)
    entry = entry or weights_entry(name)
    model.meta = {"arch": name, "family": model.family.name, "num_classes": num_classes,
                  **entry_meta(entry), "pool_rounding": "floor",
                  "weights_release": entry.url.rsplit("/", 1)[-1], "source": None,
                  "sha256": None}
    return model.eval()


SUPPORTED = tuple(f.name for f in FAMILIES)
