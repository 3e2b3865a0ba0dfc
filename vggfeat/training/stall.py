"""The "learnt nothing" warning of a classification run: loss at ln(C), accuracy at chance.

A run whose loss never leaves ln(C) produces a backbone without an error, and its features
are useless; the trainer says so once, in a warning line on stderr.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence

# The check runs from this epoch on (the first epochs of a healthy run may sit near ln C).
STALL_AFTER_EPOCHS = 3
# "At ln(C)": the training loss of every epoch so far is above this fraction of ln(C) ...
STALL_LOSS_FRACTION = 0.97
# ... and the validation top-1 error is within this many chance-level "classes" of chance:
# error >= 100 * (1 - STALL_CHANCE_CLASSES / C), i.e. at most 1.5x chance accuracy.
STALL_CHANCE_CLASSES = 1.5


def training_stalled(records: Sequence[dict], num_classes: int,
                     after: int = STALL_AFTER_EPOCHS) -> str | None:
    """A warning when the loss has stayed at ln(classes) and validation at chance.

    Args:
        records: the per-epoch log records so far (``train_loss``, ``val_top1_err`` in %).
        num_classes: the number of training classes C.
        after: check only once this many epochs have run.
    """
    if num_classes < 2 or len(records) < after:
        return None
    if any("train_loss" not in r or "val_top1_err" not in r for r in records):
        return None  # another task's log (e.g. localisation): not a classification run
    chance_loss = math.log(num_classes)
    losses = [r["train_loss"] for r in records]
    chance_err = 100.0 * (1 - 1 / num_classes)
    last_err = records[-1]["val_top1_err"]
    if min(losses) < STALL_LOSS_FRACTION * chance_loss:
        return None
    if last_err < 100.0 * (1 - STALL_CHANCE_CLASSES / num_classes):
        return None
    return (f"warning: the net has learnt nothing in {len(records)} epochs: training loss "
            f"{losses[-1]:.3f} ~ ln({num_classes}) = {chance_loss:.3f}, val top-1 error "
            f"{last_err:.1f}% ~ chance {chance_err:.1f}%. Its features will be useless. On small "
            "data try --arch vgg11-bn (batch norm), --init xavier, a lower or higher --lr "
            "(e.g. 0.005 or 0.02), or more images per class; stop this run if it persists.")


def stall_state(records: Sequence[dict], warned: bool) -> dict:
    """What the check has seen, for the checkpoint: a resumed run then warns exactly when
    (and as often as) an uninterrupted one would, instead of counting again from zero."""
    # Through JSON, as log.jsonl holds them: plain floats (not numpy's), which a
    # weights_only load accepts.
    return {"records": json.loads(json.dumps(list(records))), "warned": bool(warned)}


def resumed_stall_state(checkpoint: dict | None) -> tuple[list[dict], bool]:
    """(records, warned) carried by a checkpoint; nothing seen for a fresh run or for a
    checkpoint written before the state was carried (it resumes counting from zero)."""
    saved = (checkpoint or {}).get("stall")
    if not isinstance(saved, dict) or not isinstance(saved.get("records"), list):
        return [], False
    return [dict(r) for r in saved["records"]], bool(saved.get("warned"))
