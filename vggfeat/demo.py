"""The paper's transfer result in miniature, on real data, on the CPU, in minutes.

    python -m vggfeat.demo --out demo_out [--quick] [--seed 0]

The story of the paper's Appendix B, scaled down to scikit-learn's handwritten digits:

1. ``vggfeat datasets make-digits --clutter``: the 1,797 UCI digits as image files, each
   digit at a random size (22-40 px) and place on a 64x64 canvas with noise and faded
   fragments of other digits; digits 0-4 for the backbone (train/val), 5-9 for transfer.
2. ``vggfeat train-backbone``: a narrow VGG-A with batch norm (``vgg11-bn``, width 0.125,
   64-pixel crops, Glorot init) on digits 0-4 only. The same command with ``--epochs 0``
   saves the same net untrained (its initial weights, same seed): the random-backbone
   control.
3. ``vggfeat extract``: multi-scale fc7 descriptors of digits 5-9, which the backbone never
   saw, with each backbone.
4. ``vggfeat svm-eval``: linear SVMs with a Caltech-style protocol (a fixed number of
   training images per class, 3 seeded splits, mean class recall +- std) on each.
5. Raw pixels through the same SVM protocol (svm-eval's library call, in-process).
6. One table (printed, ``results.csv``, ``results.md``) and a plot (``results.png``).

Why the clutter: on plain centred digits raw pixels won (95.9 against 89.6 for the trained
net): 8x8 digits are nearly linearly separable in pixel space, which says nothing about
what the paper's descriptor is for. A digit that may sit anywhere, at any of several
sizes, among pieces of other digits is a poor match for a pixel template, while a
descriptor pooled over positions and scales is invariant to both by construction. On
seeds 0-4 (2-core CPU, figures in the README) the trained net scored 44-62% mean class
recall, the untrained one 25-30%, raw pixels 22-25% (chance 20%). Plain VGG-A (no batch
norm) with the same settings stayed at loss ln 5 for all 20 epochs: it learned nothing.

Every CLI step is printed as ``$ vggfeat ...`` and run as a subprocess of this Python, so
any line can be copied onto one's own data. Rerunning with the same options into the same
folder reuses the finished steps (a different configuration is refused, never mixed).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from vggfeat.utils import atomic, interrupts
from vggfeat.utils.threads import torch_threads


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo; `QUICK` is the test suite's reduced version."""

    size: int = 64                        # written canvas side; also the training crop
    clutter: bool = True                  # digits placed at random on a cluttered canvas
    per_class: int | None = None          # images per digit (None: all, about 180)
    arch: str = "vgg11-bn"                # VGG-A with batch norm; plain A did not learn here
    width: float = 0.125                  # channel multiplier: 8..64 channels, CPU minutes
    epochs: int = 20
    batch_size: int = 32
    lr: float = 0.02
    scale_jitter: tuple[int, int] = (64, 80)    # training S range: random crops and scales
    scales: tuple[int, ...] = (64, 96, 128)     # extraction Q values, stacked (Caltech)
    train_per_class: int = 30             # Caltech-101's protocol: 30 training images
    test_per_class: int = 50              # ... and up to 50 test images per class
    splits: int = 3
    # One C for every class. Choosing C per class on 20% of 30 images (svm-eval's default)
    # is mostly noise at this size, and per-class Cs make one-vs-rest scores incomparable.
    C: float | None = 10.0
    seed: int = 0
    # Torch threads of every step. Float sums come out in another order with another count
    # of threads, and 20 epochs of training can carry that into the figures; a fixed count
    # gives the same figures whatever the machine's cores (on the same kind of CPU).
    threads: int = 1


FULL = DemoConfig()
# A smoke run of the same pipeline (the test suite's and `--quick`'s): 60 images per digit,
# 3 epochs, one scale. Too small for the trained net to beat the random one; only FULL
# shows that (see the module docstring).
QUICK = replace(FULL, per_class=60, epochs=3, scales=(64,), train_per_class=15,
                test_per_class=30)

# Inputs in [0, 1] normalised with ImageNet's statistics, pinned so that the figures do not
# move with the trainer's default (the paper's 0..255 minus the mean RGB since it changed).
PREPROCESSING = ("--preprocessing", "torchvision", "--mean", "0.485,0.456,0.406",
                 "--std", "0.229,0.224,0.225")
RESULTS_CSV, RESULTS_MD, RESULTS_PNG = "results.csv", "results.md", "results.png"
STATE = "demo.json"  # the configuration a folder was made with


class DemoError(RuntimeError):
    """A step failed or the output folder holds another demo; the message says what to do."""


def command_line(args: list[str]) -> str:
    """How a user types a step: `vggfeat ...`, arguments shell-quoted."""
    return "vggfeat " + " ".join(shlex.quote(str(a)) for a in args)


