"""Descriptor extraction speed: vggfeat's engine vs a plain per-image, per-scale loop.

Both compute the same descriptors (checked) from the same JPEG files and weights, decoding
and rescaling included. Prints images/s for both and the ratio, and the engine's arithmetic
rate (GFLOP/s, counted from the layer shapes) next to a large fp32 matrix product's.

    python benchmarks/extract_speed.py --arch vgg16 --scales 224,256 --images 4

Random (Glorot) weights unless --weights is given: speed does not depend on the values.
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vggfeat.data.transforms import scaled_size
from vggfeat.features.descriptor import DescriptorConfig
from vggfeat.features.engine import Engine
from vggfeat.models import build_backbone, load_backbone
from vggfeat.models.preprocessing import normalize


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vgg16")
    parser.add_argument("--weights", default=None, help="weights file or torchvision name")
    parser.add_argument("--width", type=float, default=1.0, help="channel multiplier")
    parser.add_argument("--scales", default="224,256")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", default="500x375", help="WxH of the landscape images; "
                        "every other image is portrait (VOC's two usual shapes)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--matmul", type=int, default=4096, help="side of the matrix product")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each method, "
                        "alternated; the best counts (fair on a machine shared with others)")
    return parser.parse_args()


def write_images(folder: Path, n: int, width: int, height: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for k in range(n):
        w, h = (width, height) if k % 2 == 0 else (height, width)
        ramp = np.linspace(0, 255, w)[None, :, None]
        pixels = ((rng.integers(0, 256, (h, w, 3)) + ramp) / 2).astype(np.uint8)
        paths.append(folder / f"{k:04d}.jpg")
        Image.fromarray(pixels).save(paths[-1], quality=90)
    return paths


def plain_loop(model, paths, config, device) -> np.ndarray:
    """The obvious code: one image, one scale, one view at a time, batch of one."""
    out = []
    with torch.no_grad():
        for path in paths:
            x = torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy())
            x = x.permute(2, 0, 1).float().div(255)[None]
            rows = []
            for q in config.scales:
                size = scaled_size(x.shape[2], x.shape[3], q)
                y = F.interpolate(x, size=size, mode="bilinear", antialias=True)
                y = normalize(y, config.preprocessing).to(device)
                views = [model.dense(v, config.layer).mean((2, 3)) for v in (y, y.flip(-1))]
                rows.append(((views[0] + views[1]) / 2)[0].cpu().numpy())
            out.append(np.stack(rows))
    return np.stack(out)


def engine_run(engine, paths) -> np.ndarray:
    results = {r.index: r.descriptor for r in engine.run(list(enumerate(paths)))}
    return np.stack([results[k] for k in range(len(paths))])


def dense_flops(model, height: int, width: int, layer: str) -> float:
    """Multiply-adds x 2 of one dense pass over an H x W image, from the layer shapes."""
    flops, h, w = 0.0, height, width
    for module in model.features:
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            flops += 2 * module.in_channels * module.out_channels * k * h * w
        elif isinstance(module, nn.MaxPool2d):
            h, w = h // 2, w // 2
    if layer == "pool5":
        return flops
    fc6, fc7 = model.classifier[0], model.classifier[3]
    positions = (h - model.kernel + 1) * (w - model.kernel + 1)
    flops += 2 * fc6.in_features * fc6.out_features * positions
    if layer == "fc7":
        flops += 2 * fc7.in_features * fc7.out_features * positions
    return flops


def total_flops(model, paths, config) -> float:
    total = 0.0
    for path in paths:
        with Image.open(path) as image:
            width, height = image.size
        for q in config.scales:
            h, w = scaled_size(height, width, q)
            total += dense_flops(model, h, w, config.layer) * (2 if config.flip else 1)
    return total


def matmul_rate(n: int, device) -> float:
    """Best GFLOP/s of an n x n fp32 matrix product over a few runs."""
    a, b = torch.rand(n, n, device=device), torch.rand(n, n, device=device)
    best = float("inf")
    for _ in range(4):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def load_average() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {torch.get_num_threads()} torch threads{gpu}, torch {torch.__version__}"


def main():
    args = parse_args()
    torch.manual_seed(0)
    if args.weights:
        model = load_backbone(args.weights, args.arch)
    else:
        model = build_backbone(args.arch, width=args.width, init="xavier").eval()
    scales = tuple(int(q) for q in args.scales.split(","))
    config = DescriptorConfig.from_model(model, scales)
    engine = Engine(model, config, batch_size=args.batch_size, workers=args.workers,
                    device=args.device)
    device = engine.device
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_images(Path(tmp), args.images, width, height)
        warm = paths[:2]  # both orientations: first-call kernel setup is not measured
        plain_loop(engine.model, warm, config, device)
        engine_run(engine, warm)
        plain_s = ours_s = float("inf")
        rate = 0.0
        for _ in range(args.repeats):  # alternated, so a busy spell hits all three alike
            plain, seconds = timed(plain_loop, engine.model, paths, config, device)
            plain_s = min(plain_s, seconds)
            ours, seconds = timed(engine_run, engine, paths)
            ours_s = min(ours_s, seconds)
            rate = max(rate, matmul_rate(args.matmul, device))
        flops = total_flops(model, paths, config)
    error = np.abs(ours - plain).max() / np.abs(plain).max()
    print(f"machine: {machine()}; load average {load_average()} at the end")
    print(f"config: {args.arch} width {args.width}, Q={scales}, flip, {config.layer}, "
          f"{args.images} JPEGs {width}x{height} (half portrait), batch {args.batch_size}, "
          f"workers {args.workers}, device {device}, best of {args.repeats}")
    print(f"descriptors agree: max relative difference {error:.2e}")
    print(f"plain loop : {args.images / plain_s:8.3f} images/s ({plain_s:.1f} s)")
    print(f"engine     : {args.images / ours_s:8.3f} images/s ({ours_s:.1f} s)")
    print(f"speed-up   : {plain_s / ours_s:8.2f}x")
    print(f"engine     : {flops / ours_s / 1e9:8.1f} GFLOP/s (decode and resize included; "
          f"{flops / args.images / 1e9:.1f} GFLOP per image)")
    print(f"matmul     : {rate:8.1f} GFLOP/s ({args.matmul}^2 fp32); engine at "
          f"{100 * flops / ours_s / 1e9 / rate:.0f}% of it")
    if error > 1e-4:
        raise SystemExit("the engine and the plain loop disagree")


if __name__ == "__main__":
    main()
