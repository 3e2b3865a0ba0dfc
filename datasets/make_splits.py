"""Write the seeded Caltech / custom splits that `vggfeat svm-eval` would draw, without
fitting anything, so they can be inspected or shared (`svm-eval --splits-file`).

    python datasets/make_splits.py caltech101 ~/data/caltech --out splits.csv --seed 0
"""
from __future__ import annotations

import argparse
from pathlib import Path

from vggfeat.data.readers import open_dataset
from vggfeat.evaluation.protocols import (
    CALTECH_SPLITS,
    CUSTOM_TEST_FRACTION,
    draw_splits,
    write_splits,
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=["caltech101", "caltech256", "folder"])
    parser.add_argument("root", type=Path)
    parser.add_argument("--out", type=Path, default=Path("splits.csv"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--splits", type=int, default=3)
    parser.add_argument("--drop-background", action="store_true", help="caltech101 only")
    args = parser.parse_args()
    options = {"drop_background": True} if args.drop_background else {}
    labels = open_dataset(args.dataset, args.root, **options).labels()
    if args.dataset in CALTECH_SPLITS:
        n_train, n_test = CALTECH_SPLITS[args.dataset]
        splits = draw_splits(labels, n_train, n_test, args.splits, args.seed)
    else:
        splits = draw_splits(labels, None, None, args.splits, args.seed,
                             test_fraction=CUSTOM_TEST_FRACTION)
    print(write_splits(args.out, splits, labels))


if __name__ == "__main__":
    main()
