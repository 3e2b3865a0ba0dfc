"""A localisation run's options (paper Appendix A.1): the training `DEFAULTS` plus the box
head and the layers to fine-tune, with their own learning rate.

Imports nothing heavy at load time: the command line takes its defaults from here.
"""
from __future__ import annotations

from vggfeat.training.config import TrainingError, make_config

BOX_HEADS = ("scr", "pcr")
FINETUNE = ("fc", "all")
LOC_DEFAULTS = {"box_head": "pcr",  # the paper's best (Table 8)
                "finetune": "all",  # idem
                "lr": 1e-3}


def make_loc_config(**options) -> dict:
    """The trainer's config plus task, box_head and finetune; lr defaults to 1e-3."""
    loc = {k: options.pop(k, v) for k, v in LOC_DEFAULTS.items() if k != "lr"}
    options.setdefault("lr", LOC_DEFAULTS["lr"])
    options.pop("task", None)
    cfg = make_config(**options)
    if loc["box_head"] not in BOX_HEADS:
        raise TrainingError(f"--box-head must be one of {BOX_HEADS}, got {loc['box_head']!r}")
    if loc["finetune"] not in FINETUNE:
        raise TrainingError(f"--finetune must be one of {FINETUNE}, got {loc['finetune']!r}")
    if cfg["synthetic"] or cfg["data"] is None:
        raise TrainingError("--task localisation needs --data (an ILSVRC CLS-LOC folder or a "
                            "CSV of boxes), not --synthetic.")
    if not cfg["finetune_from"]:
        raise TrainingError("--task localisation starts from a classification net: give "
                            "--finetune-from CLASSIFICATION_RUN (trained at the same --scale).")
    return {**cfg, "task": "localisation", **loc}
