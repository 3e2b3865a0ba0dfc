"""What bf16 does to results (issue 20): svm-eval on fp32 and on bf16 descriptors, same nets,
same data, same splits; the difference in each run's headline metric.

Two datasets, both made here (offline):

1. the demo's (``vggfeat.demo``, ``make demo``): cluttered digits 5-9, the backbone trained
   on digits 0-4 (VGG-A with batch norm, width 0.125) and the same net untrained; fc7 at
   Q = 64, 96, 128 stacked; mean class recall over 3 seeded splits, C = 10. The demo's own
   steps (digits, training, splits) are reused: ``--demo-out demo_out`` reuses a folder
   that ``make demo`` made (only the extraction and svm-eval run again, in both precisions);
2. a VOC 2007-shaped devkit (``tests/helpers_datasets.make_voc``: coloured boxes, 20
   classes, train/val/test, difficult labels) described by the same trained backbone at
   Q = 64, 96; VOC 2007 11-point mAP, with svm-eval's C chosen per class on val (its
   default: a near-tie between two Cs can flip with any change of the descriptors, moving
   a class's AP by points) and with one fixed C (the descriptors' effect alone).

On the CPU the bf16 side takes the bf16 fast path where the CPU has bf16 instructions
(``vggfeat info`` says), autocast elsewhere. Each extraction is also compared descriptor by
descriptor: the minimum cosine against fp32 over every image and scale.

    python benchmarks/bf16_accuracy.py --out bf16_accuracy_out [--demo-out demo_out] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from vggfeat import demo

HERE = Path(__file__).resolve().parent
PRECISIONS = ("fp32", "bf16")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bf16_accuracy_out"))
    parser.add_argument("--demo-out", type=Path, default=None,
                        help="a folder `make demo` made: reuse its digits, nets and splits")
    parser.add_argument("--quick", action="store_true", help="the demo's --quick sizes")
    parser.add_argument("--voc-images", type=int, default=400,
                        help="images of the VOC-shaped set (train, val, test: 1/4, 1/4, 1/2)")
    return parser.parse_args()


def extract(cfg, root, weights, cache: Path, precision: str, scales, dataset="folder"):
    if not cache.is_file():
        demo.run_step(["extract", "--dataset", dataset, "--root", root, "--weights", weights,
                       "--scales", ",".join(map(str, scales)), "--layer", "fc7",
                       "--device", "cpu", "--batch-size", 64, "--precision", precision,
                       "--out", cache, "--quiet"], echo=print, quiet=True,
                      threads=cfg.threads)
    return cache


def svm_eval(cfg, cache: Path, out: Path, extra=()) -> dict:
    if not (out / "summary.json").is_file():
        demo.run_step(["svm-eval", cache, "--aggregate", "stack", "--seed", cfg.seed,
                       "--out", out, "--quiet", *extra], echo=print, quiet=True,
                      threads=cfg.threads)
    head = json.loads((out / "summary.json").read_text())["headline"]
    return {"metric": head["headline"], "value": 100 * head[head["headline"]]}


def min_cosine(a: Path, b: Path) -> float:
    from vggfeat.features import load_features

    (ids_a, x), (ids_b, y) = (load_features(p, aggregate="stack", l2=False) for p in (a, b))
    assert list(ids_a) == list(ids_b)
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return float(((x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)).min())


def compare(name, cfg, make_cache, evaluate) -> list[dict]:
    """One row per precision, and the bf16 row's difference from fp32."""
    caches = {p: make_cache(p) for p in PRECISIONS}
    results = {p: evaluate(p, caches[p]) for p in PRECISIONS}
    cosine = min_cosine(caches["fp32"], caches["bf16"])
    delta = results["bf16"]["value"] - results["fp32"]["value"]
    return [{"run": name, "metric": results["fp32"]["metric"],
             "fp32": round(results["fp32"]["value"], 2), "bf16": round(results["bf16"]["value"], 2),
             "bf16 - fp32 (points)": round(delta, 2), "min cosine": round(cosine, 6)}]


def demo_rows(args, cfg) -> tuple[list[dict], Path]:
    base = args.demo_out or args.out / "demo"
    kw = {"echo": print, "quiet": True, "threads": cfg.threads}
    digits = demo.make_digits_step(cfg, base, **kw)
    transfer = digits / "transfer"
    runs = {"trained": demo.train_step(cfg, digits / "backbone", base / "runs" / "trained",
                                       cfg.epochs, **kw),
            "random": demo.train_step(cfg, digits / "backbone", base / "runs" / "random", 0,
                                      **kw)}
    splits = demo.splits_step(cfg, transfer, args.out, echo=print)
    rows = []
    for name, weights in runs.items():
        rows += compare(
            f"demo digits, {name} VGG-A-BN", cfg,
            lambda p, w=weights, n=name: extract(
                cfg, transfer, w, args.out / "features" / f"demo-{n}-{p}.h5", p, cfg.scales),
            lambda p, cache, n=name: svm_eval(
                cfg, cache, args.out / "svm" / f"demo-{n}-{p}",
                ["--splits-file", splits, "--C", cfg.C]))
    return rows, runs["trained"]


def voc_rows(args, cfg, weights: Path) -> list[dict]:
    sys.path.insert(0, str(HERE.parent / "tests"))
    from helpers_datasets import make_voc  # the test suite's generated devkit

    root = args.out / "voc"
    if not (root / "VOCdevkit").is_dir():
        quarter = args.voc_images // 4
        make_voc(root, "2007", {"train": quarter, "val": quarter, "test": 2 * quarter},
                 size=(96, 72))
    rows = []
    for what, extra in (("C chosen per class on val", ()), ("C = 10 for every class",
                                                            ("--C", 10))):
        rows += compare(
            f"VOC 2007-shaped, trained VGG-A-BN, {what}", cfg,
            lambda p: extract(cfg, root, weights, args.out / "features" / f"voc-{p}.h5", p,
                              (64, 96), dataset="voc2007"),
            lambda p, cache, extra=extra: svm_eval(
                cfg, cache, args.out / "svm" / f"voc-{p}{'-fixed-C' if extra else ''}", extra))
    return rows


def main():
    args = parse_args()
    cfg = demo.QUICK if args.quick else demo.FULL
    cfg = replace(cfg, threads=int(os.environ.get("OMP_NUM_THREADS", cfg.threads)))
    args.out.mkdir(parents=True, exist_ok=True)
    from vggfeat.models.cpu_bf16 import bf16_support

    print(f"cpu bf16 instructions: {bf16_support().describe()}; load {os.getloadavg()}")
    rows, trained = demo_rows(args, cfg)
    rows += voc_rows(args, cfg, trained)
    print("| run | metric | fp32 | bf16 | bf16 - fp32 (points) | min cosine vs fp32 |")
    print("|---|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['run']} | {row['metric']} | {row['fp32']:.2f} | {row['bf16']:.2f} | "
              f"{row['bf16 - fp32 (points)']:+.2f} | {row['min cosine']:.6f} |")
    (args.out / "bf16_accuracy.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
