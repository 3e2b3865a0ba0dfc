"""svm-eval's C selection against one fit (issue 22): wall seconds and peak memory of
`vggfeat svm-eval --C 1` and of the default selection (five C values, cross-validated)
on the same cache, from 2k images to Caltech-256's size.

Three steps, any of them per run (each reuses what an earlier one left under --work):

- `make`: a `--dataset folder` tree (ROOT/<class>/<file>.jpg) of 64x64 JPEGs, deterministic
  from --seed. Each image is one of scikit-learn's 8x8 digits, upscaled to a random side in
  22..40 px, tinted, placed at a random position on a canvas of colour noise (amplitude
  0.25) with two half-digit fragments of other digits and a small second digit in a corner.
  Class k = (digit k % 10, tint (k // 10) % 8, corner digit k // 80): up to 800 classes;
  below 81 classes the corner digit is random (a distractor). A linear probe on random-init
  VGG features separates them partly, not perfectly (noise, fragments, size, position).
- `extract`: full-width VGG-11 with Glorot (xavier) init, seeded by --seed, saved once
  (WORK/vgg11-xavier-s<seed>.pth), then `python -m vggfeat extract --dataset folder
  --scales 32,48 --device cpu --quiet` as a subprocess; its seconds go to
  WORK/<name>.extract.json. A finished cache is reused, never recomputed.
- `svm`: `python -m vggfeat svm-eval CACHE --device cpu` once with `--C 1` and once with
  the default grid (plus --svm-args, the same for both), each a subprocess under
  `/usr/bin/time -v` (else a python wrapper reading the child's ru_maxrss), timed from
  launch to exit; reads the chosen C and headline metric from OUT/summary.json and prints
  a markdown table with the CPU's vector extensions and the load average with each row.

Datasets: --sizes N,... with --classes K (an even number of images per class; svm-eval's
folder defaults: 25% of each class as test, 3 splits), and --caltech256: 30,607 images in
257 classes of 80..800 images each (uneven, like Caltech-256), evaluated with
`--train-per-class 60` (the Caltech-256 protocol's 60 training images per class).

    python benchmarks/svm_selection.py make extract --sizes 2000,8000,30000 --classes 20
    python benchmarks/svm_selection.py make extract --caltech256
    python benchmarks/svm_selection.py svm --sizes 2000,8000 --classes 20
    python benchmarks/svm_selection.py svm --sizes 30000 --classes 20 --caltech256 \\
        --skip-default-above 8000                          # --C 1 only at these sizes
    python benchmarks/svm_selection.py svm --sizes 2000 --svm-args "--splits 1"
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from svm_memory import machine  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SIDE = 64  # image side in pixels
SCALES = "32,48"
TINTS = np.array([[1, 1, 1], [1, .3, .3], [.3, 1, .3], [.3, .3, 1],
                  [1, 1, .3], [1, .3, 1], [.3, 1, 1], [1, .6, .2]], dtype=np.float32)
CALTECH256 = (257, 30_607, 80, 800)  # classes, images, fewest and most per class
WRAPPER = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[1:])
print(f"Maximum resident set size (kbytes): "
      f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}", file=sys.stderr)
sys.exit(code)
"""


