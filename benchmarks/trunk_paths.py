"""CPU trunk paths side by side: eager, channels_last, TorchScript, packed, blocked, compile.

VGG16's trunk (conv1_1 .. pool5) on the small job's two batch shapes (a 400x300 image at
Q = 224 and 288, with its flip: batch 2), fp32. The packed and blocked paths run twice:
with oneDNN splitting every layer over the threads, and with the batch split into one part
per thread, each on one intra-op thread (what `CpuDense` does; its default is packed on
AVX-512, blocked below). ``ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
ATEN_CPU_CAPABILITY=avx2`` runs the AVX2 code paths on an AVX-512 CPU. For each path:
set-up time (tracing, packing or compiling), the first call, and the best steady call in
wall time and in this process's CPU time (CPU time is the figure to compare on a machine
shared with others: with one thread it barely moves with the load, where wall time
doubles).

    python benchmarks/trunk_paths.py --threads 1
    python benchmarks/trunk_paths.py --threads 2 --compile   # adds torch.compile (slow set-up)

``--compile`` uses Inductor with freezing (weights constant-folded and pre-packed) and the
persistent on-disk caches (``TORCHINDUCTOR_CACHE_DIR``): run it twice to see the set-up
cost of a warm cache. Each new input shape is a recompilation (``dynamic=False``), and a
dataset has many shapes: the set-up column is per shape.
"""
from __future__ import annotations

import argparse
import copy
import os
import time
import warnings

import torch

from vggfeat.models import build_backbone
from vggfeat.models.cpu import BlockedTrunk, CpuDense, PackedTrunk, torchscript_trunk


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vgg16")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--shapes", default="224x298,288x384", help="HxW of the batches")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--pool-rounding", default="ceil", choices=("floor", "ceil"))
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    return parser.parse_args()


def compiled_trunk(features):
    import torch._inductor.config as inductor

    inductor.freezing = True  # constant weights: folded and pre-packed for oneDNN
    return torch.compile(copy.deepcopy(features).to(memory_format=torch.channels_last),
                         dynamic=False)


def builders(model, with_compile: bool):
    features = model.features
    channels_last = copy.deepcopy(features).to(memory_format=torch.channels_last)
    paths = {
        "eager NCHW": lambda: features,
        "eager channels_last": lambda: (
            lambda x: channels_last(x.contiguous(memory_format=torch.channels_last))),
        "TorchScript (deprecated)": lambda: torchscript_trunk(features),
        "packed oneDNN, each layer split over the threads": lambda: PackedTrunk(features),
        "blocked oneDNN tensors, each layer split over the threads": lambda: BlockedTrunk(
            features),
        "packed oneDNN, the batch split over the threads": lambda: (
            lambda x, dense=CpuDense(model, "packed"): dense(x, "pool5")),
        "blocked oneDNN tensors, the batch split over the threads": lambda: (
            lambda x, dense=CpuDense(model, "blocked"): dense(x, "pool5")),
    }
    if with_compile:
        paths["torch.compile (Inductor, freezing)"] = lambda: compiled_trunk(features)
    return paths


def clock():
    return time.perf_counter(), time.process_time()


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_backbone(args.arch, width=args.width, init="xavier",
                           pool_rounding=args.pool_rounding).eval()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    inputs = [torch.rand(args.batch, 3, h, w) for h, w in shapes]
    print(f"{args.arch} width {args.width}, batches {args.batch} x {args.shapes}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, load average "
          f"{os.getloadavg()[0]:.1f}")
    print("| path | set-up s | first call s | best call wall s | best call CPU s | "
          "CPU s vs eager | max rel. diff vs eager |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    reference, eager_cpu = None, None
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, build in builders(model, args.compile).items():
            start = clock()
            trunk = build()
            setup = clock()[0] - start[0]
            start = clock()
            outs = [trunk(x) for x in inputs]  # first call per shape (compile: compiles)
            first = clock()[0] - start[0]
            wall = cpu = float("inf")
            for _ in range(args.repeats):
                start = clock()
                for x in inputs:
                    trunk(x)
                end = clock()
                wall, cpu = min(wall, end[0] - start[0]), min(cpu, end[1] - start[1])
            if reference is None:
                reference, eager_cpu = outs, cpu
            diff = max(float((o - r).abs().max() / r.abs().max())
                       for o, r in zip(outs, reference, strict=True))
            print(f"| {name} | {setup:.2f} | {first:.2f} | {wall:.3f} | {cpu:.3f} | "
                  f"{eager_cpu / cpu:.2f}x | {diff:.1e} |", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
