"""A faster `model.dense` for fp32 on the CPU; the same numbers (tested against float64).

Besides the convolutions' arithmetic, eager dense evaluation on the CPU pays for layouts:
every eager oneDNN convolution reorders its weights into oneDNN's blocked layout on every
call, and its NCHW input and output too. The ways to run it, measured side by side by
``benchmarks/trunk_paths.py`` (results in ``benchmarks/RESULTS.md``):

- ``"packed"`` (the default on AVX-512): the trunk in channels_last (NHWC, oneDNN's native
  activation layout, so no activation reorders), each convolution's weights reordered into
  oneDNN's layout once, here, and each convolution run with its ReLU fused by
  ``torch.ops.mkldnn._convolution_pointwise`` -- the operator that ``torch.compile``'s CPU
  backend (Inductor, with freezing) emits for convolutions. Eager PyTorch: no tracing, no
  compilation, ~0.1 s of set-up for VGG16; pools and any other layer (LRN, batch norm) are
  the model's own modules, so their settings (max-pool ``ceil_mode`` for Caffe weights)
  are the model's.
- ``"blocked"``: the trunk in oneDNN's own blocked tensors (``Tensor.to_mkldnn``: nChw8c on
  AVX2, nChw16c on AVX-512) from the first layer to pool5, each convolution's weights
  reordered once, ReLU and max pooling as oneDNN operators on those tensors; any other
  layer runs on a dense copy. On AVX2 oneDNN's channels_last kernels are slow for the deep
  layers (16-50 GFLOP/s on one core, where its blocked kernels reach 90-100), so this is
  the default wherever ATen's vector code is below AVX-512; on AVX-512 "packed" is ~8%
  faster.
- ``"torchscript"``: a frozen TorchScript trace (``optimize_for_inference``), the earlier
  fast path. TorchScript is deprecated; kept only as a side-by-side reference and a
  fallback that must be asked for (``VGGFEAT_CPU_TRUNK=torchscript``).
- ``"eager"``: ``model.features`` itself.

The head (fc6, fc7) is always `model.forward_head`: matrix products over pool5's windows.
``VGGFEAT_CPU_TRUNK`` (packed / blocked / torchscript / eager) overrides the choice.

Cores: a batch is split into one part per core, each part run on its own thread with one
intra-op thread, instead of every layer split across the cores by oneDNN. A convolution on
one core runs at a 4096^2 matrix product's rate or better; splitting each layer over two
cores took 4-6% longer on an idle machine (``benchmarks/trunk_paths.py``).
"""
from __future__ import annotations

import concurrent.futures
import os
import warnings

import torch
from torch import nn
from torch.nn import functional as F

from vggfeat.utils.threads import torch_threads

BACKENDS = ("packed", "blocked", "torchscript", "eager")


def default_backend() -> str:
    """"packed" where ATen runs AVX-512 code, "blocked" below (see the module notes)."""
    return "packed" if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else "blocked"


def packed_ops_available() -> bool:
    """Whether this PyTorch has the oneDNN operators the packed trunk calls."""
    ops = getattr(torch.ops, "mkldnn", None)
    return (torch.backends.mkldnn.is_available() and ops is not None
            and hasattr(ops, "_convolution_pointwise")
            and hasattr(ops, "_reorder_convolution_weight"))


def blocked_ops_available() -> bool:
    """Whether this PyTorch has the oneDNN operators the blocked trunk calls."""
    return (torch.backends.mkldnn.is_available()
            and hasattr(torch._C._nn, "mkldnn_reorder_conv2d_weight")
            and hasattr(torch, "mkldnn_convolution"))


class PackedTrunk(nn.Module):
    """``model.features`` with pre-packed oneDNN convolutions, ReLU fused, channels_last.

    The packed weights are a copy made here: build it after the weights are final (it is
    for inference only). Layers other than Conv2d(+ReLU) run as the model's own modules.

    Args:
        features: the trunk, an ``nn.Sequential`` (eval mode, fp32, on the CPU).
    """

    def __init__(self, features: nn.Sequential):
        super().__init__()
        layers = list(features)
        self.steps: list = []
        k = 0
        while k < len(layers):
            layer = layers[k]
            if isinstance(layer, nn.Conv2d) and layer.padding_mode == "zeros":
                fuse = k + 1 < len(layers) and isinstance(layers[k + 1], nn.ReLU)
                self.steps.append(_PackedConv(layer, "relu" if fuse else "none"))
                k += 2 if fuse else 1
            else:
                self.steps.append(layer)  # pools keep their own ceil_mode
                k += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        for step in self.steps:
            x = step(x)
        return x


class _PackedConv:
    """One convolution with its weights reordered once for oneDNN (plain callable: the
    packed tensor is an opaque oneDNN tensor that ``nn.Module`` machinery must not touch)."""

    def __init__(self, conv: nn.Conv2d, activation: str):
        weight = conv.weight.detach().float()
        self.args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        self.weight = torch.ops.mkldnn._reorder_convolution_weight(weight, *self.args, None)
        self.bias = None if conv.bias is None else conv.bias.detach().float()
        self.activation = activation

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._convolution_pointwise(
            x, self.weight, self.bias, *self.args, self.activation, [], "")


