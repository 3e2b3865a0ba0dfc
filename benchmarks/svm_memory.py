"""Peak memory of svm-eval and `features export`, and the time to write scores.csv (issue 22).

(a) `memory`: builds a cache of --rows x --scales x --dim random float32 rows through the
    cache writer (dataset "synthetic", with stored labels of --classes classes and a
    train/test split, so svm-eval evaluates it as the Python API's caches), then runs, as
    subprocesses, `vggfeat svm-eval --C 1 --aggregate avg|stack` and `vggfeat features
    export --to npy` with the code at --before (the base commit, unpacked with `git
    archive`) and with this checkout, each under /usr/bin/time -v (its maximum resident
    set size). The float32 descriptors used (n x D x 4 bytes) and the fixed start (each
    command's peak on a cache of `FIXED_ROWS` rows: imports, the solver) are printed
    beside. Deletes its files at the end.
(b) `scores`: a `Result` of --score-rows test rows x --classes classes; times keeping
    the rows (`score_rows`) and writing scores.csv with the code at --before and with this
    checkout (each in a subprocess), checks the two files are the same bytes, and deletes
    them.

    git archive <base> vggfeat | tar -x -C /tmp/base
    python benchmarks/svm_memory.py memory --rows 20000 --before /tmp/base
    python benchmarks/svm_memory.py scores --score-rows 200000 --before /tmp/base
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
BLOCK = 1000  # random rows generated at a time
# A tenth of the images train: the fit is quick, the read (all rows) is what is measured.
TRAIN_EVERY = 10
FIXED_ROWS = 200  # the cache whose peak is taken as the process's fixed start


def machine() -> str:
    flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("flags")).split()
    vector = " ".join(f for f in flags if f.startswith(("avx", "amx", "fma")))
    return f"{os.cpu_count()} cores; {vector}; load average {os.getloadavg()}"


def build(out: Path, rows: int, scales: int, dim: int, classes: int) -> None:
    """A finished cache of random rows with stored labels and a train/test split."""
    from vggfeat.features import cache
    from vggfeat.features.descriptor import DescriptorConfig

    pre = {"mean": [0.5] * 3, "std": [0.25] * 3, "channel_order": "RGB", "value_scale": 1.0}
    config = DescriptorConfig(arch="vgg16", weights_sha256="ab" * 32, preprocessing=pre,
                              scales=tuple(256 + 128 * k for k in range(scales)))
    attrs = cache.cache_attributes(config, dataset="synthetic")
    ids = [f"img{k:07d}" for k in range(rows)]
    partial = cache.open_for_writing(out, attrs, {"/": ids}, dim, log=lambda m: None)
    writer = cache.RowWriter(partial, flush_every=BLOCK)
    rng = np.random.default_rng(0)
    label = np.arange(rows) % classes
    centres = rng.standard_normal((classes, scales, dim), dtype=np.float32)
    for start in range(0, rows, BLOCK):
        block = rng.random((BLOCK, scales, dim), dtype=np.float32)
        for k in range(start, min(start + BLOCK, rows)):
            writer.put(k, block[k - start] + centres[label[k]])
    writer.file.flush()
    writer.file.close()
    y = np.where(label[:, None] == np.arange(classes), 1, -1).astype(np.int8)
    # every TRAIN_EVERY-th round of the classes trains: each class has training images
    splits = np.where((np.arange(rows) // classes) % TRAIN_EVERY == 0, "train", "test")
    cache.write_labels(cache.partial_path(out), [f"c{k}" for k in range(classes)], y,
                       list(splits))
    cache.finalize(out)


def peak(command: list[str], code: str, cwd: Path) -> tuple[float, float]:
    """(max RSS in MiB, seconds) of `command` run with the package at `code`."""
    env = {**os.environ, "PYTHONPATH": code, "PYTHONDONTWRITEBYTECODE": "1"}
    begin = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *command], env=env, cwd=cwd,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - begin
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)[1])
    return kib / 1024, seconds


def memory(args) -> None:
    print(f"machine: {machine()}")
    folder = Path(tempfile.mkdtemp(dir=args.dir, prefix="vggfeat-svm-memory-"))
    try:
        path = folder / "synthetic.h5"
        begin = time.perf_counter()
        build(path, args.rows, args.scales, args.dim, args.classes)
        print(f"built {path.stat().st_size / 2**20:.0f} MiB ({args.rows} rows of {args.scales}"
              f" x {args.dim} float32, {args.classes} classes) in "
              f"{time.perf_counter() - begin:.0f} s")
        tiny = folder / "tiny.h5"
        build(tiny, FIXED_ROWS, args.scales, args.dim, args.classes)
        for aggregate in ("avg", "stack"):
            fixed = {command: peak(line, str(REPO), folder)[0] for command, line
                     in commands(tiny, aggregate, folder / f"fixed-{{}}-{aggregate}").items()}
            print(f"fixed start ({FIXED_ROWS} rows, {aggregate}): " + ", ".join(
                f"{command} {rss:.0f} MiB" for command, rss in fixed.items()))
            width = args.dim * (args.scales if aggregate == "stack" else 1)
            used = args.rows * width * 4 / 2**20
            for name, code in (("before", args.before), ("after", str(REPO))):
                lines = commands(path, aggregate, folder / f"{{}}-{name}-{aggregate}")
                for command, line in lines.items():
                    rss, seconds = peak(line, code, folder)
                    report(command, name, aggregate, rss, seconds, used, fixed[command])
            same = all((folder / f"{what}-before-{aggregate}{suffix}").read_bytes()
                       == (folder / f"{what}-after-{aggregate}{suffix}").read_bytes()
                       for what, suffix in (("x", ".npy"), ("eval", "/scores.csv")))
            print(f"  {aggregate}: export .npy and scores.csv before == after: {same}")
            for stale in folder.glob(f"*-{aggregate}*"):
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    finally:
        shutil.rmtree(folder)
    print(f"load average at the end: {os.getloadavg()}")


def commands(path: Path, aggregate: str, out: Path) -> dict[str, list[str]]:
    """svm-eval (--C 1, the CPU) and export (npy) of `path`; their outputs at `out`
    formatted with "eval" and "x"."""
    vggfeat = [sys.executable, "-m", "vggfeat"]
    return {"svm-eval": [*vggfeat, "svm-eval", str(path), "--C", "1", "--aggregate", aggregate,
                         "--device", "cpu", "--out", str(out).format("eval")],
            "export": [*vggfeat, "features", "export", str(path), "--to", "npy", "--aggregate",
                       aggregate, "--out", str(out).format("x") + ".npy"]}


def report(what, name, aggregate, rss, seconds, used, fixed) -> None:
    print(f"{what:>8} {aggregate:>5} {name:>6}: peak {rss:7.0f} MiB = fixed {fixed:.0f} + "
          f"{(rss - fixed) / used:4.2f} x {used:.0f} MiB descriptors used ({seconds:.0f} s)")


SCORES = """
import sys, time
import numpy as np
from pathlib import Path
from vggfeat.evaluation import report
from vggfeat.evaluation.protocols.common import Result, score_rows
rows, classes, out = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
names = tuple(f"class{k}" for k in range(classes))
result = Result("synthetic", "", names)
rng = np.random.default_rng(0)
ids = [f"img{k:07d}" for k in range(rows)]
values, truth = rng.standard_normal((rows, classes)), [names[k % classes] for k in range(rows)]
begin = time.perf_counter()
score_rows(result, "0", ids, values, truth)  # the base commit: one dict per row
kept = time.perf_counter()
if hasattr(report, "write_scores"):
    report.write_scores(out, result)