def run_step(args: list[str], *, echo, quiet: bool, threads: int | None = None) -> None:
    """Print a step as `$ vggfeat ...` and run it with this interpreter (sys.executable),
    with `threads` torch threads (OMP_NUM_THREADS) when given."""
    echo(f"$ {command_line(args)}")
    stdout = subprocess.DEVNULL if quiet else None
    stderr = subprocess.PIPE if quiet else None
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    note = interrupts.progress_note(lambda: "finished steps are kept; rerun the same command "
                                    f"to continue (it resumes at `{command_line(args)}`)")
    with note, subprocess.Popen([sys.executable, "-m", "vggfeat", *map(str, args)],
                                stdout=stdout, stderr=stderr, text=True, env=env) as step:
        try:
            _, errors = step.communicate()
        except interrupts.Interrupted:
            _stop_step(step)
            raise
    if step.returncode != 0:
        tail = (errors or "")[-2000:] if quiet else "(see the messages above)"
        raise DemoError(f"step failed with exit status {step.returncode}: "
                        f"{command_line(args)}\n{tail}")


def _stop_step(step: subprocess.Popen) -> None:
    """Stop a running step as the demo was stopped: SIGTERM, which the step answers by
    closing its files at a safe point (a step that got the terminal's Ctrl-C too is
    already stopping, and ignores it); killed if it has not ended in a minute."""
    step.send_signal(signal.SIGTERM)
    try:
        step.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        step.kill()


# -- the steps -------------------------------------------------------------------------


def make_digits_step(cfg: DemoConfig, out: Path, **kw) -> Path:
    digits = out / "digits"
    if not (digits / "digits.json").is_file():
        args = ["datasets", "make-digits", digits, "--size", cfg.size, "--seed", cfg.seed]
        if cfg.per_class:
            args += ["--per-class", cfg.per_class]
        if cfg.clutter:
            args.append("--clutter")
        run_step(args, **kw)
    return digits


def train_args(cfg: DemoConfig, data: Path, run_dir: Path, epochs: int) -> list:
    """The train-backbone command line (also the `vggfeat datasets --help` example's).

    The preprocessing is given explicitly: the results should not move if the trainer's
    default ever changes.
    """
    return ["train-backbone", "--root", data, "--out", run_dir, "--arch", cfg.arch,
            "--width", cfg.width, "--crop-size", cfg.size,
            "--scale-jitter", *cfg.scale_jitter, "--val-scale", cfg.size,
            "--init", "xavier", "--epochs", epochs, "--batch-size", cfg.batch_size,
            "--lr", cfg.lr, "--color-shift", 0, *PREPROCESSING, "--workers", 0,
            "--device", "cpu", "--seed", cfg.seed]


def train_step(cfg: DemoConfig, data: Path, run_dir: Path, epochs: int, **kw) -> Path:
    """train-backbone into run_dir (resumed if interrupted); returns the backbone file."""
    backbone = run_dir / "backbone.pth"
    if backbone.is_file():
        return backbone
    args = train_args(cfg, data, run_dir, epochs)
    if (run_dir / "checkpoint.pth").is_file():
        args.append("--resume")
    run_step(args + (["--quiet"] if kw["quiet"] else []), **kw)
    return backbone


def extract_step(cfg: DemoConfig, root: Path, weights: Path, cache: Path, **kw) -> Path:
    """extract fc7 descriptors of the transfer digits (resumes by itself)."""
    if not cache.is_file():
        args = ["extract", "--dataset", "folder", "--root", root, "--weights", weights,
                "--scales", ",".join(map(str, cfg.scales)), "--layer", "fc7",
                "--device", "cpu", "--batch-size", 64, "--out", cache]
        run_step(args + (["--quiet"] if kw["quiet"] else []), **kw)
    return cache


def splits_step(cfg: DemoConfig, root: Path, out: Path, *, echo) -> Path:
    """The Caltech-style splits of the transfer digits, drawn once and shared by every row.

    `vggfeat.evaluation.protocols.draw_splits`: per class, seeded, `train_per_class` to
    train and up to `test_per_class` to test; written as splits.csv for svm-eval.
    """
    from vggfeat.data.readers import open_dataset
    from vggfeat.evaluation.protocols import draw_splits, write_splits

    path = out / "splits.csv"
    if not path.is_file():
        labels = open_dataset("folder", root).labels()
        splits = draw_splits(labels, cfg.train_per_class, cfg.test_per_class, cfg.splits,
                             cfg.seed)
        write_splits(path, splits, labels)
        echo(f"# {cfg.splits} seeded splits, {cfg.train_per_class} train / up to "
             f"{cfg.test_per_class} test images per class: {path}")
    return path


