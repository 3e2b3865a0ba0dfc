"""Reporting a protocol's `Result`: a table (with the paper's figure beside ours), CSV and
JSON files, and precision-recall plots.

Files written to the output folder:

- ``results.csv``: one row per class and split (AP variants or recall, the chosen C, or k
  for the kNN probe, counts).
- ``summary.json``: settings, inputs, chosen C per class (``chosen_C``; another probe than
  the SVM: ``probe`` and ``chosen``, split -> class -> {"C" or "k": value}), headline
  metric, paper figure (SVMs only),
  the number of splits evaluated (``n_splits``; ``settings.n_splits`` is what was asked
  for), every file written (``files``, relative to the folder) and the images left out
  for want of a descriptor (``left_out``, only when there are some).
- ``scores.csv``: per split, each test sample's id, its true label(s) (``true``: names
  joined by ``;``, a VOC difficult class with a trailing ``?``, empty where the split has
  no public labels) and the decision value of every class.
- ``pr_<split>.png``: precision-recall curves per class (VOC and multi-label data).
- ``recall.png``, ``confusion.png``, ``confusion.csv`` (multi-class data): recall of each
  class (mean and spread over splits) and the confusion matrix summed over splits.
- plus the protocol's own files (``splits.csv``, VOC server submission files).

The results (CSV files, summary.json) are written first; a plot that cannot be drawn is
then a warning naming it, never a failed run, and summary.json does not list it.
"""
from __future__ import annotations

import csv
import json
import math
import re
from itertools import repeat
from pathlib import Path

import numpy as np

from vggfeat.evaluation.inputs import PAPER_NETS
from vggfeat.evaluation.plotting import draw_plot, pyplot
from vggfeat.evaluation.protocols import Result
from vggfeat.utils import atomic
from vggfeat.utils.progress import progress_bar

# scores.csv is converted and written about this many values (rows x classes) at a time,
# and never fewer than a row: bounded scratch (a block's Python floats and text are about
# 60 bytes a value; 20,000 rows of 257 classes held 112 MiB at the end of a run), with a
# progress bar once writing has taken this many seconds.
SCORES_BLOCK_VALUES = 500_000
SCORES_PROGRESS_AFTER = 3.0

# paper Table 11: dataset -> net -> (value, std or None). The VOC 2012
# and action figures are on the test set (evaluation server); ours are on val.
PAPER_TABLE_11 = {
    "voc2007": {"D": (89.3, None), "E": (89.3, None), "D&E": (89.7, None)},
    "voc2012": {"D": (89.0, None), "E": (89.0, None), "D&E": (89.3, None)},
    "caltech101": {"D": (91.8, 1.0), "E": (92.3, 0.5), "D&E": (92.7, 0.5)},
    "caltech256": {"D": (85.0, 0.2), "E": (85.1, 0.3), "D&E": (86.2, 0.3)},
}
PAPER_ACTION = {"image": 79.2, "image+box": 84.0}  # D & E only


def paper_figure(result: Result, archs, layers) -> dict | None:
    """The paper's number for this dataset and net(s), or None where it has none."""
    nets = [PAPER_NETS.get(a) for a in archs]
    if result.probe != "svm":  # the paper's figures are linear SVMs'
        return None
    if None in nets or any(layer != "fc7" for layer in layers) or len(set(nets)) != len(nets):
        return None
    net = "D&E" if sorted(nets) == ["D", "E"] else nets[0] if len(nets) == 1 else None
    if result.dataset == "voc2012-action":
        variant = result.headline["headline"].split("[")[1].rstrip("]")
        if net != "D&E":
            return None
        return {"net": net, "value": PAPER_ACTION[variant], "std": None,
                "note": f"paper: D&E, {variant} descriptors, VOC 2012 test set"}
    if net is None or result.dataset not in PAPER_TABLE_11:
        return None
    value, std = PAPER_TABLE_11[result.dataset][net]
    note = {"voc2007": "paper: VOC 2007 test, 11-point AP",
            "voc2012": "paper: VOC 2012 test set (server); ours: val",
            }.get(result.dataset, "paper: mean class recall over 3 splits")
    return {"net": net, "value": value, "std": std, "note": note}


def _pct(x) -> str:
    return "   -  " if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:6.2f}"