else:  # the base commit: csv.DictWriter over the dicts
    report._write_csv(out, result.scores)
print(f"{kept - begin:.2f} {time.perf_counter() - kept:.2f}")
"""


def scores(args) -> None:
    print(f"machine: {machine()}")
    folder = Path(tempfile.mkdtemp(dir=args.dir, prefix="vggfeat-scores-"))
    try:
        files = {}
        for name, code in (("before", args.before), ("after", str(REPO))):
            files[name] = folder / f"scores-{name}.csv"
            env = {**os.environ, "PYTHONPATH": code, "PYTHONDONTWRITEBYTECODE": "1"}
            load = os.getloadavg()[0]
            done = subprocess.run([sys.executable, "-c", SCORES, str(args.score_rows),
                                   str(args.classes), str(files[name])], env=env, cwd=folder,
                                  capture_output=True, text=True, check=True)
            size = files[name].stat().st_size / 2**20
            keep, write = map(float, done.stdout.split()[-2:])
            print(f"scores.csv {name:>6}: keep the rows {keep:5.2f} s + write {write:5.2f} s "
                  f"= {keep + write:5.2f} s for {args.score_rows} rows x {args.classes} "
                  f"classes ({size:.0f} MiB, load {load:.2f})")
        same = files["before"].read_bytes() == files["after"].read_bytes()
        print(f"same bytes: {same}")
    finally:
        shutil.rmtree(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["memory", "scores"])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--scales", type=int, default=3)
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--score-rows", type=int, default=200_000)
    parser.add_argument("--before", required=True, help="code folder of the base commit")
    parser.add_argument("--dir", default=None, help="where to write [default: the temp dir]")
    args = parser.parse_args()
    (memory if args.what == "memory" else scores)(args)


if __name__ == "__main__":
    main()
