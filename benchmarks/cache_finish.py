"""The feature cache's checksum cost, and the time to finish a large cache (issue 19).

(a) `checksums`: writes N random float32 rows through `cache.RowWriter` with and without
    the per-row CRC-32 (without: the writer of a cache from an older vggfeat), then reads
    them back with `read_done_rows` with and without verification. Per-row costs are
    printed beside an extraction's time per row (give it with --extract-ms).
(b) `finish`: builds a cache of --rows x --scales x --dim float32 random rows (>= 5 GB by
    default) through the cache writer, with one failed image and labels to store, copies
    it, and times the end of a run on each copy: in a subprocess running the code at
    --before (e.g. the base commit, unpacked with `git archive`), and in one running this
    checkout. Prints CPU flags and the load average. Deletes its files at the end.

    python benchmarks/cache_finish.py checksums --rows 20000
    git archive 50006fd vggfeat | tar -x -C /tmp/base
    python benchmarks/cache_finish.py finish --rows 330000 --before /tmp/base
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
BLOCK = 1000  # random rows generated at a time


def machine() -> str:
    flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("flags")).split()
    vector = " ".join(f for f in flags if f.startswith(("avx", "amx", "fma")))
    return f"{os.cpu_count()} cores; {vector}; load average {os.getloadavg()}"


def attrs(scales: int):
    from vggfeat.features import cache
    from vggfeat.features.descriptor import DescriptorConfig

    pre = {"mean": [0.5] * 3, "std": [0.25] * 3, "channel_order": "RGB", "value_scale": 1.0}
    config = DescriptorConfig(arch="vgg16", weights_sha256="ab" * 32, preprocessing=pre,
                              scales=tuple(256 + 128 * k for k in range(scales)))
    return cache.cache_attributes(config, dataset="folder")


def build(out: Path, rows: int, scales: int, dim: int, *, checksums: bool = True,
          skip_last: bool = False) -> float:
    """Write `rows` random rows into OUT.partial; seconds spent in the writer."""
    from vggfeat.features import cache

    ids = [f"img{k:07d}" for k in range(rows)]
    partial = cache.open_for_writing(out, attrs(scales), {"/": ids}, dim, log=lambda m: None)
    writer = cache.RowWriter(partial, flush_every=1000)
    if not checksums:
        writer.checksums = None  # as the writer of an older vggfeat: no CRC, no dataset write
    rng, spent = np.random.default_rng(0), 0.0
    for start in range(0, rows - skip_last, BLOCK):
        block = rng.random((BLOCK, scales, dim), dtype=np.float32)
        begin = time.perf_counter()
        for k in range(start, min(start + BLOCK, rows - skip_last)):
            writer.put(k, block[k - start])
        spent += time.perf_counter() - begin
    writer.file.flush()
    writer.file.close()
    return spent


def checksums(args) -> None:
    import h5py

    from vggfeat.features import cache

    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        with_path, without_path = Path(tmp) / "with.h5", Path(tmp) / "without.h5"
        times = {"write with": build(with_path, args.rows, args.scales, args.dim),
                 "write without": build(without_path, args.rows, args.scales, args.dim,
                                        checksums=False)}
        with h5py.File(cache.partial_path(without_path), "r+") as f:
            del f["checksums"]  # read as a cache from an older vggfeat
        for name, path in (("read with", with_path), ("read without", without_path)):
            best = []
            for _ in range(args.repeats):  # the file is in the page cache: CPU cost only
                begin = time.perf_counter()
                cache.read_done_rows(cache.partial_path(path))
                best.append(time.perf_counter() - begin)
            times[name] = min(best)
        row_kb = args.scales * args.dim * 4 / 1024
        print(f"{args.rows} rows of {args.scales} x {args.dim} float32 ({row_kb:.0f} KiB "
              f"each, {args.rows * row_kb / 2**20:.2f} GiB)")
        for name, seconds in times.items():
            print(f"{name:>14} checksums: {seconds:7.2f} s  {1e6 * seconds / args.rows:7.1f} "
                  "us/row")
        for op in ("write", "read"):
            extra = (times[f"{op} with"] - times[f"{op} without"]) / args.rows
            print(f"checksum cost on {op}: {1e6 * extra:.1f} us/row = "
                  f"{100 * extra / (args.extract_ms / 1e3):.2f}% of {args.extract_ms} ms "
                  "extraction per row")
    print(f"load average at the end: {os.getloadavg()}")


FINISH = """
import sys, time
import numpy as np
from pathlib import Path
from vggfeat.features import cache
out, rows = Path(sys.argv[1]), int(sys.argv[2])
table = (["a", "b"], np.where(np.arange(rows)[:, None] % 2 == np.arange(2), 1, -1), None)
begin = last = time.perf_counter()
laps = []
def lap(name):
    global last
    now = time.perf_counter()
    laps.append(f"{name} {now - last:.2f}")
    last = now
writer = cache.RowWriter(cache.partial_path(out))
writer.fail(rows - 1, "cannot identify image file")
writer.close()
lap("failures")
try:
    from vggfeat.features.pipeline import _finish
except ImportError:  # the base commit's end of a run
    cache.merge_shards(out, print)
    cache.write_labels(cache.partial_path(out), *table)
    lap("labels")
    cache.finalize(out)
    cache.store_variation(out)
    lap("rename+variation")
else:
    _finish(out, table, print)
    lap("labels+variation+rename")
print("; ".join(laps))
print(f"{time.perf_counter() - begin:.2f}")
"""


def finish(args) -> None:
    print(f"machine: {machine()}")
    folder = Path(tempfile.mkdtemp(dir=args.dir, prefix="vggfeat-finish-"))
    try:
        after = folder / "after.h5"
        begin = time.perf_counter()
        build(after, args.rows, args.scales, args.dim, skip_last=True)
        from vggfeat.features import cache

        size = cache.partial_path(after).stat().st_size
        print(f"built {size / 1e9:.2f} GB ({args.rows} rows of {args.scales} x {args.dim} "
              f"float32) in {time.perf_counter() - begin:.0f} s")
        before = folder / "before.h5"
        shutil.copyfile(cache.partial_path(after), cache.partial_path(before))
        for name, code, out in (("before", args.before, before), ("after", str(REPO), after)):
            env = {**os.environ, "PYTHONPATH": code, "PYTHONDONTWRITEBYTECODE": "1"}
            load = os.getloadavg()[0]
            done = subprocess.run([sys.executable, "-c", FINISH, str(out), str(args.rows)],
                                  env=env, capture_output=True, text=True, check=True,
                                  cwd=folder)  # not this checkout: `-c` puts cwd first
            *_, steps, seconds = done.stdout.strip().splitlines()
            print(f"finish {name:>6} ({code}): {float(seconds):8.2f} s (load {load:.2f}): "
                  f"{steps}")
            assert out.exists() and not cache.partial_path(out).exists()
    finally:
        shutil.rmtree(folder)
    print(f"load average at the end: {os.getloadavg()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["checksums", "finish"])
    parser.add_argument("--rows", type=int, default=330_000)
    parser.add_argument("--scales", type=int, default=1)
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--extract-ms", type=float, default=1.8,
                        help="extraction time per image to compare with (1.8 ms: the H100 "
                             "target of 550 images/s)")
    parser.add_argument("--before", default=None, help="code folder of the base commit")
    parser.add_argument("--dir", default=None, help="where to write [default: the temp dir]")
    args = parser.parse_args()
    if args.what == "finish" and not args.before:
        parser.error("finish needs --before (the base commit's code folder)")
    (checksums if args.what == "checksums" else finish)(args)


if __name__ == "__main__":
    main()
