"""`eval-localisation` as one call: the overwrite policy, the evaluation, the result files.

With an output folder, localisation.csv and localisation.json are written there
atomically; files already there are replaced only when asked (`overwrite`), and that is
checked before any work is done.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from vggfeat.localisation.evaluate import evaluate_localisation
from vggfeat.utils import atomic, interrupts
from vggfeat.utils.devices import CUDA_ONLY, resolve_device

OUTPUT_NAMES = ("localisation.csv", "localisation.json")


def output_paths(out: str | Path | None) -> list[Path]:
    """The files an evaluation writes into `out` (none without a folder)."""
    return [Path(out) / name for name in OUTPUT_NAMES] if out else []


def check_outputs(out: str | Path | None, overwrite: bool) -> None:
    """Refuse to replace a result file unasked (ForeignFileError names the first one)."""
    existing = [p for p in output_paths(out) if p.exists() or p.is_symlink()]
    if existing and not overwrite:
        raise atomic.ForeignFileError(
            f"{existing[0]} already exists; eval-localisation would replace it. Choose "
            "another --out, or pass --overwrite to replace it.")


def write_outputs(rows: list[dict], out: str | Path) -> list[Path]:
    """localisation.json (the rows) and localisation.csv (lists joined by commas)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = output_paths(out)
    atomic.write_text(json_path, json.dumps(rows, indent=1) + "\n")
    with atomic.open_text(csv_path, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: (",".join(map(str, v)) if isinstance(v, list) else v)
                          for k, v in r.items()} for r in rows)
    return [csv_path, json_path]


def run_eval_localisation(data, weights, classifiers=(), *, out=None, overwrite: bool = False,
                          device: str = "auto", **options) -> tuple[list[dict], list[str],
                                                                   list[Path]]:
    """Evaluate localisation nets and write their rows into `out` (when given).

    Args:
        data, weights, classifiers: as `evaluate_localisation`.
        out: folder for localisation.csv and localisation.json, or None.
        overwrite: replace those files when they exist (else refused before any work).
        device: "auto" (cuda when available, else cpu), "cpu", "cuda", ...
        **options: the other arguments of `evaluate_localisation` (protocol, scales,
            workers, quiet, limit, iou_threshold, merge_threshold, net_scales).

    Returns:
        (rows, unreadable images, files written).
    """
    check_outputs(out, overwrite)
    if device == "auto":  # the trainer and the evaluations run on CUDA or the CPU only
        device = str(resolve_device("auto", CUDA_ONLY))
    with interrupts.progress_note(lambda: "nothing was written (the rows are written at the "
                                  "end); rerun the same command"):
        rows, bad = evaluate_localisation(data, list(weights), list(classifiers), device=device,
                                          **options)
    written = write_outputs(rows, out) if out else []
    return rows, bad, written
