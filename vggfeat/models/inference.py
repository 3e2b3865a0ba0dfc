"""A torchvision CNN made ready for descriptors: batch norms folded, channels_last.

In eval mode a BatchNorm2d right after a Conv2d is an affine map of the conv's output, so
it can be folded into the conv's weights and bias (`torch.nn.utils.fusion`), which saves a
pass over every map. With the maps in channels_last (NHWC) oneDNN's CPU convolutions also
run faster. Measured on the 2-core CPU (AVX-512), one image and its flip at 224x298,
`benchmarks/RESULTS.md`: ResNet-50 1.45x, EfficientNet-B0 1.4x, DenseNet-121 1.33x,
MobileNet v3 1.34x, ConvNeXt-Tiny (no batch norm) 1.03x; relative difference to a float64
computation 2e-7..2e-6 before and after. VGG has its own packed CPU path (`cpu`).
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def inference_copy(model: nn.Module, device: torch.device) -> nn.Module:
    """A copy of `model` on `device` in eval mode, batch norms folded, channels_last (the
    caller's net is left as it was)."""
    net = copy.deepcopy(model).to(device).eval()
    fold_batch_norms(net, keep=set(getattr(model, "layers", ())))
    return net.to(memory_format=torch.channels_last)


def fold_batch_norms(net: nn.Module, keep=frozenset()) -> int:
    """Fold each eval-mode BatchNorm2d whose input is a Conv2d's output (and nothing else
    reads that output) into the conv, in place; returns how many were folded.

    The pairs are found on each stage's traced graph (`torch.fx`), so a conv and its norm
    that are attributes of a block (ResNet's conv1/bn1 in a BasicBlock) fold as well as
    those in a Sequential. Module names stay as they were; a conv whose own map can be read
    as a layer (its name in `keep`, e.g. DenseNet's features.conv0) keeps its norm, so
    every named layer gives the same map as before.
    """
    from torch.fx import symbolic_trace
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for stage_name, stage in net.named_children():
        try:
            graph = symbolic_trace(stage).graph
        except Exception:  # noqa: BLE001 - a stage fx cannot trace keeps its batch norms
            continue
        for node in graph.nodes:
            source = node.args[0] if node.op == "call_module" and node.args else None
            if getattr(source, "op", None) != "call_module" or len(source.users) != 1:
                continue
            if f"{stage_name}.{source.target}" in keep:
                continue
            conv, norm = stage.get_submodule(source.target), stage.get_submodule(node.target)
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) \
                    and norm.track_running_stats:
                _replace(stage, source.target, fuse_conv_bn_eval(conv.eval(), norm.eval()))
                _replace(stage, node.target, nn.Identity())
                folded += 1
    return folded


def _replace(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)