def format_table(result: Result, paper: dict | None = None) -> str:
    """A plain-text table of the result."""
    lines = [f"{result.dataset}: {result.protocol}"]
    h, param = result.headline, result.hyperparameter
    if "ap_voc07" in (result.rows[0] if result.rows else {}):
        lines.append(f"{'split':<18}{'class':<20}{param:>8}{'AP07':>8}{'AP10':>8}")
        for r in result.rows:
            lines.append(f"{str(r['split']):<18}{r['class']:<20}{r[param]:>8g}"
                         f"{_pct(r['ap_voc07']):>8}{_pct(r['ap_voc10']):>8}")
        for key in sorted(k for k in h if k.startswith("mAP") and not k.endswith("std")):
            name = key.replace("mAP_voc07", "mAP (VOC07 11-point)").replace(
                "mAP_voc10", "mAP (VOC2010+)")
            std = h.get(f"{key}_std")
            lines.append(f"{name:<46}{_pct(h[key])}" + (f" +- {_pct(std)}" if std else ""))
    else:
        lines.append(f"{'split':<8}{'mean class recall':>20}{'accuracy':>12}")
        recalls, accuracies = h["mean_class_recall_per_split"], h["accuracy_per_split"]
        for s, (recall, acc) in enumerate(zip(recalls, accuracies, strict=True)):
            lines.append(f"{s:<8}{_pct(recall):>20}{_pct(acc):>12}")
        lines.append(f"mean over {len(recalls)} split(s): mean class recall "
                     f"{_pct(h['mean_class_recall']).strip()} +- "
                     f"{_pct(h['mean_class_recall_std']).strip()}, accuracy "
                     f"{_pct(h['accuracy']).strip()} +- {_pct(h['accuracy_std']).strip()}")
    headline = h["headline"]
    ours = f"{100 * h[headline]:.1f}"
    if f"{headline}_std" in h:
        ours += f" +- {100 * h[headline + '_std']:.1f}"
    if paper:
        theirs = f"{paper['value']:.1f}" + (f" +- {paper['std']:.1f}" if paper["std"] else "")
        lines.append(f"{headline}: ours {ours} | paper (Net-{paper['net']}) {theirs}"
                     f"  [{paper['note']}]")
    else:
        why = "no paper figure for this dataset/net" if result.probe == "svm" else \
            "the paper's figures are SVMs'"
        lines.append(f"{headline}: ours {ours} ({why})")
    return "\n".join(lines)


def _write_csv(path: Path, rows: list[dict]) -> Path:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with atomic.open_text(path, newline="") as fh:  # whole or absent, even if killed
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_scores(path: Path, result: Result) -> Path:
    """scores.csv: the bytes `_write_csv` of `result.scores` writes (csv's dialect, each
    value as its repr), built a block of rows at a time with one C-level %-format per row
    instead of a dict per row and csv's per-field work; a progress bar once it takes more
    than `SCORES_PROGRESS_AFTER` seconds."""
    if not result.score_blocks:
        return _write_csv(path, [])
    total = sum(len(b.ids) for b in result.score_blocks)
    bar = progress_bar(total=total, desc="write scores.csv", unit="row",
                       delay=SCORES_PROGRESS_AFTER)
    # %r of a float is its repr, which is what csv writes for a float
    line = "%s,%s,%s," + ",".join(["%r"] * len(result.classes)) + "\r\n"
    with atomic.open_text(path, newline="") as fh, bar:
        csv.writer(fh).writerow(["split", "id", "true", *result.classes])
        rows = max(1, SCORES_BLOCK_VALUES // max(1, len(result.classes)))
        for block in result.score_blocks:
            split = _csv_field(block.split)
            for start in range(0, len(block.ids), rows):
                stop = min(start + rows, len(block.ids))
                ids = map(_csv_field, block.ids[start:stop])
                truth = repeat("", stop - start) if block.truth is None \
                    else map(_csv_field, block.truth[start:stop])
                values = block.values[start:stop].tolist()  # Python floats, exactly
                fh.write("".join([line % (split, i, t, *v)
                                  for i, t, v in zip(ids, truth, values, strict=True)]))
                bar.update(stop - start)
    return path


def _csv_field(text: str) -> str:
    """`text` as csv's default dialect writes it (QUOTE_MINIMAL): quoted, with doubled
    quotes, when it holds the delimiter, the quote character or a line break."""
    if any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _savefig(fig, path: Path) -> None:
    with atomic.replacing(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name))


