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
    probe = LinearSVMProbe(C=C, cv=0.2, solver=solver, device=device, verbose=True)
    start = time.perf_counter()
    probe.fit(X_train, y_train)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    predicted = probe.predict(X_test)
    return {
        "solver": solver, "seconds": round(seconds, 1),
        "accuracy": round(100 * float(np.mean(predicted == y_test)), 2),
        "mean_class_recall": round(100 * mean_class_recall(y_test, predicted), 2),
        "chosen_C": {str(c): int(n) for c, n in zip(*np.unique(probe.C_, return_counts=True),
                                                    strict=True)},
    }, probe


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
    parser.add_argument("--skip-liblinear", action="store_true",
                        help="time only the torch solver (no comparison)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    X_train, y_train, X_test, y_test = make_problem(
        args.classes, args.per_class, args.test_per_class, args.dim,
        separation=args.separation)
    print(f"problem: {X_train.shape[0]} x {X_train.shape[1]} training descriptors, "
          f"{args.classes} classes, {len(args.C)} values of C, {len(X_test)} test images; "
          f"{platform.processor() or platform.machine()}, torch threads "
          f"{torch.get_num_threads()}, device {args.device}, load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    ours, probe = run("torch", X_train, y_train, X_test, y_test, args.C, args.device)
    print(json.dumps(ours), flush=True)
    if args.skip_liblinear:
        return
    ref, ref_probe = run("liblinear", X_train, y_train, X_test, y_test, args.C, "cpu")
    print(json.dumps(ref), flush=True)
    print(json.dumps({
        "speedup": round(ref["seconds"] / ours["seconds"], 2),
        "accuracy_difference_points": round(ours["accuracy"] - ref["accuracy"], 2),
        "same_C_fraction": round(float(np.mean(probe.C_ == ref_probe.C_)), 3),
    }))


if __name__ == "__main__":
    main()
