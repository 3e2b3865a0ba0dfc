"""What the engine, the trainer and localisation ask of a backbone.

Dense evaluation (paper Sec. 3.2) needs a net in two parts: a convolutional **trunk** that
maps a whole image of any size to a map, and a **head** that runs densely over that map
(VGG's fc6 as a k x k convolution, fc7 and fc8 as 1x1 ones). Everything above
`vggfeat.models` talks to a net through the members below and through its ``meta`` record,
never through a family's own modules (``features``, ``classifier``), so that another family
can be added as one file implementing `Backbone` and one line in `build_backbone`'s lookup.

``meta`` keys every backbone carries (written by the builder, saved in its weight file):

- ``arch``: the family's name for the configuration (e.g. "vgg16");
- ``crop_size``: the training crop side; the smallest input the head accepts;
- ``num_classes`` and, when known, ``classes``: the head's outputs;
- ``preprocessing``: the input normalisation (`vggfeat.models.preprocessing`);
- ``pool_rounding``: "floor" (torch) or "ceil" (Caffe), which decides dense map sizes;
- ``source`` and ``sha256``: where the weights came from.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Backbone(Protocol):
    """A net that runs densely over whole images. `vggfeat.models.vgg.VGG` is the one
    family today."""

    meta: dict
    layers: tuple[str, ...]  # the names `dense` accepts, trunk first
    stride: int  # input pixels between two neighbouring positions of the dense maps
    default_layer: str  # the descriptor's layer unless one is asked for (VGG: fc7)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk: normalised images (N, 3, H, W) -> its last map (N, C, h, w)."""

    def forward_head(self, trunk_map: torch.Tensor, layer: str) -> torch.Tensor:
        """The head applied at every position of the trunk's map, up to `layer`."""

    def dense(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        """Trunk then head: the map of a named layer over whole images."""

    def dense_layers(self, x: torch.Tensor, layers) -> dict[str, torch.Tensor]:
        """The maps of several named layers from one pass over `x`, by name."""

    def dense_size(self, size: int) -> int:
        """Side of the head's dense map for an input side (pooling rounding included)."""

    def feature_dim(self, layer: str) -> int:
        """Channels of a named layer's map."""

    @property
    def pool_rounding(self) -> str:
        """"floor" or "ceil": how the trunk's pools round odd sides."""


def check_backbone(model) -> Backbone:
    """`model`, if it offers the interface; else a TypeError naming what is missing."""
    members = ("meta", "layers", "stride", "default_layer", "forward_features",
               "forward_head", "dense", "dense_layers", "dense_size", "feature_dim",
               "pool_rounding")
    missing = [name for name in members if not hasattr(model, name)]
    if missing:
        raise TypeError(f"{type(model).__name__} is not a vggfeat backbone: it has no "
                        f"{', '.join(missing)}. Build one with vggfeat.build_backbone or "
                        "load one with vggfeat.load_backbone.")
    return model
