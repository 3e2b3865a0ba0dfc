"""Reporting a protocol's `Result`: a table (with the paper's figure beside ours), CSV and
JSON files, and precision-recall plots.

Files written to the output folder:

- ``results.csv``: one row per class and split (AP variants or recall, chosen C, counts).
- ``summary.json``: settings, inputs, chosen C per class, headline metric, paper figure.
- ``scores.csv``: test sample id and the decision value of every class, per split.
- ``pr_<split>.png``: precision-recall curves per class (VOC and multi-label data).
- plus the protocol's own files (``splits.csv``, VOC server submission files).
"""
from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np

from vggfeat.evaluation.inputs import PAPER_NETS
from vggfeat.evaluation.protocols import Result

# SPEC section 5, paper Table 11: dataset -> net -> (value, std or None). The VOC 2012
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
    h = result.headline
    if "ap_voc07" in (result.rows[0] if result.rows else {}):
        lines.append(f"{'split':<18}{'class':<20}{'C':>8}{'AP07':>8}{'AP10':>8}")
        for r in result.rows:
            lines.append(f"{str(r['split']):<18}{r['class']:<20}{r['C']:>8g}"
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
        lines.append(f"{headline}: ours {ours} (no paper figure for this dataset/net)")
    return "\n".join(lines)


def _write_csv(path: Path, rows: list[dict]) -> Path:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name))


def plot_pr(result: Result, out: Path) -> list[Path]:
    """One PNG per evaluated split: a grid with each class's precision-recall curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    ap = {(str(r["split"]), r["class"]): r.get("ap_voc10") for r in result.rows}
    for split, curves in result.curves.items():
        if not curves:
            continue
        cols = min(5, len(curves))
        rows = math.ceil(len(curves) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.4 * rows), squeeze=False)
        for ax in axes.flat[len(curves):]:
            ax.axis("off")
        for ax, (name, (precision, recall)) in zip(axes.flat, curves.items(), strict=False):
            ax.plot(np.concatenate([[0], recall]), np.concatenate([[1], precision]), lw=1.2)
            ax.set_title(f"{name} AP {100 * ap[(split, name)]:.1f}", fontsize=8)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            ax.tick_params(labelsize=6)
        fig.suptitle(f"{result.dataset} {split}: precision-recall (AP: VOC2010+)", fontsize=9)
        fig.tight_layout()
        path = out / f"pr_{_safe(split)}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def write_report(result: Result, out, settings: dict, inputs: list[dict],
                 paper: dict | None = None) -> dict[str, Path]:
    """Write results.csv, summary.json, scores.csv and the PR plots to `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"results": _write_csv(out / "results.csv", result.rows),
             "scores": _write_csv(out / "scores.csv", result.scores)}
    for k, path in enumerate(plot_pr(result, out)):
        files[f"pr{k}"] = path
    summary = {
        "dataset": result.dataset, "protocol": result.protocol, "inputs": inputs,
        "settings": settings, "classes": list(result.classes),
        "headline": {k: v for k, v in result.headline.items()},
        "chosen_C": result.chosen_C, "paper": paper,
        "files": [str(p) for p in result.files],
    }
    path = out / "summary.json"
    path.write_text(json.dumps(summary, indent=2, default=_jsonable) + "\n")
    files["summary"] = path
    return files


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, (Path,)):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
