"""Extraction scaling with processes: `torchrun -m vggfeat extract` at 1, 2, 4 processes.

Each process runs one torch thread (OMP_NUM_THREADS=1), so P processes use P cores; the
images are split between ranks (every world_size-th image) and rank 0 merges the shards.
Reports whole-run images/s and the efficiency rate(P) / (P x rate(1)). On a machine with
fewer free cores than P the efficiency says so: the load average is printed with each run.

    python benchmarks/scaling.py --procs 1,2,4 --images 48
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract_speed import run_process, write_images  # noqa: E402

from vggfeat.models import build_backbone, save_backbone  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", default="1,2,4")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--arch", default="vgg16")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--scales", default="224,288")
    parser.add_argument("--size", default="400x300")
    args = parser.parse_args()
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    width, height = (int(v) for v in args.size.split("x"))
    print(f"{args.arch} width {args.width}, {args.images} JPEGs {args.size}, Q={args.scales}, "
          f"fc7, flips; {os.cpu_count()} cores, 1 thread per process, torch {torch.__version__}")
    print("| processes | seconds | images/s | efficiency | load average before -> after |")
    print("|---:|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        save_backbone(build_backbone(args.arch, width=args.width, init="xavier"),
                      tmp / "w.pth")
        write_images(tmp / "images", args.images, width, height)
        base = None
        for p in (int(v) for v in args.procs.split(",")):
            out = tmp / f"out{p}.h5"
            before = os.getloadavg()[0]
            start = time.perf_counter()
            run_process([torchrun, "--standalone", f"--nproc_per_node={p}", "-m", "vggfeat",
                         "extract", "--dataset", "folder", "--root", str(tmp / "images"),
                         "--weights", str(tmp / "w.pth"), "--scales", args.scales,
                         "--device", "cpu", "--workers", "0", "--out", str(out), "--quiet"],
                        env)
            seconds = time.perf_counter() - start
            rate = args.images / seconds
            base = base or rate
            print(f"| {p} | {seconds:.1f} | {rate:.2f} | {rate / (p * base):.0%} | "
                  f"{before:.1f} -> {os.getloadavg()[0]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