def plot_pr_split(result: Result, split: str, curves: dict, path: Path) -> Path:
    """`path` (``pr_<split>.png``): a grid with each class's precision-recall curve on
    one split."""
    plt = pyplot()
    ap = {(str(r["split"]), r["class"]): r.get("ap_voc10") for r in result.rows}
    cols = min(5, len(curves))
    rows = math.ceil(len(curves) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.8 * rows + 0.5),
                             squeeze=False, sharex=True, sharey=True)
    for ax in axes.flat[len(curves):]:
        ax.axis("off")
    for ax, (name, (precision, recall)) in zip(axes.flat, curves.items(), strict=False):
        ax.plot(np.concatenate([[0], recall]), np.concatenate([[1], precision]), lw=1.5)
        value = ap.get((split, name))
        shown = "-" if value is None or math.isnan(value) else f"{100 * value:.1f}"
        ax.set_title(f"{name}: AP {shown}", fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("recall", fontsize=9)
    for ax in axes[:, 0]:
        ax.set_ylabel("precision", fontsize=9)
    where = f"split {split}" if split.isdigit() else split
    fig.suptitle(f"{result.dataset}, {where}: precision-recall per class "
                 "(AP: VOC 2010+ area under the curve)", fontsize=11)
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)
    return path


def confusion_matrix(result: Result) -> np.ndarray | None:
    """(K, K) counts, true class by row, predicted (highest decision value) by column,
    summed over splits; None for multi-label results (no single true class)."""
    if not result.rows or "recall" not in result.rows[0]:
        return None
    index = {c: k for k, c in enumerate(result.classes)}
    counts = np.zeros((len(result.classes), len(result.classes)), dtype=np.int64)
    for block in result.score_blocks:
        if block.truth is None:  # no labels (server split)
            continue
        predicted = np.argmax(block.values, axis=1)
        for true, guess in zip(block.truth, predicted, strict=True):
            if true in index:  # not a multi-label row
                counts[index[true], guess] += 1
    return counts


def _class_font(n: int) -> float:
    return 9 if n <= 30 else 7 if n <= 60 else 5 if n <= 120 else 3