# ---------------------------------------------------------------- make
def class_parts(k: int, classes: int) -> tuple[int, int, int | None]:
    """(digit, tint, corner digit or None when the corner digit is a random distractor)."""
    return k % 10, (k // 10) % len(TINTS), (k // 80) if classes > 80 else None


def class_counts(images: int, classes: int, rng, fewest=None, most=None) -> np.ndarray:
    """Images per class: even, or uneven in [fewest, most] summing to `images`."""
    if fewest is None:
        return np.full(classes, images // classes) + (np.arange(classes) < images % classes)
    extra = rng.pareto(1.5, classes)  # a few large classes, most near the fewest
    counts = fewest + np.minimum(extra / extra.sum() * (images - fewest * classes),
                                 most - fewest).astype(int)
    while counts.sum() < images:  # hand out what rounding and the cap left, one at a time
        counts[rng.choice(np.flatnonzero(counts < most))] += 1
    return counts


def digit_image(pixels: np.ndarray, side: int):
    from PIL import Image
    return np.asarray(Image.fromarray((pixels * 255 / 16).astype(np.uint8)).resize(
        (side, side), Image.BILINEAR), dtype=np.float32) / 255


def paste(canvas, glyph, colour, rng) -> None:
    y = rng.integers(0, SIDE - glyph.shape[0] + 1)
    x = rng.integers(0, SIDE - glyph.shape[1] + 1)
    region = canvas[y:y + glyph.shape[0], x:x + glyph.shape[1]]
    np.maximum(region, glyph[..., None] * colour, out=region)


def draw(digits, by_label, parts, rng) -> np.ndarray:
    """One 64x64 RGB image of class `parts` (see the module docstring)."""
    digit, tint, corner = parts
    canvas = rng.random((SIDE, SIDE, 3), dtype=np.float32) * 0.25
    for _ in range(2):  # half-digit fragments of other digits at 0.6
        other = digit_image(digits[rng.integers(len(digits))], int(rng.integers(22, 41)))
        half = other[:, : other.shape[1] // 2] if rng.random() < .5 else other[: len(other) // 2]
        paste(canvas, half, 0.6 * TINTS[rng.integers(len(TINTS))], rng)
    main = digits[rng.choice(by_label[digit])]
    paste(canvas, digit_image(main, int(rng.integers(22, 41))), TINTS[tint], rng)
    corner = int(rng.integers(10)) if corner is None else corner
    small = digit_image(digits[rng.choice(by_label[corner])], 16)
    canvas[:16, -16:] = np.maximum(canvas[:16, -16:], small[..., None] * 0.9)
    return (np.clip(canvas, 0, 1) * 255).astype(np.uint8)


def make(root: Path, counts: np.ndarray, seed: int) -> None:
    """Write the folder dataset (into ROOT.tmp, renamed when whole, so a stopped make is
    redone, not reused)."""
    from PIL import Image
    from sklearn.datasets import load_digits
    digits = load_digits()
    by_label = [np.flatnonzero(digits.target == d) for d in range(10)]
    rng = np.random.default_rng(seed)
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for k, count in enumerate(counts):
        parts = class_parts(k, len(counts))
        corner = "x" if parts[2] is None else parts[2]
        folder = tmp / f"c{k:03d}_d{parts[0]}_t{parts[1]}_s{corner}"
        folder.mkdir(parents=True)
        for i in range(count):
            image = draw(digits.images, by_label, parts, rng)
            Image.fromarray(image).save(folder / f"{i:04d}.jpg", quality=90)
    tmp.rename(root)


# ---------------------------------------------------------------- extract
def weights(work: Path, seed: int) -> Path:
    path = work / f"vgg11-xavier-s{seed}.pth"
    if not path.exists():
        import torch

        from vggfeat.models import build_backbone, save_backbone
        torch.manual_seed(seed)
        save_backbone(build_backbone("vgg11", crop_size=32, init="xavier"), path)
    return path


def extract(root: Path, cache: Path, work: Path, seed: int) -> dict:
    record = cache.with_suffix(".extract.json")
    if cache.exists() and record.exists():
        return json.loads(record.read_text())
    command = [sys.executable, "-m", "vggfeat", "extract", "--dataset", "folder", "--root",
               str(root), "--weights", str(weights(work, seed)), "--scales", SCALES,
               "--device", "cpu", "--quiet", "--out", str(cache)]
    load = os.getloadavg()
    begin = time.perf_counter()
    subprocess.run(command, check=True, env=environment())
    done = {"seconds": round(time.perf_counter() - begin, 1), "load_before": load,
            "load_after": os.getloadavg(), "command": shlex.join(command)}
    record.write_text(json.dumps(done, indent=1) + "\n")
    return done


# ---------------------------------------------------------------- svm
def environment() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}


def measure(command: list[str]) -> tuple[float, float]:
    """(seconds from launch to exit, peak RSS of the child in MiB)."""
    timer = (["/usr/bin/time", "-v"] if Path("/usr/bin/time").exists()
             else [sys.executable, "-c", WRAPPER])
    begin = time.perf_counter()
    done = subprocess.run([*timer, *command], env=environment(), capture_output=True, text=True)
    seconds = time.perf_counter() - begin
    if done.returncode:
        raise SystemExit(f"{shlex.join(command)} failed:\n{done.stderr[-3000:]}")
    kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)[1])
    return seconds, kib / 1024


def svm_run(cache: Path, out: Path, grid: list[str], extra: list[str]) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "vggfeat", "svm-eval", str(cache), "--device", "cpu",
               "--quiet", "--out", str(out), *grid, *extra]
    load = os.getloadavg()[0]
    seconds, rss = measure(command)
    summary = json.loads((out / "summary.json").read_text())
    chosen = sorted({c for split in summary["chosen_C"].values() for c in split.values()})
    headline = next(iter(summary["headline"].items()), ("?", float("nan")))
    return {"seconds": seconds, "rss": rss, "load": load, "chosen": chosen,
            "metric": headline, "train": train_rows(out), "command": shlex.join(command)}


def train_rows(out: Path) -> str:
    """Training rows of the first split, from results.csv's per-class counts."""
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    column = next((c for c in rows[0] if "train" in c.lower()), None) if rows else None
    if column is None:
        return "?"
    first = rows[0].get("split")
    return str(sum(int(float(r[column])) for r in rows if r.get("split") == first))


