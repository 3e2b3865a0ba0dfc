"""`eval-backbone` as one call: run folders and a DIR holding val/ resolved, the nets
evaluated (paper Tables 3-6, `vggfeat.training.evaluate`), the rows written as JSON."""
from __future__ import annotations

import json
from pathlib import Path

from vggfeat.training.evaluate import evaluate_backbones
from vggfeat.utils import atomic, interrupts
from vggfeat.utils.devices import CUDA_ONLY, resolve_device


def backbone_file(weights: str | Path) -> str:
    """A run folder's backbone.pth, or the file given."""
    return str(Path(weights) / "backbone.pth") if Path(weights).is_dir() else str(weights)


def _stopped_note() -> str:
    """What a stopped evaluation keeps (`vggfeat.utils.interrupts`): its rows are written
    at the end only."""
    return "nothing was written (the rows are written at the end); rerun the same command"


def run_eval_backbone(data, weights, *, scales=None, method: str = "both",
                      device: str = "auto", workers: int = 4, quiet: bool = False,
                      limit: int | None = None, json_out=None) -> tuple[list[dict], list[str]]:
    """Top-1/top-5 error rows of each net (and of their ensemble).

    Args:
        data: the validation folder VAL_DIR/<class>/*, or a DIR holding val/.
        weights: backbone files or run folders (their backbone.pth).
        device: "auto" (cuda when available, else cpu), "cpu", "cuda", ...
        json_out: also write the rows to this file (atomically), or None.
        scales, method, workers, quiet, limit: as `evaluate_backbones`.

    Returns:
        (rows, unreadable images).
    """
    data = Path(data)
    if (data / "val").is_dir():
        data = data / "val"
    if device == "auto":  # the trainer and the evaluations run on CUDA or the CPU only
        device = str(resolve_device("auto", CUDA_ONLY))
    with interrupts.progress_note(_stopped_note):
        rows, pred = evaluate_backbones([backbone_file(w) for w in weights], data, scales,
                                        method, device, workers, quiet, limit)
    if json_out:
        atomic.write_text(json_out, json.dumps(rows, indent=1) + "\n")
    return rows, pred.bad
