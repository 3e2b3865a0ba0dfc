"""The run folder (--out RUN_DIR): what a training run writes there, and when it may.

RUN_DIR holds config.json (the resolved configuration, marked as vggfeat's), log.jsonl
(one line per epoch), checkpoint.pth (--resume), backbone.pth (the result), the sha256 of
each of those two in checkpoint.pth.sha256 and backbone.pth.sha256 and, with
--tensorboard, TensorBoard scalars. A folder vggfeat did not make is never written into;
a folder that holds a run is continued only with --resume.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

from vggfeat.training.checkpoint import (
    CHECKPOINT_NAME,
    IDENTITY_KEYS,
    check_resumable,
    checkpoint_state,
    load_checkpoint,
    save_checkpoint,
)
from vggfeat.training.config import TrainingError
from vggfeat.utils import atomic, interrupts
from vggfeat.utils import distributed as D

LOCK_NAME = "train.lock"  # held while a run writes its folder (vggfeat.utils.locking)
RUN_FILES = ("config.json", "log.jsonl", CHECKPOINT_NAME, "backbone.pth",
             f"{CHECKPOINT_NAME}.sha256", "backbone.pth.sha256")  # the sums recorded beside
# config.json of a run folder carries this key, so that a folder is known to be vggfeat's
# before anything in it is replaced (a user's own config.json or log.jsonl never is).
RUN_MARKER = "vggfeat"


def is_run_config(config) -> bool:
    """Whether `config` (a run's config.json or a checkpoint's config) is vggfeat's: it has
    the marker or (written before the marker) all of a run's identity entries."""
    return isinstance(config, dict) and (RUN_MARKER in config
                                         or set(IDENTITY_KEYS) <= set(config))


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def write_run_config(run_dir: Path, cfg: dict) -> None:
    atomic.write_text(run_dir / "config.json",
                      json.dumps({RUN_MARKER: "train-backbone run folder", **cfg}, indent=1) + "\n")


def check_run_folder(run_dir: Path) -> None:
    """Refuse an existing, non-empty --out that is not a vggfeat run folder: the run would
    replace its config.json, log.jsonl or backbone.pth. A run folder is one whose
    config.json is vggfeat's or that holds a checkpoint (which `start_or_resume` checks);
    our lock file and our temporary files do not count. Removes the stale temporary files
    of a killed run in a run folder."""
    try:
        entries = [p for p in run_dir.iterdir()
                   if p.name != LOCK_NAME and not atomic.TMP_NAME.match(p.name)]
    except (FileNotFoundError, NotADirectoryError):
        return  # a file at --out: the lock or the first write names it
    if entries and not (is_run_config(_read_json(run_dir / "config.json"))
                        or (run_dir / CHECKPOINT_NAME).exists()):
        names = ", ".join(sorted(p.name for p in entries)[:4])
        raise atomic.ForeignFileError(
            f"--out {run_dir} is a folder that vggfeat did not make (it holds {names}); "
            "train-backbone would replace its config.json, log.jsonl and backbone.pth. Choose "
            "another --out (a new or empty folder), or --resume with a vggfeat run folder.")
    if D.is_main_process():
        atomic.remove_stale_tmp(run_dir, RUN_FILES)


def start_or_resume(cfg, run_dir, resume, force_resume):
    """The checkpoint to continue from (None for a fresh run), after the safety checks."""
    check_run_folder(run_dir)
    path = run_dir / CHECKPOINT_NAME
    if not resume:
        if path.exists():
            raise TrainingError(f"{run_dir} already holds a run ({path}); pass --resume to "
                                "continue it or choose another --out.")
        return None
    if not path.exists():
        raise TrainingError(f"--resume: no {CHECKPOINT_NAME} in {run_dir}; start without "
                            "--resume.")
    state = load_checkpoint(path)
    if not is_run_config(state.get("config")):  # e.g. a user's own {"model", "epoch"}
        raise atomic.ForeignFileError(f"--resume: {path} is not a vggfeat training "
                                      "checkpoint (no vggfeat run config); vggfeat will not "
                                      "replace it. Choose another --out.")
    diffs = check_resumable(state["config"], cfg, path, force_resume)
    if diffs:
        warnings.warn(f"resuming {path} despite: {'; '.join(diffs)}", stacklevel=2)
    return state


def rewrite_log(log_path: Path, upto_epoch: int) -> None:
    """Keep the log lines of the epochs a resumed checkpoint holds (drop later ones)."""
    if log_path.exists():
        lines = [line for line in log_path.read_text().splitlines()
                 if line.strip() and json.loads(line)["epoch"] <= upto_epoch]
        atomic.write_text(log_path, "".join(line + "\n" for line in lines))


def open_run_dir(run_dir: Path, cfg: dict, start_epoch: int) -> None:
    """The run folder with its config.json, and log.jsonl cut back to `start_epoch`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_config(run_dir, cfg)
    rewrite_log(run_dir / "log.jsonl", start_epoch)


def open_tensorboard(cfg, run_dir):
    """A TensorBoard writer for RUN_DIR/tensorboard with --tensorboard (main process)."""
    if not cfg["tensorboard"] or not D.is_main_process():
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn("--tensorboard needs the tensorboard package (pip install tensorboard); "
                      "logging to log.jsonl only.", stacklevel=2)
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def save_epoch(record: dict, run_dir: Path, writer, objects: tuple, cfg: dict,
               stall: dict | None = None) -> None:
    """Log one finished epoch and checkpoint it (main process only).

    `objects` is (model, optimizer, scheduler, scaler); `stall` the stall check's state,
    carried in the checkpoint. The log line is appended atomically
    (never a half line if killed) before the checkpoint, and rewrite_log drops lines past a
    resumed checkpoint's epoch, so log and checkpoint always agree after a rerun.
    """
    with interrupts.deferred():  # a Ctrl-C waits for the checkpoint of the logged epoch
        atomic.append_line(run_dir / "log.jsonl", json.dumps(record))
        if writer is not None:
            for key, value in record.items():
                if isinstance(value, float):
                    writer.add_scalar(key, value, record["epoch"])
        save_checkpoint(checkpoint_state(*objects, record["epoch"], record["step"], cfg,
                                         stall),
                        run_dir / CHECKPOINT_NAME)


def stopped_note(run_dir: Path, epochs: int) -> str:
    """What a stopped run keeps and how to go on (`vggfeat.utils.interrupts`): the last
    epoch in log.jsonl, which `save_epoch` writes together with its checkpoint."""
    try:
        lines = (run_dir / "log.jsonl").read_text().splitlines()
        kept = json.loads(lines[-1])["epoch"] if lines else 0
    except (OSError, ValueError, KeyError):
        kept = 0
    if kept and (run_dir / CHECKPOINT_NAME).exists():
        return (f"epoch {kept} of {epochs} is checkpointed in {run_dir}; continue with the "
                "same command plus --resume")
    return f"no epoch was finished; rerun the same command to start {run_dir} again"
