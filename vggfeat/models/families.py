"""torchvision's image-classification CNN families, as data (no torch import).

Each family says which of torchvision's modules form the trunk that runs densely over a
whole image, in the order its ``forward`` calls them, which map its classifier receives
(the default descriptor layer: the paper's "penultimate" choice, Appendix B, read as "what
the classifier pools and receives"), and how that classifier is applied to the pooled map.
Names are torchvision's module names, so ``--layer layer3`` means torchvision's
``model.layer3``. `vggfeat.models.torchvision_nets` builds the nets from this table.

Two stage names are steps, not modules: ``transform_input`` (GoogLeNet and Inception v3
re-normalise their input as torchvision's ``_transform_input`` does when its released
weights are used) and ``features_relu`` (DenseNet's ``F.relu`` on ``features``, which is
what its classifier pools).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """One torchvision family: its arch-name prefixes, trunk stages and classifier."""

    name: str
    prefixes: tuple[str, ...]
    stages: tuple[str, ...]  # trunk steps in forward order; the last is the default layer
    head: tuple[str, ...]  # modules applied to the pooled map to give the logits
    head_on_map: bool = False  # SqueezeNet's classifier is a 1x1 convolution on the map
    keep_dims: bool = False  # ConvNeXt's classifier takes (N, C, 1, 1) (LayerNorm2d first)
    stride: int = 32  # input pixels between neighbouring positions of the default map
    aux: tuple[str, ...] = ()  # training-only branches: their release tensors are dropped
    default: str | None = None  # the default layer when it is not the trunk's last stage

    @property
    def default_layer(self) -> str:
        return self.default or self.stages[-1]


_RESNET = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
_GOOGLENET = ("transform_input", "conv1", "maxpool1", "conv2", "conv3", "maxpool2",
              "inception3a", "inception3b", "maxpool3", "inception4a", "inception4b",
              "inception4c", "inception4d", "inception4e", "maxpool4", "inception5a",
              "inception5b")
_INCEPTION = ("transform_input", "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1",
              "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d",
              "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b",
              "Mixed_7c")

FAMILIES: tuple[Family, ...] = (
    Family("ResNet", ("resnet",), _RESNET, ("fc",)),
    Family("ResNeXt", ("resnext",), _RESNET, ("fc",)),
    Family("Wide ResNet", ("wide_resnet",), _RESNET, ("fc",)),
    Family("RegNet", ("regnet_",), ("stem", "trunk_output"), ("fc",)),
    Family("ConvNeXt", ("convnext_",), ("features",), ("classifier",), keep_dims=True),
    Family("EfficientNet", ("efficientnet_",), ("features",), ("classifier",)),
    Family("MobileNet", ("mobilenet_v2", "mobilenet_v3_"), ("features",), ("classifier",)),
    Family("DenseNet", ("densenet",), ("features", "features_relu"), ("classifier",)),
    Family("ShuffleNet v2", ("shufflenet_v2_",),
           ("conv1", "maxpool", "stage2", "stage3", "stage4", "conv5"), ("fc",)),
    Family("MNASNet", ("mnasnet",), ("layers",), ("classifier",)),
    Family("SqueezeNet", ("squeezenet",), ("features",), ("classifier",), head_on_map=True,
           stride=16),
    # AlexNet: fc6 and fc7 run densely as VGG's do (fc6 a 6x6 window of `features`), so the
    # default is fc7, the layer the paper takes from VGG; `features` is pool5's map.
    Family("AlexNet", ("alexnet",), ("features",), ("fc6", "fc7", "fc8"), default="fc7"),
    Family("GoogLeNet", ("googlenet",), _GOOGLENET, ("dropout", "fc"), aux=("aux1", "aux2")),
    Family("Inception v3", ("inception_v3",), _INCEPTION, ("dropout", "fc"), aux=("AuxLogits",)),
)
ALEXNET_HEAD = ("fc6", "fc7", "fc8")
# Families that need a fixed token grid or windowed attention: no dense evaluation.
REFUSED_PREFIXES = ("vit_", "swin_", "maxvit_")


def family_of(arch: str) -> Family | None:
    """The family of a torchvision architecture name ("resnet50"), or None."""
    name = arch.lower().replace("-", "_")
    for family in FAMILIES:
        if any(name.startswith(prefix) for prefix in family.prefixes):
            return family
    return None


def is_refused(arch: str) -> bool:
    """Whether `arch` is a torchvision transformer (no fully convolutional evaluation)."""
    return arch.lower().replace("-", "_").startswith(REFUSED_PREFIXES)


def family_names() -> str:
    """The supported families as one readable list, for messages and `vggfeat info`."""
    return ", ".join(f"{f.name} ({'/'.join(p.rstrip('_') for p in f.prefixes)}*)"
                     for f in FAMILIES)


def default_layer(arch: str | None) -> str:
    """The descriptor layer of `arch` unless another is asked for; "fc7" for VGG."""
    family = family_of(arch) if arch else None
    return "fc7" if family is None else family.default_layer
