"""Several probes and training sizes in one svm-eval call, and the learning curve.

`run_evaluation` is `vggfeat svm-eval` whatever its ``--probe`` and ``--train-per-class``
lists: one probe at one size is `run.run_svm_eval` into OUT itself (as always); otherwise
each (probe, size) is a complete svm-eval folder under OUT:

    OUT/<probe>/n<size>/   several probes and several sizes
    OUT/n<size>/           one probe, several sizes
    OUT/<probe>/           several probes, one size (or the protocol's)

With several sizes, every size trains on the first images of the same seeded per-class
order and tests on the same images (drawn after the largest size: `Settings.test_from`),
and OUT holds ``learning_curve.csv`` (probe, train_per_class, split, the headline metric),
``learning_curve.png`` (mean +- std over splits per size, one line per probe) and
``learning_curve.json`` (what ran, where: what `vggfeat compare` reads).
"""
from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vggfeat.evaluation import run as single
from vggfeat.evaluation.inputs import EvaluationInputError
from vggfeat.evaluation.plotting import draw_plot, pyplot
from vggfeat.evaluation.protocols import Settings
from vggfeat.utils import atomic
from vggfeat.utils.atomic import ForeignFileError

CURVE_FILES = ("learning_curve.csv", "learning_curve.png", "learning_curve.json")
CURVE_KIND = "vggfeat svm-eval learning curve"
# Protocols whose training images per class `--train-per-class` sets.
CURVE_PROTOCOLS = ("caltech101", "caltech256", "folder", "csv")


@dataclass
class EvaluationRuns:
    """What `run_evaluation` produced: each (probe, size) run, every file written."""

    out: Path
    runs: dict = field(default_factory=dict)  # (probe, train_per_class) -> SvmEvalRun
    files: list[str] = field(default_factory=list)


def run_folder(out: Path, probe: str, size, probes: Sequence, sizes: Sequence) -> Path:
    """Where the (probe, size) run goes (see the module docstring)."""
    folder = Path(out)
    if len(probes) > 1:
        folder = folder / probe
    if len(sizes) > 1:
        folder = folder / f"n{size}"
    return folder


def run_evaluation(caches: Sequence, settings: Settings, *, probes: Sequence[str] = ("svm",),
                   train_sizes: Sequence | None = None, out=None, overwrite: bool = False,
                   echo=None, **options) -> EvaluationRuns:
    """Evaluate the caches with each probe at each training size (`options`: those of
    `run.run_svm_eval`: aggregate, block_l2, root, strict, layer)."""
    sizes = list(train_sizes or [settings.train_per_class])
    probes = list(dict.fromkeys(probes))
    out = Path(out) if out is not None else single.default_out(caches[0])
    curve = len(sizes) > 1
    settings = single._resolved(settings)
    plan = {}
    for probe in probes:
        for size in sizes:
            plan[run_folder(out, probe, size, probes, sizes)] = dataclasses.replace(
                settings, probe=probe, train_per_class=size,
                test_from=max(sizes) if curve else None)
    if curve:
        _refuse_foreign_curve(out, overwrite)
    runs = single.run_plan(caches, plan, overwrite=overwrite, echo=echo,
                           check=(lambda reader: check_curve(reader, settings)) if curve
                           else None, **options)
    result = EvaluationRuns(out, {(s.probe, s.train_per_class): r
                                  for s, r in zip(plan.values(), runs, strict=True)})
    result.files = sorted(f for r in runs for f in r.files)
    if curve:
        result.files += [str(p) for p in write_curve(result, out, plan, echo)]
    return result


def check_curve(reader, settings: Settings) -> None:
    """A learning curve needs a protocol whose training images per class are drawn."""
    name = getattr(reader, "protocol", None) or reader.name
    own_split = {"train", "test"} <= set(reader.splits()) or \
        {"train", "val"} <= set(reader.splits())
    if name not in CURVE_PROTOCOLS or reader.multi_label or own_split:
        raise EvaluationInputError(
            f"--train-per-class with several sizes: {reader.name} does not draw its "
            "training images per class (learning curves work on Caltech and single-label "
            "folder/csv data without their own train/test split); give one size")
    if settings.splits_file:
        raise EvaluationInputError(
            "--train-per-class with several sizes draws the training images of each size; "
            "it cannot be combined with --splits-file")


def _refuse_foreign_curve(out: Path, overwrite: bool) -> None:
    """Curve files in OUT that no vggfeat learning_curve.json claims are not replaced."""
    if overwrite or _ours(out / "learning_curve.json"):
        return
    foreign = [name for name in CURVE_FILES if (out / name).exists()]
    if foreign:
        raise ForeignFileError(
            f"--out {out} holds {', '.join(foreign)}, which vggfeat did not write; choose "
            "another --out, or pass --overwrite to replace them")


def _ours(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("kind") == CURVE_KIND
    except (OSError, ValueError, AttributeError):
        return False


def curve_rows(result: EvaluationRuns) -> list[dict]:
    """One row per probe, size and split: the headline metric of that split."""
    rows = []
    for (probe, size), run in result.runs.items():
        headline = run.result.headline
        metric = headline["headline"]
        for split, value in enumerate(headline[f"{metric}_per_split"]):
            rows.append({"probe": probe, "train_per_class": size, "split": split,
                         metric: float(value)})
    return rows


def write_curve(result: EvaluationRuns, out: Path, plan: dict, echo=None) -> list[Path]:
    """learning_curve.json (first: it claims the other two), .csv and .png in `out`; a
    .png that cannot be drawn is a warning through `echo` (`draw_plot`), not an error."""
    rows = curve_rows(result)
    metric = list(rows[0])[-1]
    record = {"kind": CURVE_KIND, "metric": metric,
              "runs": [{"probe": s.probe, "train_per_class": s.train_per_class,
                        "folder": str(folder.relative_to(out))} for folder, s in plan.items()]}
    written = [atomic.write_text(out / "learning_curve.json",
                                 json.dumps(record, indent=2) + "\n")]
    with atomic.open_text(out / "learning_curve.csv", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    written.append(out / "learning_curve.csv")
    png = out / "learning_curve.png"
    drawn = draw_plot(lambda: plot_curve(rows, metric, png), png, echo)
    return written + ([drawn] if drawn else [])


def plot_curve(rows: list[dict], metric: str, path: Path) -> Path:
    """Mean +- std (over splits) of the metric per training size, one line per probe."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    sizes = sorted({r["train_per_class"] for r in rows})
    for probe in dict.fromkeys(r["probe"] for r in rows):
        values = [[100 * r[metric] for r in rows
                   if r["probe"] == probe and r["train_per_class"] == n] for n in sizes]
        mean = np.array([np.mean(v) for v in values])
        std = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in values])
        ax.errorbar(sizes, mean, yerr=std, marker="o", capsize=3, lw=1.5, label=probe)
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.minorticks_off()
    ax.set_xlabel("training images per class", fontsize=10)
    ax.set_ylabel(f"{metric} (%), mean ± std over splits", fontsize=10)
    ax.set_ylim(0, 101)
    ax.grid(alpha=0.3)
    ax.legend(title="probe", fontsize=9)
    ax.set_title("learning curve (the same test images at every size)", fontsize=11)
    fig.tight_layout()
    with atomic.replacing(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
