"""Several `svm-eval` result folders side by side (`vggfeat compare`).

Each folder's ``summary.json`` gives the run's dataset, inputs (each cache's net and
layer), probe (``probe``; the SVM when absent, as in every folder written before the other
probes), settings and headline; its ``results.csv`` the per-class figures (recall, or AP
in the headline's variant), averaged over splits. A learning-curve folder (svm-eval with
several ``--train-per-class`` sizes or probes: its ``learning_curve.json``) stands for its
runs. So backbones x layers x probes (x sizes) go into one table, with probe, net, layer
and training size as columns. Runs are only comparable on the same dataset and test
images: `comparability_warnings` says when they are not (other dataset, other metric,
other test images).
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vggfeat.evaluation.plotting import draw_plot, pyplot
from vggfeat.utils import atomic


class CompareError(ValueError):
    """A folder that is not an svm-eval result; the message names it and the fix."""


@dataclass
class Run:
    """One svm-eval result folder."""

    folder: Path
    name: str
    summary: dict
    rows: list[dict]

    @property
    def headline(self) -> str:
        return self.summary["headline"]["headline"]

    @property
    def value(self) -> float:
        return 100 * float(self.summary["headline"][self.headline])

    @property
    def std(self) -> float | None:
        std = self.summary["headline"].get(f"{self.headline}_std")
        return None if std is None else 100 * float(std)

    @property
    def probe(self) -> str:
        return self.summary.get("probe", "svm")

    def inputs_field(self, key: str) -> str:
        """Each stacked cache's `key` (arch or layer), joined by '+'."""
        return "+".join(str(s.get(key, "?")) for s in self.summary.get("inputs", [])) or "?"

    @property
    def train_per_class(self):
        return self.summary.get("settings", {}).get("train_per_class")

    @property
    def n_splits(self) -> int:
        return int(self.summary.get("n_splits") or 1)

    def descriptor(self) -> str:
        """The inputs as one short string: net, layer and scales of each stacked cache."""
        parts = []
        for source in self.summary.get("inputs", []):
            scales = ",".join(str(s) for s in source.get("scales", []))
            parts.append(f"{source.get('arch', '?')} {source.get('layer', '?')} Q={scales}")
        settings = self.summary.get("settings", {})
        aggregate = settings.get("aggregate")
        return " + ".join(parts) + (f" ({aggregate})" if aggregate else "")

    def metric_column(self) -> str:
        if self.rows and "recall" in self.rows[0]:
            return "recall"
        return "ap_voc07" if self.headline.startswith("mAP_voc07") else "ap_voc10"

    def per_class(self) -> dict[str, float]:
        """Class -> the headline's per-class figure in %, averaged over splits."""
        column = self.metric_column()
        variant = self.headline.split("[")[1].rstrip("]") if "[" in self.headline else None
        values: dict[str, list[float]] = {}
        for row in self.rows:
            if variant is not None and not str(row["split"]).endswith(f":{variant}"):
                continue
            value = _float(row.get(column))
            if value is not None:
                values.setdefault(row["class"], []).append(100 * value)
        return {c: float(np.mean(v)) for c, v in values.items()}