def plot_recall(result: Result, out: Path) -> Path | None:
    """A horizontal bar per class: recall, mean over splits, with the range over splits;
    the mean class recall as a line. None for results without per-class recall."""
    if not result.rows or "recall" not in result.rows[0]:
        return None
    plt = pyplot()
    classes = list(result.classes)
    per = {c: [r["recall"] for r in result.rows if r["class"] == c] for c in classes}
    mean = np.array([np.mean(per[c]) for c in classes]) * 100
    # Clipped at 0: the mean of equal recalls can differ from them in the last bit, and
    # matplotlib refuses a negative error bar (e.g. 0.1 on every split).
    low = np.maximum(mean - np.array([np.min(per[c]) for c in classes]) * 100, 0)
    high = np.maximum(np.array([np.max(per[c]) for c in classes]) * 100 - mean, 0)
    n_splits = max(len(v) for v in per.values())
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.25 * len(classes) + 1.2)))
    y = np.arange(len(classes))
    ax.barh(y, mean, xerr=[low, high] if n_splits > 1 else None, color="#4c72b0",
            error_kw={"lw": 1, "capsize": 2})
    headline = 100 * result.headline.get("mean_class_recall", float(np.mean(mean) / 100))
    ax.axvline(headline, color="#c44e52", lw=1.5, ls="--")
    ax.set_yticks(y, classes, fontsize=_class_font(len(classes)))
    ax.invert_yaxis()
    ax.set_xlim(0, 101)
    ax.set_xlabel("recall (%)" + (f": mean over {n_splits} splits, bars the range"
                                  if n_splits > 1 else ""), fontsize=10)
    ax.set_ylabel("class", fontsize=10)
    ax.set_title(f"{result.dataset}: recall per class (dashed: mean class recall "
                 f"{headline:.1f}%)", fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path = out / "recall.png"
    _savefig(fig, path)
    plt.close(fig)
    return path


def plot_confusion(result: Result, counts: np.ndarray, out: Path) -> Path:
    """The confusion matrix, each row divided by its class's test images (so the diagonal
    is each class's recall), with the counts written in the cells when they fit."""
    plt = pyplot()
    classes = list(result.classes)
    k = len(classes)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = min(max(4.0, 0.45 * k + 2), 30)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    image = ax.imshow(100 * rates, cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="% of the true class")
    font = _class_font(k)
    ax.set_xticks(range(k), classes, rotation=90, fontsize=font)
    ax.set_yticks(range(k), classes, fontsize=font)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class", fontsize=10)
    ax.set_ylabel("true class", fontsize=10)
    splits = len({str(r["split"]) for r in result.rows})
    ax.set_title(f"{result.dataset}: confusion matrix ({int(counts.sum())} test images"
                 + (f", {splits} splits summed" if splits > 1 else "") + ")", fontsize=11)
    fig.tight_layout()
    path = out / "confusion.png"
    _savefig(fig, path)
    plt.close(fig)
    return path


def _write_confusion_csv(path: Path, classes, counts: np.ndarray) -> Path:
    """Counts: one row per true class (first column), one column per predicted class."""
    rows = [{"true_class": c, **{p: int(n) for p, n in zip(classes, line, strict=True)}}
            for c, line in zip(classes, counts, strict=True)]
    return _write_csv(path, rows)


def splits_evaluated(result: Result) -> int:
    """How many train/test splits the result comes from (not how many were asked for)."""
    if "mean_class_recall_per_split" in result.headline:
        return len(result.headline["mean_class_recall_per_split"])
    if "mAP_voc10_std" in result.headline:  # custom multi-label data: seeded splits
        return len({str(r["split"]) for r in result.rows})
    return 1  # VOC: the dataset's fixed train/test split


def write_report(result: Result, out, settings: dict, inputs: list[dict],
                 paper: dict | None = None, left_out: dict | None = None,
                 echo=None) -> dict[str, Path]:
    """Write results.csv, scores.csv, confusion.csv and summary.json to `out`, then the
    plots, each through `draw_plot`: one that cannot be drawn is a warning through `echo`
    (``err=True``), never a failed run, and summary.json lists only the plots drawn.

    `left_out`: the images left out for want of a descriptor, kept in summary.json apart
    from ``settings`` (which a rerun compares with its own).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"results": _write_csv(out / "results.csv", result.rows),
             "scores": write_scores(out / "scores.csv", result)}
    counts = confusion_matrix(result)
    if counts is not None:
        files["confusion_csv"] = _write_confusion_csv(out / "confusion.csv", result.classes,
                                                      counts)
    plots = _plots(result, counts, out)
    summary = _summary(result, out, settings, inputs, paper, left_out)
    # The results are whole before any plot is drawn; summary.json lists the plots to come
    # (so a run's files are the same whether or not it was killed while drawing them) and
    # is written again only without a plot that could not be drawn.
    _write_summary(summary, result, out, [*files.values(), *plots])
    drawn = {path: draw_plot(draw, path, echo) for path, draw in plots.items()}
    files.update({path.stem: path for path in drawn.values() if path is not None})
    if None in drawn.values():
        _write_summary(summary, result, out, files.values())
    files["summary"] = out / "summary.json"
    return files


def _plots(result: Result, counts: np.ndarray | None, out: Path) -> dict:
    """Each plot's path -> a function that draws it: a precision-recall grid per split
    with curves, and for multi-class data the recall per class and the confusion matrix."""
    plots = {}
    for split, curves in result.curves.items():
        if curves:
            path = out / f"pr_{_safe(split)}.png"
            plots[path] = (lambda s=split, c=curves, p=path: plot_pr_split(result, s, c, p))
    if counts is not None:
        plots[out / "recall.png"] = lambda: plot_recall(result, out)
        plots[out / "confusion.png"] = lambda: plot_confusion(result, counts, out)
    return plots


def _summary(result: Result, out: Path, settings: dict, inputs: list[dict],
             paper: dict | None, left_out: dict | None) -> dict:
    """summary.json's content but its ``files`` (see the module docstring)."""
    summary = {
        "dataset": result.dataset, "protocol": result.protocol, "inputs": inputs,
        "settings": settings, "classes": list(result.classes),
        "headline": {k: v for k, v in result.headline.items()},
        **_chosen(result), "paper": paper,
        "n_splits": splits_evaluated(result),
        "files": [],
    }
    if left_out:
        summary["left_out"] = left_out
    return summary


def _write_summary(summary: dict, result: Result, out: Path, files) -> None:
    listed = [*files, *result.files, out / "summary.json"]
    summary["files"] = sorted({_relative(p, out) for p in listed})
    atomic.write_text(out / "summary.json",
                      json.dumps(summary, indent=2, default=jsonable) + "\n")


def _chosen(result: Result) -> dict:
    """The SVM's chosen C as summary.json has always held it (``chosen_C``); another probe's
    under ``probe`` and ``chosen``: split -> class -> {hyper-parameter: value}."""
    if result.probe == "svm":
        return {"chosen_C": result.chosen_C}
    param = result.hyperparameter
    return {"probe": result.probe,
            "chosen": {split: {c: {param: v} for c, v in per_class.items()}
                       for split, per_class in result.chosen_C.items()}}


def _relative(path, out: Path) -> str:
    path = Path(path)
    try:
        return str(path.relative_to(out))
    except ValueError:  # written outside the folder
        return str(path)


def jsonable(value):
    """`json.dumps` default: numpy scalars as numbers, paths as strings."""
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, (Path,)):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