def pixel_vectors(root: Path) -> tuple[list[str], np.ndarray]:
    """Each transfer image as its grayscale pixels, L2-normalised like the descriptors."""
    from vggfeat.data.images import open_rgb
    from vggfeat.data.readers import open_dataset

    samples = open_dataset("folder", root).images()
    X = np.stack([np.asarray(open_rgb(s.path).convert("L"), dtype=np.float64).ravel()
                  for s in samples])
    X /= np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    return [s.id for s in samples], X.astype(np.float32)


def svm_eval_step(cfg: DemoConfig, cache: Path, splits: Path, out: Path, **kw) -> dict:
    """svm-eval with the shared splits; returns its summary.json."""
    summary = out / "summary.json"
    if not summary.is_file():
        args = ["svm-eval", cache, "--aggregate", "stack", "--splits-file", splits,
                "--seed", cfg.seed, "--out", out]
        if cfg.C is not None:
            args += ["--C", cfg.C]
        run_step(args + (["--quiet"] if kw["quiet"] else []), **kw)
    return json.loads(summary.read_text())


def pixels_step(cfg: DemoConfig, root: Path, splits: Path, out: Path, *, echo) -> dict:
    """Raw pixels through the same protocol and splits, in-process: svm-eval's second half
    (`vggfeat.evaluation.evaluate_features`), with its folder checks and report files."""
    from vggfeat.data.readers import open_dataset
    from vggfeat.evaluation import Features, Settings, evaluate_features

    summary = out / "summary.json"
    if not summary.is_file():
        settings = Settings(splits_file=splits, seed=cfg.seed)
        if cfg.C is not None:
            settings = replace(settings, C=(float(cfg.C),))
        echo("# raw pixels: vggfeat.evaluation.evaluate_features(reader, pixels, Settings("
             f"splits_file={str(splits)!r}, C={settings.C}), {str(out)!r})")
        ids, X = pixel_vectors(root)
        source = {"path": str(root), "arch": "pixels", "layer": f"{X.shape[1]} pixels"}
        pixels = Features(ids, X, [root], own_rows=True)  # ours: training rows move, no copy
        evaluate_features(open_dataset("folder", root), pixels, settings, out, sources=[source])
    return json.loads(summary.read_text())


# -- the comparison --------------------------------------------------------------------


def descriptor_dim(cache: Path) -> int:
    from vggfeat.features.cache import read_overview

    images = read_overview(cache).counts["images"]
    return images["scales"] * images["dimension"]


def table_rows(cfg: DemoConfig, summaries: dict[str, dict], dims: dict[str, int]) -> list[dict]:
    """One row per method: mean class recall +- std over the splits, in percent."""
    scales = ",".join(map(str, cfg.scales))
    what = {
        "trained": ("VGG-A-BN trained on digits 0-4", f"fc7, Q={scales} stacked"),
        "random": ("VGG-A-BN, same init, untrained", f"fc7, Q={scales} stacked"),
        "pixels": ("none (raw pixels)", f"{cfg.size}x{cfg.size} grayscale"),
    }
    rows = []
    for key, summary in summaries.items():
        head = summary["headline"]
        backbone, descriptor = what[key]
        rows.append({
            "method": key, "backbone": backbone, "descriptor": descriptor, "dim": dims[key],
            "mean_class_recall": round(100 * head["mean_class_recall"], 2),
            "std": round(100 * head["mean_class_recall_std"], 2),
            "per_split": " ".join(f"{100 * r:.1f}" for r in head["mean_class_recall_per_split"]),
        })
    return rows


def format_markdown(rows: list[dict], cfg: DemoConfig) -> str:
    lines = [f"Digits 5-9 (never seen by the backbone), {cfg.train_per_class} training images "
             f"per class, {cfg.splits} seeded splits (seed {cfg.seed}); linear SVMs, "
             "mean class recall (%)", "",
             "| backbone | descriptor | dim | mean class recall | per split |",
             "|---|---|---:|---:|---|"]
    lines += [f"| {r['backbone']} | {r['descriptor']} | {r['dim']} | "
              f"{r['mean_class_recall']:.1f} +- {r['std']:.1f} | {r['per_split']} |"
              for r in rows]
    return "\n".join(lines) + "\n"


def write_table(rows: list[dict], cfg: DemoConfig, out: Path) -> str:
    with atomic.open_text(out / RESULTS_CSV, newline="") as fh:  # whole or absent
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    text = format_markdown(rows, cfg)
    atomic.write_text(out / RESULTS_MD, text)
    return text


