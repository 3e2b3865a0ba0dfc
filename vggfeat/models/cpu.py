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

The head (fc6, fc7) is `model.forward_head` in fp32: matrix products over pool5's windows.
``VGGFEAT_CPU_TRUNK`` (packed / blocked / torchscript / eager) overrides the choice.

bf16 (``precision="bf16"``, on CPUs with bf16 instructions: see `vggfeat.models.cpu_bf16`):
the "packed" trunk with its weights converted to bf16 once, and the head as packed
convolutions too (`PackedHead`: fc6 a k x k convolution over pool5, fc7 and fc8 1 x 1), so
the whole net runs in bf16 channels_last with no per-call reorder. oneDNN accumulates bf16
convolutions in fp32 and rounds each layer's output to bf16 ("Data types", oneDNN's
developer guide); biases stay fp32. The map handed back is fp32: the descriptor's pooling,
flip-averaging and storage are fp32. A batch norm after a convolution is folded into its
weights in fp32 before they are rounded to bf16 (``torch.nn.utils.fusion``: one rounding
less, and no pass over the map); other layers than convolutions, ReLU and max pooling
(LRN, an unfoldable batch norm) run in fp32 on a copy. fp32 folds nothing: its numbers stay
those of the model's own modules. ``VGGFEAT_CPU_TRUNK=eager`` turns this off too
(the engine then runs bf16 under autocast: the reference the benchmarks compare with).

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
from torch.nn.utils.fusion import fuse_conv_bn_eval

from vggfeat.utils.threads import torch_threads

