"""Training throughput (images/s): vggfeat's trainer step next to a plain torchvision loop.

Four figures in one run, same model size, batch, precision and memory format:
  vggfeat   synthetic  the trainer's own step (`train_step`) on fixed uint8 crops
  vggfeat   jpeg       the trainer's DataLoader (decode in workers, S rescale, crop, flip,
                       PCA shift on the device) feeding the same step
  torchvision synthetic  torchvision's VGG in a textbook loop on a fixed float batch
  torchvision jpeg       ImageFolder + Resize/RandomCrop/Flip/ToTensor/Normalize

Target on one H100 (issue 5): VGG16 at 224, bf16: >= 5000 images/s synthetic, and JPEG
within 80% of synthetic. The GPU run:

    python benchmarks/train_speed.py --device cuda --precision bf16 --channels-last \\
        --compile --batch-size 256 --workers 16 [--data /path/to/imagenet]

Without a GPU, run a narrow net on the CPU and say so (the numbers then measure
pipeline overhead, not the paper's model):

    python benchmarks/train_speed.py --device cpu --width 0.125 --crop-size 64 --scale 72 \\
        --batch-size 32 --steps 20 --workers 1 --threads 1
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import nn

from vggfeat.training.config import make_config
from vggfeat.training.loop import autocast_for, prepare_batch, train_step
from vggfeat.training.model import build_model
from vggfeat.training.trainer import build_data, classification_loss


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="vgg16")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--crop-size", type=int, default=224)
    p.add_argument("--scale", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=50, help="timed steps per figure")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compile etc.)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--threads", type=int, help="torch intra-op threads (CPU runs)")
    p.add_argument("--data", type=Path, help="ImageFolder DIR with train/ and val/; "
                   "default: generated JPEGs of ImageNet's typical size (500x375)")
    p.add_argument("--num-images", type=int, default=2048, help="generated JPEGs")
    p.add_argument("--image-size", type=int, nargs=2, default=(500, 375))
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p.parse_args()


def make_jpegs(root: Path, n: int, size, classes: int = 8) -> Path:
    """Smooth random colour images (JPEG-compressible like photos), n over `classes` folders."""
    rng = np.random.default_rng(0)
    w, h = size
    for split, count in (("train", n), ("val", classes)):
        for i in range(count):
            folder = root / split / f"c{i % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            small = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
            img = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
            img.save(folder / f"{i:06d}.JPEG", quality=90)
    return root


def loop(batches, step, device, warmup: int, steps: int, batch_size: int) -> float:
    """images/s over `steps` timed steps after `warmup` untimed ones."""
    it = iter(batches)
    for _ in range(warmup):
        step(*next(it))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(*next(it))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * batch_size / (time.perf_counter() - start)


def repeat(loader):
    while True:
        yield from loader


# -- vggfeat -----------------------------------------------------------------------------

def vggfeat_figure(args, device, data_dir: Path | None) -> float:
    cfg = make_config(data=data_dir, synthetic=data_dir is None, arch=args.arch, width=args.width,
                      crop_size=args.crop_size, scale=args.scale, batch_size=args.batch_size,
                      workers=args.workers, precision=args.precision, device=args.device,
                      channels_last=args.channels_last, out=tempfile.mkdtemp(),
                      num_classes=1000, synthetic_size=args.batch_size * (args.steps +
                                                                          args.warmup + 1))
    loader, _ = build_data(cfg, 0, 1, pin_memory=device.type == "cuda")
    loader.sampler.set_epoch(0)
    model = build_model(cfg, loader.dataset).to(device)  # the "sample" mean reads it
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    preprocessing = model.meta["preprocessing"]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
    net = torch.compile(model) if args.compile else model
    autocast = autocast_for(cfg, device)

    def step(images, labels, shifts, _bad):
        x = prepare_batch(images, shifts, preprocessing, device, args.channels_last)
        train_step(net, x, labels.to(device, non_blocking=True), optimizer, scaler, autocast,
                   classification_loss)

    return loop(repeat(loader), step, device, args.warmup, args.steps, args.batch_size)


# -- torchvision, a textbook loop --------------------------------------------------------

def torchvision_model(args) -> nn.Module:
    """torchvision's VGG; for a narrow net, its VGG class with narrowed layers and head."""
    if args.width == 1.0 and args.crop_size == 224:
        return getattr(torchvision.models, args.arch.replace("-", "_"))(num_classes=1000)
    from torchvision.models.vgg import VGG, cfgs, make_layers

    letter = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}[args.arch]
    cfg = [v if v == "M" else max(1, round(v * args.width)) for v in cfgs[letter]]
    model = VGG(make_layers(cfg), num_classes=1000)
    k, c, hidden = args.crop_size // 32, cfg[-2], max(1, round(4096 * args.width))
    model.avgpool = nn.AdaptiveAvgPool2d((k, k))
    model.classifier = nn.Sequential(nn.Linear(c * k * k, hidden), nn.ReLU(True), nn.Dropout(),
                                     nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(),
                                     nn.Linear(hidden, 1000))
    return model


def torchvision_figure(args, device, data_dir: Path | None) -> float:
    T = torchvision.transforms
    model = torchvision_model(args).to(device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    net = torch.compile(model) if args.compile else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
    dtype = torch.float16 if args.precision == "fp16" else torch.bfloat16
    if data_dir is None:
        x = torch.randn(args.batch_size, 3, args.crop_size, args.crop_size)
        y = torch.randint(0, 1000, (args.batch_size,))
        batches = repeat([(x, y)])
    else:
        tf = T.Compose([T.Resize(args.scale), T.RandomCrop(args.crop_size),
                        T.RandomHorizontalFlip(), T.ToTensor(),
                        T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
        dataset = torchvision.datasets.ImageFolder(str(data_dir / "train"), tf)
        batches = repeat(torch.utils.data.DataLoader(
            dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
            pin_memory=device.type == "cuda", drop_last=True,
            persistent_workers=args.workers > 0))

    def step(x, y):
        x = x.to(device, non_blocking=True).to(memory_format=memory_format)
        y = y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype, enabled=args.precision != "fp32"):
            loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return loop(batches, step, device, args.warmup, args.steps, args.batch_size)


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data_dir = args.data
    if data_dir is None:
        data_dir = make_jpegs(Path(tempfile.mkdtemp()), args.num_images, args.image_size)
    machine = (torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"{platform.processor() or platform.machine()}, "
                    f"{torch.get_num_threads()} threads")
    print(f"# {args.arch} width {args.width} crop {args.crop_size} batch {args.batch_size} "
          f"{args.precision} channels_last={args.channels_last} compile={args.compile} "
          f"workers {args.workers} on {device} ({machine}); torch {torch.__version__}")
    figures = {}
    for name, figure in (("vggfeat", vggfeat_figure), ("torchvision", torchvision_figure)):
        for source, path in (("synthetic", None), ("jpeg", data_dir)):
            figures[f"{name} {source}"] = figure(args, device, path)
            print(f"{name:12s} {source:9s} {figures[f'{name} {source}']:10.1f} images/s",
                  flush=True)
    ratio = figures["vggfeat jpeg"] / figures["vggfeat synthetic"]
    print(f"vggfeat jpeg / synthetic: {ratio:.2f} (target >= 0.80 on an H100)")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "machine": machine, "images_per_s": figures}, indent=1))


if __name__ == "__main__":
    main()