def plot(rows: list[dict], summaries: dict[str, dict], cfg: DemoConfig, path: Path) -> Path:
    """Bars: mean class recall +- std; dots: the individual splits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    x = np.arange(len(rows))
    means = [r["mean_class_recall"] for r in rows]
    ax.bar(x, means, yerr=[r["std"] for r in rows], capsize=6,
           color=["#2a6f97", "#a9a9a9", "#e09f3e"][: len(rows)])
    for k, row in enumerate(rows):
        per = [100 * v for v in summaries[row["method"]]["headline"]["mean_class_recall_per_split"]]
        ax.plot(np.full(len(per), k), per, "k.", alpha=0.6)
        ax.text(k + 0.42, means[k], f"{means[k]:.1f}", ha="right", va="bottom", fontsize=9)
    ax.set_xticks(x, [r["backbone"].replace(" trained on", "\ntrained on")
                      .replace(", same", ",\nsame") for r in rows], fontsize=8)
    low = min(min(means) - 15, 50)
    ax.set_ylim(max(0, low), 100)
    ax.set_ylabel("mean class recall (%)")
    ax.set_title(f"Transfer to unseen digits 5-9 ({cfg.train_per_class} train/class, "
                 f"{cfg.splits} splits)", fontsize=10)
    fig.tight_layout()
    with atomic.replacing(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path


# -- the whole run ---------------------------------------------------------------------


def check_state(cfg: DemoConfig, out: Path) -> None:
    """Refuse an output folder holding a demo made with another configuration."""
    state = out / STATE
    wanted = json.loads(json.dumps(asdict(cfg)))
    if state.is_file():
        found = json.loads(state.read_text())
        if found != wanted:
            diff = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
            raise DemoError(f"{out} holds a demo made with other settings ({', '.join(diff)}); "
                            "choose another --out or delete that folder")
    elif out.exists() and any(out.iterdir()):
        raise DemoError(f"{out} is not empty and holds no demo ({state} missing); "
                        "choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(state, json.dumps(wanted, indent=1) + "\n")


def run_demo(out, cfg: DemoConfig = FULL, *, quiet: bool = False, echo=print) -> list[dict]:
    """Run every step into `out`; returns the table rows (also written to `out`)."""
    out = Path(out).expanduser()  # relative stays relative: the printed commands stay short
    check_state(cfg, out)
    kw = {"echo": echo, "quiet": quiet, "threads": cfg.threads}
    echo(f"# every step with {cfg.threads} torch thread(s) (OMP_NUM_THREADS={cfg.threads}): "
         "the figures do not depend on the machine's cores")
    digits = make_digits_step(cfg, out, **kw)
    transfer = digits / "transfer"
    runs = {"trained": train_step(cfg, digits / "backbone", out / "runs" / "trained",
                                  cfg.epochs, **kw),
            # --epochs 0 saves the initial net: the same seed gives the trained net's start.
            "random": train_step(cfg, digits / "backbone", out / "runs" / "random", 0, **kw)}
    splits = splits_step(cfg, transfer, out, echo=echo)
    summaries, dims = {}, {}
    for name, weights in runs.items():
        cache = extract_step(cfg, transfer, weights, out / "features" / f"{name}-fc7.h5", **kw)
        summaries[name] = svm_eval_step(cfg, cache, splits, out / "svm" / name, **kw)
        dims[name] = descriptor_dim(cache)
    with torch_threads(cfg.threads):
        summaries["pixels"] = pixels_step(cfg, transfer, splits, out / "svm" / "pixels",
                                          echo=echo)
    dims["pixels"] = cfg.size * cfg.size
    rows = table_rows(cfg, summaries, dims)
    echo("")
    echo(write_table(rows, cfg, out))
    plot(rows, summaries, cfg, out / RESULTS_PNG)
    echo(f"table: {out / RESULTS_MD}, {out / RESULTS_CSV}; plot: {out / RESULTS_PNG}")
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m vggfeat.demo",
        description="The VGG paper's transfer result in miniature, on scikit-learn's digits.",
        epilog="Example: python -m vggfeat.demo --out demo_out")
    parser.add_argument("--out", type=Path, default=Path("demo_out"),
                        help="output folder (default: demo_out); rerunning resumes")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: fewer images, epochs and scales (about a minute); "
                             "too small for the trained backbone to win")
    parser.add_argument("--seed", type=int, default=0, help="decides everything (default 0)")
    parser.add_argument("--threads", type=int, default=FULL.threads,
                        help="torch threads of every step (default 1: the same figures "
                             "whatever the cores; other counts give slightly different ones)")
    parser.add_argument("--quiet", action="store_true", help="only the commands and the table")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = replace(QUICK if args.quick else FULL, seed=args.seed, threads=args.threads)
    start = time.perf_counter()
    interrupts.guard_streams()  # a closed pipe or a hang-up never ends the demo
    interrupts.install()  # Ctrl-C / SIGTERM: the running step stops, one line, 130 / 143
    try:
        run_demo(args.out, cfg, quiet=args.quiet)
    except DemoError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except interrupts.Interrupted as stopped:
        print(stopped, file=sys.stderr)
        return stopped.exit_code
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