BACKENDS = ("packed", "blocked", "torchscript", "eager")
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


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
        dtype: what the convolutions compute in: float32, or bfloat16 (weights converted
            here, once; the input converted on entry, the output left in bf16).
    """

    def __init__(self, features: nn.Sequential, dtype: torch.dtype = torch.float32):
        super().__init__()
        layers = list(features)
        self.dtype = dtype
        self.steps: list = []
        k = 0
        while k < len(layers):
            layer = layers[k]
            if isinstance(layer, nn.Conv2d) and layer.padding_mode == "zeros":
                if dtype != torch.float32 and _batch_norm_at(layers, k + 1):
                    layer = fuse_conv_bn_eval(layer.eval(), layers[k + 1].eval())  # a copy
                    k += 1
                fuse = k + 1 < len(layers) and isinstance(layers[k + 1], nn.ReLU)
                self.steps.append(_PackedConv(layer, "relu" if fuse else "none", dtype))
                k += 2 if fuse else 1
            else:  # pools keep their own ceil_mode
                self.steps.append(_in_fp32(layer) if _needs_fp32(layer, dtype) else layer)
                k += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
        for step in self.steps:
            x = step(x)
        return x


class _PackedConv:
    """One convolution with its weights reordered once for oneDNN (plain callable: the
    packed tensor is an opaque oneDNN tensor that ``nn.Module`` machinery must not touch)."""

    def __init__(self, conv: nn.Conv2d, activation: str, dtype: torch.dtype = torch.float32):
        self.args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        self._pack(conv.weight, conv.bias, activation, dtype)

    @classmethod
    def of_linear(cls, fc: nn.Linear, kernel: int, activation: str, dtype: torch.dtype):
        """A Linear over k x k windows of C channels as the equivalent k x k convolution
        (the weight read in (channel, row, column) order, as `VGG.forward_head` reads it)."""
        packed = cls.__new__(cls)
        packed.args = ([0, 0], [1, 1], [1, 1], 1)
        channels = fc.in_features // (kernel * kernel)
        weight = fc.weight.view(fc.out_features, channels, kernel, kernel)
        packed._pack(weight, fc.bias, activation, dtype)
        return packed

    def _pack(self, weight, bias, activation: str, dtype: torch.dtype) -> None:
        weight = weight.detach().to(dtype)
        self.weight = torch.ops.mkldnn._reorder_convolution_weight(weight, *self.args, None)
        self.bias = None if bias is None else bias.detach().float()
        self.activation = activation

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._convolution_pointwise(
            x, self.weight, self.bias, *self.args, self.activation, [], "")


def _batch_norm_at(layers: list, k: int) -> bool:
    """Whether layers[k] is a batch norm with running statistics (foldable in eval mode)."""
    return (k < len(layers) and isinstance(layers[k], nn.BatchNorm2d)
            and layers[k].track_running_stats)


def _needs_fp32(layer: nn.Module, dtype: torch.dtype) -> bool:
    """In bf16, whether `layer` runs on an fp32 copy: anything but ReLU and max pooling
    (which are exact in bf16) -- LRN and batch norm keep their fp32 arithmetic."""
    return dtype != torch.float32 and not isinstance(layer, nn.ReLU | nn.MaxPool2d)


def _in_fp32(layer: nn.Module):
    return lambda x: layer(x.float()).to(x.dtype).contiguous(memory_format=torch.channels_last)


class PackedHead:
    """fc6..fc8 as pre-packed oneDNN convolutions over pool5 (dense evaluation, paper
    Section 3.2): fc6 a k x k convolution, fc7 and fc8 1 x 1; ReLU fused.

    Args:
        model: the VGG (its ``classifier`` and ``kernel``).
        dtype: what the convolutions compute in (weights converted here, once).
    """

    def __init__(self, model, dtype: torch.dtype = torch.bfloat16):
        fc6, _, _, fc7, _, _, fc8 = model.classifier
        self.kernel = model.kernel
        self.convs = {name: _PackedConv.of_linear(fc, kernel, activation, dtype)
                      for name, fc, kernel, activation in (
                          ("fc6", fc6, self.kernel, "relu"), ("fc7", fc7, 1, "relu"),
                          ("fc8", fc8, 1, "none"))}

    def __call__(self, pool5: torch.Tensor, layer: str = "fc8") -> torch.Tensor:
        h, w = pool5.shape[-2:]
        if h < self.kernel or w < self.kernel:
            raise ValueError(f"a pool5 map of {h} x {w} is smaller than fc6's {self.kernel} x "
                             f"{self.kernel} window; rescale the image to at least the crop size")
        x = self.convs["fc6"](pool5)
        for name in ("fc7", "fc8")[:("fc6", "fc7", "fc8").index(layer)]:
            x = self.convs[name](x)
        return x


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


def build_trunk(features: nn.Sequential, backend: str = "packed",
                dtype: torch.dtype = torch.float32):
    """A callable equal to ``features`` (to float rounding) using `backend`; bf16 (`dtype`)
    is the "packed" backend's only."""
    if backend not in BACKENDS:
        raise ValueError(f"CPU trunk backend must be one of {BACKENDS}, got {backend!r} "
                         "(check VGGFEAT_CPU_TRUNK)")
    if backend == "packed" and not packed_ops_available():
        raise RuntimeError("this PyTorch has no oneDNN packed convolution operators")
    if dtype != torch.float32:
        if backend != "packed":
            raise RuntimeError(f"the {backend!r} CPU trunk computes in fp32 only")
        return PackedTrunk(features, dtype)
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
    """Callable ``(x, layer) -> map`` equal to ``model.dense(x, layer)`` (fp32), or its
    bf16 approximation (`precision` "bf16": trunk and head packed in bf16; map in fp32).

    Args:
        model: a backbone in eval mode on the CPU (its weights are shared, not copied,
            except for the trunk's packed copy).
        backend: "packed", "blocked", "torchscript" or "eager"; None reads
            ``VGGFEAT_CPU_TRUNK``, else `default_backend` (by the CPU's vector code).
        workers: threads a batch is split over, each with one intra-op thread; None: torch's
            intra-op thread count (``torch.get_num_threads()``), 1: no split (oneDNN
            splits each layer itself).
        precision: "fp32" (the same numbers as ``model.dense``) or "bf16" (always the
            "packed" backend, whatever `backend` and ``VGGFEAT_CPU_TRUNK`` say).
    """

    def __init__(self, model, backend: str | None = None, workers: int | None = None,
                 precision: str = "fp32"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
        dtype = PRECISIONS[precision]
        self.backend = ("packed" if dtype != torch.float32 else
                        backend or os.environ.get("VGGFEAT_CPU_TRUNK") or default_backend())
        with torch.no_grad():
            self.trunk = build_trunk(model.features.eval(), self.backend, dtype)
            self.head = (model.forward_head if dtype == torch.float32
                         else PackedHead(model.eval(), dtype))
        self.precision = precision
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
        return (pool5 if layer == "pool5" else self.head(pool5, layer)).float()


def fast_dense(model, backend: str | None = None, precision: str = "fp32"):
    """`CpuDense` of `model`, or ``model.dense`` when the fast trunk cannot be built (in
    bf16 the caller's autocast then applies, as before this path existed)."""
    try:
        return CpuDense(model, backend, precision=precision)
    except ValueError:
        raise  # a misspelt backend is the user's to fix, not to hide
    except Exception as error:  # any other failure: the eager path is always correct
        warnings.warn(f"CPU fast path unavailable ({error}); using eager model.dense",
                      stacklevel=2)
        return model.dense
