"""Training checkpoints: atomic writes, `weights_only=True` loading, RNG states, resume checks.

A checkpoint holds only tensors, numbers, strings and plain dicts/lists, so
`torch.load(path, weights_only=True)` reads it without unpickling arbitrary objects:
model, optimizer, scheduler and grad-scaler state dicts, epoch, step, the RNG states
(python, numpy, torch, CUDA) as lists/tensors, the config as a plain dict and the classes.
"""
from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

from vggfeat.utils import atomic, hashing
from vggfeat.utils import distributed as D
from vggfeat.utils.errors import InputError

CHECKPOINT_NAME = "checkpoint.pth"

# Config entries that define what is being trained: changing one of them between runs
# makes --resume meaningless (another network or another dataset).
IDENTITY_KEYS = ("arch", "width", "crop_size", "num_classes", "classes", "train_digest")

# Options that the optimizer's and the scheduler's saved state also hold. Restoring that
# state would silently keep the old values while config.json records the new ones, so a
# change is refused like an identity change, and applied (`apply_optimizer_options`) only
# when --force-resume asks for it.
OPTIMIZER_KEYS = ("lr", "momentum", "weight_decay", "lr_factor", "lr_patience", "lr_drops")


class CheckpointError(InputError):
    """A checkpoint cannot be read or does not fit the run it should continue."""


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write `state` atomically: temporary file, flush, fsync, rename, fsync the folder.

    A crash at any moment leaves either the previous checkpoint or the new one; so does a
    full disk, reported as `vggfeat.utils.atomic.DiskFullError`. Its sha256, hashed as it
    is written, goes to `<path>.sha256` (`load_checkpoint` checks it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.check_space(path, _tensor_bytes(state) * 1.05 + (1 << 20))
    with hashing.writing_with_sum(path) as handle:
        torch.save(state, handle)  # a full disk: DiskFullError, the old checkpoint kept
    return path


def _tensor_bytes(value) -> int:
    """Bytes of the tensors in a nested state (about a checkpoint's size on disk)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


# What to do about a checkpoint whose bytes are no longer those vggfeat wrote.
DAMAGED_CHECKPOINT_FIX = ("Resume from a good copy of it (a backup), or start the run again "
                          "in a new --out; the weights of a finished run are in backbone.pth.")


def load_checkpoint(path: str | os.PathLike) -> dict:
    """`torch.load(weights_only=True)` with an error naming the file and the fix; a file
    whose sha256 differs from the one recorded when it was saved is refused as damaged
    (one written before sums were recorded loads unchecked)."""
    path = Path(path)
    try:
        recorded = hashing.recorded_sha256(path)
        digest = hashing.sha256_future(path) if recorded else None  # beside torch.load
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}; start without --resume.") from None
    except hashing.RecordedSumError as error:
        raise CheckpointError(str(error)) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}; start without --resume.") from None
    except Exception as error:  # damaged, truncated or unsafe files all need the same fix
        _check_recorded(path, recorded, digest)  # bytes changed since saved: say so instead
        raise CheckpointError(f"cannot read checkpoint {path}: {type(error).__name__}: {error}. "
                              "Delete it to start over, or restore it from a backup.") from None
    _check_recorded(path, recorded, digest)
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise CheckpointError(f"{path} is not a vggfeat training checkpoint (it has no model "
                              "and epoch); give the run folder written by train-backbone.")
    return state


def _check_recorded(path: Path, recorded: str | None, digest) -> None:
    if recorded is None:
        return
    try:
        hashing.check_recorded(path, recorded, digest.result(), DAMAGED_CHECKPOINT_FIX)
    except hashing.RecordedSumError as error:
        raise CheckpointError(str(error)) from None


# -- RNG states as plain data ---------------------------------------------------------

def rng_state() -> dict:
    """Python, numpy, torch and CUDA RNG states as tensors, lists and numbers."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": np_state["state"]["key"].astype(np.int64).tolist(),
                  "pos": int(np_state["state"]["pos"]),
                  "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` returned."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state({"bit_generator": npy["bit_generator"],
                         "state": {"key": np.array(npy["key"], dtype=np.uint32),
                                   "pos": npy["pos"]},
                         "has_gauss": npy["has_gauss"], "gauss": npy["gauss"]})
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- resume checks --------------------------------------------------------------------

def check_resumable(saved: dict, current: dict, path: Path, force: bool = False) -> list[str]:
    """Compare the identity and the optimizer options of a saved run with the requested one.

    Returns the differences (for a warning when forced); raises CheckpointError when they
    differ and `force` is False.
    """
    diffs = []
    for key in IDENTITY_KEYS + OPTIMIZER_KEYS:
        old, new = saved.get(key), current.get(key)
        if old != new:
            if key == "classes":
                diffs.append(f"classes: {len(old or [])} saved vs {len(new or [])} now")
            else:
                diffs.append(f"{key}: {old!r} saved vs {new!r} now")
    if diffs and not force:
        raise CheckpointError(
            f"{path} was written by another configuration ({'; '.join(diffs)}). Resume with "
            "the same options (architecture, dataset, --lr, --momentum, --weight-decay, "
            "--lr-*), choose another --out, or pass --force-resume to continue with this "
            "command's values.")
    return diffs


def apply_optimizer_options(saved: dict, cfg: dict, optimizer, scheduler) -> list[str]:
    """After loading their state: give the optimizer and the scheduler the values of `cfg`
    where they differ from the saved run's config `saved`; returns what changed.

    A changed --lr scales the current learning rate by new/old, so the drops the
    scheduler already made are kept; the scheduler's floor becomes
    lr * lr_factor ** lr_drops as in a fresh run.
    """
    changes = []
    old_lr, new_lr = saved.get("lr"), cfg["lr"]
    if old_lr != new_lr:
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * new_lr / old_lr if old_lr else new_lr
        changes.append(f"lr {old_lr} -> {new_lr} (now {optimizer.param_groups[0]['lr']:.4g})")
    for key in ("momentum", "weight_decay"):
        if saved.get(key) != cfg[key]:
            for group in optimizer.param_groups:
                group[key] = cfg[key]
            changes.append(f"{key} {saved.get(key)} -> {cfg[key]}")
    schedule = ("lr", "lr_factor", "lr_patience", "lr_drops")
    if any(saved.get(k) != cfg[k] for k in schedule):
        scheduler.factor, scheduler.patience = cfg["lr_factor"], cfg["lr_patience"]
        floor = cfg["lr"] * cfg["lr_factor"] ** cfg["lr_drops"]
        scheduler.min_lrs = [floor] * len(optimizer.param_groups)
        scheduler.default_min_lr = floor
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
        changes += [f"{k} {saved.get(k)} -> {cfg[k]}" for k in schedule[1:]
                    if saved.get(k) != cfg[k]]
    return changes


# -- a run's objects in and out ---------------------------------------------------------

def checkpoint_state(model, optimizer, scheduler, scaler, epoch, step, cfg,
                     stall: dict | None = None) -> dict:
    """Everything --resume needs, as tensors and plain containers (weights_only loadable);
    `stall` is the "learnt nothing" check's state (`vggfeat.training.stall.stall_state`)."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
             "epoch": epoch, "step": step, "rng": rng_state(), "config": cfg,
             "classes": list(cfg["classes"])}
    if stall is not None:
        state["stall"] = stall
    return state


def restore_state(state, model, optimizer, scheduler, scaler, cfg) -> tuple[int, int]:
    """Load a training checkpoint into the run's objects; returns (start epoch, step)."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    # New --lr/--momentum/--weight-decay/--lr-* values win over the restored state (only
    # reached with --force-resume: check_resumable refuses a change otherwise).
    changes = apply_optimizer_options(state["config"], cfg, optimizer, scheduler)
    if changes and D.is_main_process():
        print(f"note: --resume applies the new {'; '.join(changes)}", file=sys.stderr)
    # Each epoch reseeds from (seed, epoch, rank) anyway; restoring the saved states also
    # covers any RNG use between epochs.
    set_rng_state(state["rng"])
    return state["epoch"], state["step"]