def width(cache: Path, extra: list[str]) -> str:
    """D of the rows svm-eval fits: descriptor dim, times the scales when stacked (the
    dataset's default aggregation unless --aggregate is given: averaged for folder data)."""
    import h5py

    from vggfeat.features.export import default_aggregate
    with h5py.File(cache, "r") as f:
        shape = next(d.shape for d in _datasets(f) if d.ndim == 3)
        dataset = f.attrs.get("dataset", "folder")
    aggregate = (extra[extra.index("--aggregate") + 1] if "--aggregate" in extra
                 else default_aggregate(dataset))
    return str(shape[2] * (shape[1] if aggregate == "stack" else 1))


def _datasets(group):
    import h5py
    for item in group.values():
        if isinstance(item, h5py.Dataset):
            yield item
        else:
            yield from _datasets(item)


# ---------------------------------------------------------------- driver
def datasets(args) -> list[tuple[str, np.ndarray, list[str]]]:
    """(name, images per class, svm-eval arguments of its protocol) of each dataset asked."""
    found = []
    for n in (int(v) for v in args.sizes.split(",")) if args.sizes else ():
        found.append((f"n{n}-k{args.classes}-s{args.seed}",
                      class_counts(n, args.classes, None), []))
    if args.caltech256:
        classes, images, fewest, most = CALTECH256
        counts = class_counts(images, classes, np.random.default_rng(args.seed), fewest, most)
        found.append((f"caltech256-s{args.seed}", counts, ["--train-per-class", "60"]))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("steps", nargs="+", choices=["make", "extract", "svm"])
    parser.add_argument("--sizes", default="", help="images, e.g. 2000,8000,30000")
    parser.add_argument("--classes", type=int, default=20, help="classes of --sizes")
    parser.add_argument("--caltech256", action="store_true",
                        help="also 30,607 images in 257 uneven classes, --train-per-class 60")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/sel/work"))
    parser.add_argument("--svm-args", default="", help='passed to both runs, e.g. "--splits 1"')
    parser.add_argument("--skip-default-above", type=int, default=None,
                        help="run only --C 1 above this many images")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}", flush=True)
    rows = []
    for name, counts, protocol in datasets(args):
        root, cache = args.work / f"data-{name}", args.work / f"{name}-q{SCALES}.h5"
        if "make" in args.steps and not root.exists():
            begin = time.perf_counter()
            make(root, counts, args.seed)
            print(f"{name}: made {counts.sum()} images in {len(counts)} classes in {root} "
                  f"({time.perf_counter() - begin:.0f} s)", flush=True)
        if "extract" in args.steps:
            done = extract(root, cache, args.work, args.seed)
            print(f"{name}: cache {cache}, extracted in {done['seconds']:.0f} s (load "
                  f"{done['load_before'][0]:.2f} -> {done['load_after'][0]:.2f})", flush=True)
        if "svm" in args.steps:
            rows.append(svm_rows(name, counts, protocol, cache, args))
    if rows:
        print_table(rows, args)


def svm_rows(name, counts, protocol, cache, args) -> dict:
    extra = [*protocol, *shlex.split(args.svm_args)]
    runs = {"C1": svm_run(cache, args.work / f"{name}-C1-svm", ["--C", "1"], extra)}
    print(f"{name} --C 1: {runs['C1']}", flush=True)
    if args.skip_default_above is None or counts.sum() <= args.skip_default_above:
        runs["default"] = svm_run(cache, args.work / f"{name}-default-svm", [], extra)
        print(f"{name} default: {runs['default']}", flush=True)
    return {"images": int(counts.sum()), "classes": len(counts), "D": width(cache, extra),
            **runs}


def print_table(rows, args) -> None:
    print(f"\nsvm-eval --device cpu {args.svm_args} (caches: full-width VGG-11, xavier init, "
          f"Q = {SCALES}; load average = 1-minute value at each run's start)\n")
    print("| images | classes | train rows | D | --C 1 s | default s | default / --C 1 | "
          "peak RSS MiB --C 1 / default | chosen C (default) | metric --C 1 / default | load |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|")
    for row in rows:
        one, full = row["C1"], row.get("default")
        name, value = one["metric"]
        print(f"| {row['images']} | {row['classes']} | {one['train']} | {row['D']} | "
              f"{one['seconds']:.1f} | {full['seconds']:.1f} | "
              f"{full['seconds'] / one['seconds']:.1f}x | {one['rss']:.0f} / {full['rss']:.0f} | "
              f"{','.join(map(str, full['chosen']))} | {name} {value:.4g} / "
              f"{full['metric'][1]:.4g} | {one['load']:.2f} / {full['load']:.2f} |"
              if full else
              f"| {row['images']} | {row['classes']} | {one['train']} | {row['D']} | "
              f"{one['seconds']:.1f} | skipped | - | {one['rss']:.0f} / - | - | "
              f"{name} {value:.4g} / - | {one['load']:.2f} / - |")
    print(f"\nmachine at the end: {machine()}")


if __name__ == "__main__":
    main()