def _float(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def load_run(folder) -> Run:
    """Read an svm-eval output folder (or its summary.json)."""
    folder = Path(folder)
    if folder.name == "summary.json":
        folder = folder.parent
    summary_path = folder / "summary.json"
    if not summary_path.is_file():
        raise CompareError(f"{folder}: no summary.json; give folders written by "
                           "`vggfeat svm-eval --out`")
    try:
        summary = json.loads(summary_path.read_text())
        summary["headline"]["headline"]
    except (ValueError, KeyError, TypeError) as error:
        raise CompareError(f"{summary_path}: not an svm-eval summary ({error})") from None
    rows = []
    if (folder / "results.csv").is_file():
        with (folder / "results.csv").open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    return Run(folder, folder.name, summary, rows)


def expand_curves(folders) -> list[Path]:
    """Each folder, or the run folders a learning-curve folder lists (in its order)."""
    expanded = []
    for folder in map(Path, folders):
        record = folder / "learning_curve.json"
        if not (folder / "summary.json").is_file() and record.is_file():
            try:
                runs = json.loads(record.read_text())["runs"]
                expanded += [folder / r["folder"] for r in runs]
                continue
            except (OSError, ValueError, KeyError, TypeError) as error:
                raise CompareError(f"{record}: not a vggfeat learning curve ({error})") \
                    from None
        expanded.append(folder)
    return expanded


def load_runs(folders) -> list[Run]:
    """Runs named by their folder's name, or by their path where two names are equal (a
    learning curve's runs by the curve's folder and their own, e.g. ``curve/knn/n5``)."""
    runs = []
    for folder in map(Path, folders):
        for path in expand_curves([folder]):
            run = load_run(path)
            if path != folder:
                run.name = f"{folder.name}/{path.relative_to(folder)}"
            runs.append(run)
    names = [r.name for r in runs]
    for run in runs:
        if names.count(run.name) > 1:
            run.name = str(run.folder)
    return runs


def _splits_digest(run: Run) -> str | None:
    """A digest of each split's test images (a learning curve's sizes share them)."""
    path = run.folder / "splits.csv"
    if not path.is_file():
        return None
    with path.open(newline="") as fh:
        tests = sorted((r.get("split", ""), r.get("id", "")) for r in csv.DictReader(fh)
                       if r.get("subset") == "test")
    return hashlib.sha256(json.dumps(tests).encode()).hexdigest()


def comparability_warnings(runs: list[Run]) -> list[str]:
    """Why the runs' numbers may not be comparable (empty when they are)."""
    first, warnings = runs[0], []
    for run in runs[1:]:
        if run.summary.get("dataset") != first.summary.get("dataset"):
            warnings.append(f"{run.name} is on {run.summary.get('dataset')}, {first.name} on "
                            f"{first.summary.get('dataset')}: different test images")
        elif run.headline != first.headline:
            warnings.append(f"{run.name} reports {run.headline}, {first.name} {first.headline}")
        elif _splits_digest(run) != _splits_digest(first):
            warnings.append(f"{run.name} and {first.name} used different train/test splits "
                            "(their splits.csv test other images; rerun with --splits-file "
                            "to share them)")
    return [f"warning: {w}" for w in warnings]


def headline_rows(runs: list[Run]) -> list[dict]:
    """One dict per run: name, dataset, probe, net(s), layer(s), training images per class,
    descriptor, metric, value, std, splits, paper."""
    rows = []
    for run in runs:
        paper = run.summary.get("paper") or {}
        rows.append({
            "run": run.name, "dataset": run.summary.get("dataset", ""), "probe": run.probe,
            "arch": run.inputs_field("arch"), "layer": run.inputs_field("layer"),
            "train_per_class": run.train_per_class,
            "descriptor": run.descriptor(), "metric": run.headline,
            "value": round(run.value, 2),
            "std": None if run.std is None else round(run.std, 2),
            "n_splits": run.n_splits,
            "paper": paper.get("value"),
        })
    return rows


def class_table(runs: list[Run]) -> tuple[list[str], dict[str, dict[str, float]]]:
    """(classes in the first run's order, run name -> class -> figure in %)."""
    per = {run.name: run.per_class() for run in runs}
    classes = list(dict.fromkeys(c for run in runs for c in run.per_class()))
    return classes, per


def format_comparison(runs: list[Run], per_class: bool = True) -> str:
    """The headline table, then (optionally) one line per class with each run's figure
    and the spread between the best and worst run."""
    lines = []
    heads = headline_rows(runs)
    width = max(len(h["run"]) for h in heads) + 2
    arch = max(6, *(len(h["arch"]) + 2 for h in heads))
    layer = max(7, *(len(h["layer"]) + 2 for h in heads))
    lines.append(f"{'run':<{width}}{'probe':<8}{'arch':<{arch}}{'layer':<{layer}}{'n/class':>8}"
                 f"  {'metric':<24}{'value':>16}{'splits':>8}  descriptor")
    for h in heads:
        value = f"{h['value']:.1f}" + (f" +- {h['std']:.1f}" if h["std"] is not None else "")
        metric = h["metric"] + (f" (paper {h['paper']})" if h["paper"] is not None else "")
        size = "-" if h["train_per_class"] is None else str(h["train_per_class"])
        lines.append(f"{h['run']:<{width}}{h['probe']:<8}{h['arch']:<{arch}}"
                     f"{h['layer']:<{layer}}{size:>8}  {metric:<24}{value:>16}"
                     f"{h['n_splits']:>8}  {h['descriptor']}")
    if per_class:
        classes, per = class_table(runs)
        names = [r.name for r in runs]
        col = max(8, *(min(len(n), 14) + 2 for n in names))
        cw = max(len(c) for c in classes) + 2 if classes else 8
        metric = runs[0].metric_column().replace("ap_", "AP ").replace("voc", "VOC")
        lines.append("")
        lines.append(f"per class ({metric}, %, mean over splits):")
        lines.append(f"{'class':<{cw}}" + "".join(f"{n[:col - 2]:>{col}}" for n in names)
                     + f"{'spread':>{col}}")
        for c in classes:
            values = [per[n].get(c) for n in names]
            known = [v for v in values if v is not None]
            # A spread needs two runs with this class; one alone has none ("-", not "nan").
            spread = f"{max(known) - min(known):.1f}" if len(known) > 1 else "-"
            lines.append(f"{c:<{cw}}" + "".join(
                f"{v:>{col}.1f}" if v is not None else f"{'-':>{col}}" for v in values)
                + f"{spread:>{col}}")
    return "\n".join(lines)


COMPARISON_FILES = ("compare.csv", "compare.png")


def write_comparison(runs: list[Run], out, *, overwrite: bool = False,
                     echo=None) -> list[Path]:
    """compare.csv and compare.png in `out`; existing ones are replaced only on `overwrite`.
    A compare.png that cannot be drawn is a warning through `echo` (`draw_plot`)."""
    out = Path(out)
    targets = [out / name for name in COMPARISON_FILES]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise CompareError(f"{', '.join(existing)} exists; choose another --out, or "
                           "--overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    written = [write_comparison_csv(runs, targets[0])]
    drawn = draw_plot(lambda: plot_comparison(runs, targets[1]), targets[1], echo)
    return written + ([drawn] if drawn else [])


def write_comparison_csv(runs: list[Run], path: Path) -> Path:
    """One row per run: the headline figures, then each class's figure (%)."""
    classes, per = class_table(runs)
    heads = headline_rows(runs)
    with atomic.open_text(path, newline="") as fh:  # whole or absent, even if killed
        writer = csv.writer(fh)
        writer.writerow([*heads[0].keys(), *classes])
        for h in heads:
            writer.writerow([*h.values(), *(_fmt(per[h["run"]].get(c)) for c in classes)])
    return Path(path)


def _fmt(value) -> str:
    return "" if value is None else f"{value:.2f}"


def plot_labels(runs: list[Run]) -> list[str]:
    """Each run's name, with its probe, net and layer where the runs differ in them."""
    keys = [(r.probe, r.inputs_field("arch"), r.inputs_field("layer")) for r in runs]
    if len(set(keys)) == 1:
        return [r.name for r in runs]
    return [f"{r.name} ({probe}, {arch} {layer})" for r, (probe, arch, layer)
            in zip(runs, keys, strict=True)]


def plot_comparison(runs: list[Run], path: Path) -> Path:
    """Left: each run's headline with its spread over splits. Right: each class's figure
    per run (one marker per run), classes in the first run's order."""
    plt = pyplot()
    classes, per = class_table(runs)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    height = max(3.5, 0.25 * len(classes) + 1.5)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, height),
                                      gridspec_kw={"width_ratios": [1, 1.6]})
    y = np.arange(len(runs))
    values = [r.value for r in runs]
    errors = [r.std or 0 for r in runs]
    left.barh(y, values, xerr=errors, color=[colours[k % len(colours)] for k in y],
              error_kw={"lw": 1, "capsize": 3})
    for k, run in enumerate(runs):
        label = f"{run.value:.1f}" + (f" ± {run.std:.1f}" if run.std is not None else "")
        left.text(values[k] + errors[k] + 1, k, label, va="center", fontsize=9)
    left.set_yticks(y, plot_labels(runs), fontsize=9)
    left.invert_yaxis()
    left.set_xlim(0, 115)
    left.set_xlabel(f"{runs[0].headline} (%)" + (", ± std over splits"
                                                 if any(r.std for r in runs) else ""),
                    fontsize=10)
    left.set_title("headline", fontsize=11)
    left.grid(axis="x", alpha=0.3)
    yc = np.arange(len(classes))
    for k, run in enumerate(runs):
        xs = [per[run.name].get(c, np.nan) for c in classes]
        right.plot(xs, yc, "o", color=colours[k % len(colours)], label=run.name, alpha=0.85)
    font = 9 if len(classes) <= 30 else 7 if len(classes) <= 60 else 4
    right.set_yticks(yc, classes, fontsize=font)
    right.invert_yaxis()
    right.set_xlim(-2, 102)
    right.set_xlabel(f"{runs[0].metric_column()} per class (%), mean over splits", fontsize=10)
    right.set_title("per class", fontsize=11)
    right.grid(alpha=0.3)
    right.legend(fontsize=9, loc="lower left", framealpha=0.9)
    fig.suptitle(f"{runs[0].summary.get('dataset', '')}: {len(runs)} runs compared",
                 fontsize=12)
    fig.tight_layout()
    with atomic.replacing(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(path)