class BlockedTrunk(nn.Module):
    """``model.features`` on oneDNN blocked tensors, convolution weights reordered once.

    Args:
        features: the trunk, an ``nn.Sequential`` (eval mode, fp32, on the CPU).
    """

    def __init__(self, features: nn.Sequential):
        super().__init__()
        self.steps = [_blocked_step(layer) for layer in features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous().to_mkldnn()
        for step in self.steps:
            x = step(x)
        return x.to_dense()


def _blocked_step(layer: nn.Module):
    if isinstance(layer, nn.Conv2d) and layer.padding_mode == "zeros":
        return _BlockedConv(layer)
    if isinstance(layer, nn.ReLU):
        return torch.relu_
    if isinstance(layer, nn.MaxPool2d):
        return lambda x: F.max_pool2d(x, layer.kernel_size, layer.stride, layer.padding,
                                      layer.dilation, ceil_mode=layer.ceil_mode)
    return lambda x: layer(x.to_dense()).to_mkldnn()  # LRN, batch norm: on a dense copy


class _BlockedConv:
    """One convolution with weights and bias as oneDNN blocked tensors, made once."""

    def __init__(self, conv: nn.Conv2d):
        self.args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        weight = conv.weight.detach().float().contiguous().to_mkldnn()
        self.weight = torch._C._nn.mkldnn_reorder_conv2d_weight(weight, *self.args)
        bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
        self.bias = bias.detach().float().to_mkldnn()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.mkldnn_convolution(x, self.weight, self.bias, *self.args)


def torchscript_trunk(features: nn.Sequential):
    """The deprecated reference: a frozen, inference-optimised TorchScript trace."""
    example = torch.zeros(1, 3, 32, 32)  # smallest input the trunk takes: tracing is cheap
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notices
        traced = torch.jit.trace(features.eval(), example, check_trace=False)
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced))


def build_trunk(features: nn.Sequential, backend: str = "packed"):
    """A callable equal to ``features`` (to float rounding) using `backend`."""
    if backend not in BACKENDS:
        raise ValueError(f"CPU trunk backend must be one of {BACKENDS}, got {backend!r} "
                         "(check VGGFEAT_CPU_TRUNK)")
    if backend == "packed" and not packed_ops_available():
        raise RuntimeError("this PyTorch has no oneDNN packed convolution operators")
    if backend == "blocked" and not blocked_ops_available():
        raise RuntimeError("this PyTorch has no oneDNN blocked-tensor convolution operators")
    if backend == "packed":
        return PackedTrunk(features)
    if backend == "blocked":
        return BlockedTrunk(features)
    if backend == "torchscript":
        return torchscript_trunk(features)
    return features


class CpuDense:
    """Callable ``(x, layer) -> map`` equal to ``model.dense(x, layer)``.

    Args:
        model: a backbone in eval mode on the CPU (its weights are shared, not copied,
            except for the trunk's packed copy).
        backend: "packed", "blocked", "torchscript" or "eager"; None reads
            ``VGGFEAT_CPU_TRUNK``, else `default_backend` (by the CPU's vector code).
        workers: threads a batch is split over, each with one intra-op thread; None: torch's
            intra-op thread count (``torch.get_num_threads()``), 1: no split (oneDNN
            splits each layer itself).
    """

    def __init__(self, model, backend: str | None = None, workers: int | None = None):
        self.backend = backend or os.environ.get("VGGFEAT_CPU_TRUNK") or default_backend()
        with torch.no_grad():
            self.trunk = build_trunk(model.features.eval(), self.backend)
        self.model = model
        self.workers = max(1, workers or torch.get_num_threads())
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def __call__(self, x: torch.Tensor, layer: str = "fc7") -> torch.Tensor:
        parts = min(self.workers, x.shape[0])
        if parts < 2:
            return self._dense(x, layer)
        grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

        def run(part):  # grad and inference modes are per thread: the caller's apply
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                return self._dense(part, layer)

        with torch_threads(1):
            if self._pool is None:  # its threads start while one intra-op thread is set
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    self.workers, thread_name_prefix="vggfeat-dense")
            maps = list(self._pool.map(run, x.tensor_split(parts)))
        return torch.cat(maps)

    def _dense(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        pool5 = self.trunk(x)
        return pool5 if layer == "pool5" else self.model.forward_head(pool5, layer)


def fast_dense(model, backend: str | None = None):
    """`CpuDense` of `model`, or ``model.dense`` when the fast trunk cannot be built."""
    try:
        return CpuDense(model, backend)
    except ValueError:
        raise  # a misspelt backend is the user's to fix, not to hide
    except Exception as error:  # any other failure: the eager path is always correct
        warnings.warn(f"CPU fast path unavailable ({error}); using eager model.dense",
                      stacklevel=2)
        return model.dense
