"""Forward time of a full-size backbone: a 224 crop (Linear-head path) and a whole image (dense).

Usage:
    python benchmarks/forward_speed.py [--arch vgg16] [--runs 7] [--device cpu]

Prints the median and spread of several timed runs after a warm-up, with the machine.
"""
import argparse
import os
import platform
import statistics
import time

import torch

from vggfeat.models import build_backbone


def time_forward(model, x, runs):
    with torch.inference_mode():
        model(x)  # warm-up: allocator, kernels, oneDNN primitive caches
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            model.dense(x, "fc8")
            if x.is_cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vgg16")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    model = build_backbone(args.arch).eval().to(args.device)
    cpu = platform.processor() or platform.machine()
    print(f"# {args.arch} forward, torch {torch.__version__}, {cpu}, "
          f"{os.cpu_count()} CPUs, {torch.get_num_threads()} threads, device {args.device}")
    for size in [(224, 224), (512, 683)]:
        x = torch.randn(1, 3, *size, device=args.device)
        times = time_forward(model, x, args.runs)
        print(f"{size[0]}x{size[1]}: median {statistics.median(times) * 1000:.0f} ms "
              f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}, {args.runs} runs)")


if __name__ == "__main__":
    main()
