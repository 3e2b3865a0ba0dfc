"""svm-eval's output-folder policy: what it writes there, and when it may write.

A folder is never mixed or clobbered: results made with other settings or other caches
are refused (`check_same_run`), and so is any file with an output name that vggfeat did
not write (`check_no_foreign`), unless the caller asks to overwrite. Files of a run that
was killed half-way are known as vggfeat's by a marker file written before the first
output (`claim_outputs`) and removed once summary.json lists them (`release_outputs`).
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

from vggfeat.evaluation.inputs import EvaluationInputError
from vggfeat.evaluation.report import jsonable
from vggfeat.utils import atomic
from vggfeat.utils.atomic import ForeignFileError

# Every name svm-eval may write in its --out folder (the report's and the protocols').
OUTPUT_PATTERNS = ("results.csv", "summary.json", "scores.csv", "pr_*.png", "recall.png",
                   "confusion.png", "confusion.csv", "splits.csv", "comp1_cls_test_*.txt",
                   "comp9_action_test_*.txt")

# Present while svm-eval writes a folder (removed once summary.json is written): the
# output-named files of a run that was killed or failed half-way are then known as ours.
WRITING_MARKER = ".vggfeat-svm-eval-writing"
WRITING_KIND = "vggfeat svm-eval outputs being written"

# Settings that do not change the results: a rerun that differs only in these may reuse --out.
NOT_COMPARED = ("verbose", "device")


class OutputFolderError(EvaluationInputError):
    """The output folder holds results of another run; the message says what differs."""


def prepare(out: Path, recorded: dict, sources: list[dict], *, overwrite: bool) -> None:
    """Refuse `out` unless it may take this run's results, then remove the temporary files
    a killed earlier run left there. With `overwrite` nothing is refused (as extract does:
    only an explicit request replaces another configuration's results)."""
    if not overwrite:
        check_same_run(out, recorded, sources)
        check_no_foreign(out)
    atomic.remove_stale_tmp(out, OUTPUT_PATTERNS)


def check_same_run(out: Path, recorded: dict, sources: list[dict]) -> None:
    """Refuse an --out folder whose summary.json records other settings or inputs."""
    summary = Path(out) / "summary.json"
    if not summary.is_file():
        return
    try:
        old = json.loads(summary.read_text())
    except (OSError, ValueError):
        return
    new = json.loads(json.dumps({"settings": recorded, "inputs": sources}, default=jsonable))
    before, after = old.get("settings") or {}, new["settings"]
    keys = sorted(k for k in set(before) | set(after)
                  if k not in NOT_COMPARED and before.get(k) != after.get(k))
    diffs = [f"{k}: folder has {before.get(k)!r}, this run {after.get(k)!r}" for k in keys]
    if old.get("inputs") != new["inputs"]:
        diffs.append("the input caches differ")
    if diffs:
        raise OutputFolderError(
            f"{out} holds results made with other options ({'; '.join(diffs[:4])}); use "
            "another --out, or --overwrite to replace them")


def check_no_foreign(out: Path) -> None:
    """Refuse to replace output files in `out` that vggfeat did not write (exit 2)."""
    foreign = foreign_outputs(out)
    if foreign:
        names = ", ".join(p.name for p in foreign[:4]) + (" ..." if len(foreign) > 4 else "")
        raise ForeignFileError(
            f"--out {out} holds {names}, which svm-eval would replace and vggfeat did not "
            "write (no vggfeat summary.json lists them). Choose another --out, or pass "
            "--overwrite to replace them (e.g. the files of an interrupted svm-eval).")


def foreign_outputs(out) -> list[Path]:
    """Files in `out` that svm-eval could replace but did not write itself.

    Ours are the files that a vggfeat summary.json in `out` lists (its ``files``, which
    include summary.json itself), and all output files of a run that stopped before its
    summary.json (the folder still has `WRITING_MARKER`); any other existing file with an
    output name is foreign.
    """
    out = Path(out)
    if not out.is_dir() or _claimed(out):
        return []
    ours: set[str] = set()
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        summary = None
    if isinstance(summary, dict) and isinstance(summary.get("files"), list) \
            and "summary.json" in summary["files"]:
        ours = {str(name) for name in summary["files"]}
    return sorted(path for pattern in OUTPUT_PATTERNS for path in out.glob(pattern)
                  if path.name not in ours)


def claim_outputs(out) -> None:
    """Mark `out` as being written by svm-eval (call after `foreign_outputs` found none)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / WRITING_MARKER, json.dumps({"kind": WRITING_KIND}) + "\n")


def release_outputs(out) -> None:
    """The run finished: summary.json lists its files, the marker goes."""
    (Path(out) / WRITING_MARKER).unlink(missing_ok=True)


def unclaim_if_unused(out, made_folder: bool) -> None:
    """A run that failed before writing any output: the marker goes (and the folder, if the
    run made it); one that wrote some keeps it, so a rerun may replace them."""
    out = Path(out)
    if any(any(out.glob(pattern)) for pattern in OUTPUT_PATTERNS):
        return
    release_outputs(out)
    if made_folder:
        with contextlib.suppress(OSError):
            out.rmdir()


def _claimed(out: Path) -> bool:
    try:
        return json.loads((out / WRITING_MARKER).read_text()).get("kind") == WRITING_KIND
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        return False
