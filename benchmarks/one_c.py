"""One C per multi-class split vs one C per class: the effect on mean class recall.

A generated problem shaped like Caltech-101 (many classes, few training images each):
descriptors like pooled fc7 ones (ReLU'd, L2-normalised, a class centre plus noise whose
level differs from class to class), `--classes` classes with `--train` training and
`--test` test images each. For each seed, on the same data:

- before: C chosen per class by VOC AP on 20% of each class's training images held out
  once (6 of 30 on Caltech-101), prediction the argmax over SVMs of different C (vggfeat
  up to this change: ``LinearSVMProbe(cv=0.2, C_selection="per-class")``);
- after: one C for all classes by 5-fold stratified cross-validated mean class recall on
  the training images (``LinearSVMProbe(cv=5)``, what the multi-class protocols use now);
- for reference, the best single C of the grid judged on the test images (an oracle no
  protocol may use).

Prints, per method, test mean class recall (mean +- std over seeds) and the Cs chosen.

    python benchmarks/one_c.py                 # 102 classes, 30 train / 20 test, 10 seeds
    python benchmarks/one_c.py --seeds 3 --classes 40
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from vggfeat.evaluation.metrics import mean_class_recall
from vggfeat.evaluation.svm import C_GRID, LinearSVMProbe


def generate(n_classes: int, n_train: int, n_test: int, dim: int, seed: int):
    """(X_train, y_train, X_test, y_test): float32 unit-norm rows with class structure."""
    rng = np.random.default_rng(seed)
    latent = 64
    centres = rng.normal(size=(n_classes, latent))
    noise = rng.uniform(1.5, 4.0, size=n_classes)  # some classes much harder than others
    proj = rng.normal(size=(latent, dim)) / np.sqrt(latent)

    def draw(per_class):
        y = np.repeat(np.arange(n_classes), per_class)
        z = centres[y] + noise[y, None] * rng.normal(size=(len(y), latent))
        x = np.maximum(z @ proj, 0) + 0.05 * np.abs(rng.normal(size=(len(y), dim)))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y

    return (*draw(n_train), *draw(n_test))


def evaluate(probe, X_train, y_train, X_test, y_test) -> tuple[float, list[float]]:
    probe.fit(X_train, y_train)
    return mean_class_recall(y_test, probe.predict(X_test)), sorted(set(probe.C_.tolist()))


def oracle(X_train, y_train, X_test, y_test, grid) -> tuple[float, float]:
    """Best test mean class recall of a single C (uses the test labels: reference only)."""
    scores = [mean_class_recall(y_test, LinearSVMProbe(C=c).fit(X_train, y_train)
                                .predict(X_test)) for c in grid]
    best = int(np.argmax(scores))
    return scores[best], grid[best]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=102)
    parser.add_argument("--train", type=int, default=30)
    parser.add_argument("--test", type=int, default=20)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    grid = list(C_GRID)
    methods = {
        "before: C per class, AP on 20% held out": lambda s: LinearSVMProbe(
            C=grid, cv=0.2, C_selection="per-class", random_state=s),
        "after: one C, 5-fold mean class recall": lambda s: LinearSVMProbe(
            C=grid, cv=5, random_state=s),
    }
    results = {name: [] for name in methods} | {"oracle: best single C on test": []}
    chosen = {name: [] for name in results}
    seconds = {name: 0.0 for name in results}
    for seed in range(args.seeds):
        data = generate(args.classes, args.train, args.test, args.dim, seed)
        for name, make in methods.items():
            start = time.perf_counter()
            recall, cs = evaluate(make(seed), *data)
            seconds[name] += time.perf_counter() - start
            results[name].append(recall)
            chosen[name].append(cs)
        start = time.perf_counter()
        recall, c = oracle(*data, grid)
        seconds["oracle: best single C on test"] += time.perf_counter() - start
        results["oracle: best single C on test"].append(recall)
        chosen["oracle: best single C on test"].append([c])
        print(f"seed {seed}: " + ", ".join(f"{100 * r[-1]:.1f}" for r in results.values()),
              flush=True)
    print(f"\n{args.classes} classes, {args.train} train / {args.test} test per class, "
          f"dim {args.dim}, C grid {grid}, {args.seeds} seeds")
    print(f"{'method':<42}{'mean class recall (%)':>24}{'distinct Cs per fit':>22}{'s/fit':>8}")
    for name, values in results.items():
        v = 100 * np.asarray(values)
        n_cs = np.mean([len(c) for c in chosen[name]])
        print(f"{name:<42}{v.mean():>15.2f} +- {v.std(ddof=1):.2f}{n_cs:>22.1f}"
              f"{seconds[name] / args.seeds:>8.1f}")
    paired = 100 * (np.asarray(results[list(methods)[1]]) - np.asarray(results[list(methods)[0]]))
    print(f"after - before, paired over seeds: {paired.mean():+.2f} +- {paired.std(ddof=1):.2f} "
          f"(min {paired.min():+.2f}, max {paired.max():+.2f})")
    shared = [c[0] for c in chosen[list(methods)[1]]]
    print(f"one C chosen per seed: {shared}; oracle C: "
          f"{[c[0] for c in chosen['oracle: best single C on test']]}")


if __name__ == "__main__":
    main()
