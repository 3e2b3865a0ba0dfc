"""SVM speed: the batched torch solver vs scikit-learn's LinearSVC, same selection of C.

A Caltech-256-sized problem by default: 257 classes x 60 training images (15,420 rows) of
12,288-D descriptors (3 scales x 4096, stacked), 5 values of C, 20% of each class's training
images held out to choose C per class, then a refit on all training images. The
descriptors are synthetic but shaped like pooled fc7 features: non-negative (ReLU),
correlated across scales, L2-normalised, with class structure tuned so a linear SVM reaches
roughly the paper's Caltech-256 accuracy.

Both solvers run in one process on the same data and report wall time and test accuracy /
mean class recall; the target is the same accuracy within 0.3 points and a 10x speed-up.

    python benchmarks/svm_speed.py                       # full size (LinearSVC: hours on CPU)
    python benchmarks/svm_speed.py --classes 64 --dim 4096   # a reduced size
    python benchmarks/svm_speed.py --device cuda

Each side can run alone and write its result (seconds, accuracy, the C of every class) to a
JSON file, so the hour-long LinearSVC side can run in the background and be compared later
with a torch run on the same data (same ``--seed``)::

    python benchmarks/svm_speed.py --side liblinear --out liblinear.json
    python benchmarks/svm_speed.py --side torch --out torch.json
    python benchmarks/svm_speed.py --compare torch.json liblinear.json

On a machine shared with other jobs, pass ``--threads 1``: torch's OpenMP threads stall when
the cores are oversubscribed (3x slower here at load 3 on 2 cores), while LinearSVC is
single-threaded anyway. The synthetic classes get harder with more classes and dimensions:
``--separation`` sets how far apart they are (accuracy ~60-90% at the defaults).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from vggfeat.evaluation.metrics import mean_class_recall
from vggfeat.evaluation.svm import C_GRID, LinearSVMProbe


def make_problem(n_classes=257, train_per_class=60, test_per_class=20, dim=12288, scales=3,
                 latent=256, separation=0.3, seed=0):
    """(X_train, y_train, X_test, y_test), float32, rows L2-normalised."""
    rng = np.random.default_rng(seed)
    per_scale = dim // scales
    centres = rng.normal(size=(n_classes, latent))
    base = rng.normal(size=(latent, per_scale)) / np.sqrt(latent)
    projections = [base + 0.5 * rng.normal(size=base.shape) / np.sqrt(latent)
                   for _ in range(scales)]

    def draw(per_class):
        y = np.repeat(np.arange(n_classes), per_class)
        z = separation * centres[y] + rng.normal(size=(len(y), latent))
        # ReLU with a positive threshold: sparse, non-negative, like fc7 after ReLU.
        blocks = [np.maximum(z @ p - 0.5, 0, dtype=np.float32) for p in projections]
        x = np.concatenate(blocks, axis=1).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x, y

    X_train, y_train = draw(train_per_class)
    X_test, y_test = draw(test_per_class)
    return X_train, y_train, X_test, y_test


def run(solver, X_train, y_train, X_test, y_test, C, device):
    """Fit one probe, time it, score it; the result dict and the fitted probe."""
    probe = LinearSVMProbe(C=C, cv=0.2, solver=solver, device=device, verbose=True)
    start = time.perf_counter()
    probe.fit(X_train, y_train)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    predicted = probe.predict(X_test)
    return {
        "solver": solver, "seconds": round(seconds, 3),
        "accuracy": round(100 * float(np.mean(predicted == y_test)), 2),
        "mean_class_recall": round(100 * mean_class_recall(y_test, predicted), 2),
        "chosen_C": {str(c): int(n) for c, n in zip(*np.unique(probe.C_, return_counts=True),
                                                    strict=True)},
        "C_per_class": [float(c) for c in probe.C_],
    }, probe


def compare(ours, ref):
    """Speed-up, accuracy difference and fraction of classes with the same C."""
    return {
        "speedup": round(ref["seconds"] / ours["seconds"], 2),
        "accuracy_difference_points": round(ours["accuracy"] - ref["accuracy"], 2),
        "same_C_fraction": round(float(np.mean(
            np.asarray(ours["C_per_class"]) == np.asarray(ref["C_per_class"]))), 3),
    }


def _write(path, result, args):
    if path:
        result = dict(result, problem=vars(args) | {"compare": None},
                      load_average_end=round(os.getloadavg()[0], 2),
                      finished=time.strftime("%Y-%m-%d %H:%M:%S"))
        with open(path, "w") as f:
            json.dump(result, f)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=257)
    parser.add_argument("--per-class", type=int, default=60, help="training images per class")
    parser.add_argument("--test-per-class", type=int, default=20)
    parser.add_argument("--dim", type=int, default=12288)
    parser.add_argument("--separation", type=float, default=0.3)
    parser.add_argument("--C", type=float, nargs="+", default=list(C_GRID))
    parser.add_argument("--device", default="cpu", help="device of the torch solver")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (LinearSVC always uses one)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    parser.add_argument("--side", choices=("both", "torch", "liblinear"), default="both",
                        help="run one solver only (compare later with --compare)")
    parser.add_argument("--skip-liblinear", action="store_true",
                        help="same as --side torch")
    parser.add_argument("--out", default=None,
                        help="write the result of a one-side run (JSON) to this file")
    parser.add_argument("--compare", nargs=2, metavar=("TORCH_JSON", "LIBLINEAR_JSON"),
                        help="compare two --out files and exit")
    args = parser.parse_args()
    if args.compare:
        ours, ref = (json.load(open(p)) for p in args.compare)
        print(json.dumps(compare(ours, ref)))
        return
    if args.skip_liblinear:
        args.side = "torch"
    if args.threads:
        torch.set_num_threads(args.threads)

    X_train, y_train, X_test, y_test = make_problem(
        args.classes, args.per_class, args.test_per_class, args.dim,
        separation=args.separation, seed=args.seed)
    print(f"problem: {X_train.shape[0]} x {X_train.shape[1]} training descriptors, "
          f"{args.classes} classes, {len(args.C)} values of C, {len(X_test)} test images; "
          f"{platform.processor() or platform.machine()}, torch threads "
          f"{torch.get_num_threads()}, device {args.device}, load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    if args.side in ("both", "torch"):
        ours, _ = run("torch", X_train, y_train, X_test, y_test, args.C, args.device)
        print(json.dumps({k: v for k, v in ours.items() if k != "C_per_class"}), flush=True)
        _write(args.out if args.side == "torch" else None, ours, args)
    if args.side in ("both", "liblinear"):
        ref, _ = run("liblinear", X_train, y_train, X_test, y_test, args.C, "cpu")
        print(json.dumps({k: v for k, v in ref.items() if k != "C_per_class"}), flush=True)
        _write(args.out if args.side == "liblinear" else None, ref, args)
    if args.side == "both":
        print(json.dumps(compare(ours, ref)))


if __name__ == "__main__":
    main()
