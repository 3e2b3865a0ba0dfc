"""The cost of the sha256 recorded beside checkpoints and backbone files (issue 19, item 4).

A VGG16-size file (torchvision.models.vgg16()'s random-init state dict, 528 MB) is written
and read the way vggfeat does it, with and without the recorded sum, best of `--repeats`
each, the file warm in the page cache (what a save followed by a load sees):

- save: `torch.save` to a temporary file renamed into place (vggfeat before), against the
  same through `vggfeat.utils.hashing.writing_with_sum` (hashing as it writes, then
  writing `<file>.sha256`);
- load_backbone: without a `.sha256` beside the file (as before; it already hashes the file
  for the cache's record, beside the memory-mapped read) and with one (checked);
- load_checkpoint (--resume): a training checkpoint of the same tensors, without and with
  the record (the check hashes beside torch.load).

The files go to --folder (default /tmp) and are deleted at the end.

    python benchmarks/recorded_sums.py --repeats 3
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
import torchvision

from vggfeat.models import load_backbone
from vggfeat.models.files import CHECKPOINT_FORMAT, CHECKPOINT_VERSION
from vggfeat.training.checkpoint import load_checkpoint
from vggfeat.utils import atomic, hashing


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def save_plain(obj, path: Path) -> None:
    with atomic.replacing(path) as tmp:
        torch.save(obj, tmp)


def save_recorded(obj, path: Path) -> None:
    with hashing.writing_with_sum(path) as handle:
        torch.save(obj, handle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folder", default="/tmp")
    args = parser.parse_args()
    torch.manual_seed(0)
    state_dict = torchvision.models.vgg16().state_dict()
    meta = {"arch": "vgg16", "width": 1.0, "crop_size": 224, "num_classes": 1000}
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "meta": meta,
               "state_dict": state_dict}
    training = {"model": state_dict, "epoch": 1, "step": 1, "config": {}}
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        path = Path(folder) / "vgg16.pth"
        rows = {}
        rows["save, before"] = best(lambda: save_plain(payload, path), args.repeats)
        rows["save, recording the sum"] = best(lambda: save_recorded(payload, path),
                                               args.repeats)
        size = path.stat().st_size
        rows["hash alone (sha256_of)"] = best(lambda: hashing.sha256_of(path), args.repeats)
        rows["load_backbone, checked"] = best(lambda: load_backbone(path), args.repeats)
        os.rename(hashing.sum_path(path), Path(folder) / "kept")
        rows["load_backbone, no record"] = best(lambda: load_backbone(path), args.repeats)
        ckpt = Path(folder) / "checkpoint.pth"
        save_recorded(training, ckpt)
        rows["load_checkpoint, checked"] = best(lambda: load_checkpoint(ckpt), args.repeats)
        hashing.sum_path(ckpt).unlink()
        rows["load_checkpoint, no record"] = best(lambda: load_checkpoint(ckpt), args.repeats)
    print(f"file {size / 1e6:.0f} MB, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    for name, seconds in rows.items():
        print(f"{name:32s} {seconds:6.2f} s")


if __name__ == "__main__":
    main()
