"""The one training loop, for every task: classification and localisation (paper Sec. 3.1,
Appendix A.1). One process or many (torchrun).

What differs between tasks (their data, model, loss, validation metrics and log line) is a
`Task`; everything else is written once here, as torchvision's quantization reference
reuses its classification loop: the run-folder lock, --resume, the fused SGD optimizer,
mixed precision (autocast and the fp16 grad scaler), DDP, per-epoch seeding, the bad-image
budget, the checkpoint and log of every epoch, and the final backbone.pth.

Reproducibility: every epoch reseeds the global RNGs from (seed, epoch, rank) and every
image's augmentation from (seed, epoch, index); the sampler's order is a function of
(seed, epoch). A resumed run therefore needs no iterator state, and on the CPU stopping
after epoch k and resuming gives bitwise the weights of an uninterrupted run.
"""
from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vggfeat.models import normalize, save_backbone
from vggfeat.training.augment import apply_on_device
from vggfeat.training.checkpoint import (
    CHECKPOINT_NAME,
    checkpoint_state,
    restore_state,
    save_checkpoint,
)
from vggfeat.training.config import TrainingDiverged
from vggfeat.training.data import TrainingDataError
from vggfeat.training.run_folder import (
    LOCK_NAME,
    check_run_folder,
    open_run_dir,
    open_tensorboard,
    save_epoch,
    start_or_resume,
    stopped_note,
)
from vggfeat.training.stall import resumed_stall_state, stall_state
from vggfeat.utils import distributed as D
from vggfeat.utils import interrupts, locking
from vggfeat.utils.progress import progress_bar


def _train_mode(model: nn.Module, cfg: dict) -> None:
    model.train()


@dataclass(frozen=True)
class Task:
    """What one kind of training run does differently; the loop does the rest.

    Attributes:
        build_data: (cfg, rank, world, pin_memory) -> (train loader, val loader); fills
            cfg's classes, num_classes and train_digest (what --resume compares).
        build_model: (cfg, train set, resumed state or None) -> the net to train.
        loss: (float outputs, targets) -> the loss summed over this rank's batch and
            divided by its size (DDP averages ranks -> the global-batch mean).
        val_counts: (float outputs, targets) -> float64 tensor (loss summed over the batch,
            then one count of correct samples per entry of `val_errors`).
        val_errors: the log keys of those counts as error rates (%); the learning rate
            drops when the first has stopped improving.
        format_record: one epoch's log record -> its line on stderr.
        empty_targets: () -> the targets of a batch whose images were all unreadable.
        train_error: log key of the training error rate, counted by `train_hits`
            ((outputs, targets) -> correct samples); None: only the loss is logged.
        set_train: puts the net in training mode (a frozen trunk may stay in eval mode).
        prepare: (cfg) -> None, run before the data is read (e.g. read the source net).
        check_state: (resumed state, cfg, run folder) -> None; raises when it cannot go on.
        stalled: (log records so far, classes) -> a warning line, said once, or None.
        divergence_hint: what to try when the loss becomes NaN/Inf.
    """

    build_data: Callable
    build_model: Callable
    loss: Callable
    val_counts: Callable
    val_errors: tuple[str, ...]
    format_record: Callable[[dict], str]
    empty_targets: Callable[[], torch.Tensor]
    train_error: str | None = None
    train_hits: Callable | None = None
    set_train: Callable = field(default=_train_mode)
    prepare: Callable | None = None
    check_state: Callable | None = None
    stalled: Callable | None = None
    divergence_hint: str = "lower --lr"


def seed_everything(seed: int, epoch: int, rank: int) -> None:
    """Reseed python, numpy and torch (incl. CUDA) from (seed, epoch, rank)."""
    s = int(np.random.SeedSequence([seed, epoch, rank, 0x5EED]).generate_state(1)[0])
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


# -- one step -------------------------------------------------------------------------

def prepare_batch(images, shifts, preprocessing, device, channels_last: bool):
    """uint8 crops + colour shifts -> normalised float batch on the device."""
    x = apply_on_device(images.to(device, non_blocking=True), shifts.to(device, non_blocking=True))
    x = normalize(x, preprocessing)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def autocast_for(cfg: dict, device: torch.device):
    """Mixed precision as configured (bf16 needs no grad scaler; fp16 does)."""
    dtype = torch.float16 if cfg["precision"] == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=cfg["precision"] != "fp32")


def train_step(model, x, y, optimizer, scaler, autocast, loss_fn):
    """One SGD step on a prepared batch; returns the (detached) loss and outputs.

    `loss_fn(outputs, y)` (a `Task.loss`) sums over this rank's batch and divides by its
    size.
    """
    with D.peer_failures():  # DDP's collectives: a peer that died is named
        with autocast:
            outputs = model(x)
            loss = loss_fn(outputs.float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), outputs.detach()


class BadImageCounter:
    """Counts undecodable images over all ranks and aborts past the allowed share."""

    def __init__(self, max_fraction: float, device: torch.device):
        self.max_fraction = max_fraction
        self.counts = torch.zeros(2, dtype=torch.float64)  # bad, seen (this rank, unsynced)
        self.total_bad = 0
        self.total_seen = 0
        self.paths: list[str] = []

    def add(self, n_good: int, bad_paths: list[str]) -> None:
        self.counts += torch.tensor([len(bad_paths), n_good + len(bad_paths)], dtype=torch.float64)
        self.paths.extend(bad_paths[: max(0, 20 - len(self.paths))])

    def check(self) -> None:
        """Sum over ranks (every rank calls this at the same step) and raise if too many."""
        counts = D.all_reduce_sum(self.counts.clone())
        self.counts.zero_()
        self.total_bad += int(counts[0])
        self.total_seen += int(counts[1])
        if self.total_seen and self.total_bad > self.max_fraction * self.total_seen:
            raise TrainingDataError(
                f"{self.total_bad} of {self.total_seen} images could not be decoded (more than "
                f"--max-bad-fraction {self.max_fraction}), e.g. {self.paths[:5]}; remove or "
                "re-download them, or raise --max-bad-fraction.")


# -- one epoch ------------------------------------------------------------------------

def train_one_epoch(task: Task, model, loader, optimizer, scaler, cfg, device, epoch, bad,
                    preprocessing) -> dict:
    """One pass over the training loader; returns loss, (error), images/s, time and steps."""
    task.set_train(model, cfg)
    autocast = autocast_for(cfg, device)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss*n, n, hits
    c = cfg["crop_size"]
    steps = len(loader) if cfg["max_steps"] is None else min(len(loader), cfg["max_steps"])
    bar = progress_bar(total=steps, desc=f"epoch {epoch + 1}/{cfg['epochs']}", file=sys.stderr,
                       disable=cfg["quiet"] or not D.is_main_process(), leave=False, unit="batch")
    start = time.perf_counter()
    for step, (images, targets, shifts, bad_paths) in enumerate(loader):
        if step >= steps:
            break
        if images is None:  # every image of this batch was unreadable: keep ranks in step
            images = torch.zeros((0, 3, c, c), dtype=torch.uint8)
            targets, shifts = task.empty_targets(), torch.zeros(0, 3)
        bad.add(len(targets), bad_paths)
        x = prepare_batch(images, shifts, preprocessing, device, cfg["channels_last"])
        y = targets.to(device, non_blocking=True)
        loss, outputs = train_step(model, x, y, optimizer, scaler, autocast, task.loss)
        with torch.no_grad():
            n = torch.full((), len(y), device=device, dtype=torch.float64)
            hits = task.train_hits(outputs, y).double() if task.train_hits else torch.zeros_like(n)
            sums += torch.stack([loss.double() * n, n, hits])
        if (step + 1) % 100 == 0:
            bad.check()
        bar.update()
        if (step + 1) % 20 == 0 and not bar.disable:
            bar.set_postfix(loss=f"{sums[0].item() / max(sums[1].item(), 1):.3f}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    bar.close()
    bad.check()
    local_images = sums[1].item()
    sums = D.all_reduce_sum(sums)
    n = max(sums[1].item(), 1)
    images_per_s = D.all_reduce_sum(torch.tensor([local_images / max(elapsed, 1e-9)])).item()
    stats = {"train_loss": sums[0].item() / n}
    if task.train_error:
        stats[task.train_error] = 100 * (1 - sums[2].item() / n)
    return {**stats, "images_per_s": images_per_s, "train_time_s": elapsed, "steps": steps}


@torch.no_grad()
def validate(task: Task, model, loader, cfg, device, preprocessing) -> dict:
    """Single-centre-crop validation over all ranks' shards: loss and the task's errors (%)."""
    model.eval()
    autocast = autocast_for(cfg, device)
    sums = torch.zeros(len(task.val_errors) + 2, dtype=torch.float64, device=device)
    for images, targets, shifts, _ in loader:
        if images is None:
            continue
        x = prepare_batch(images, shifts, preprocessing, device, cfg["channels_last"])
        y = targets.to(device)
        with autocast:
            outputs = model(x).float()
        n = torch.tensor([float(len(y))], device=device, dtype=torch.float64)
        sums += torch.cat([task.val_counts(outputs, y).to(device, torch.float64), n])
    sums = D.all_reduce_sum(sums)
    n = max(sums[-1].item(), 1)
    errors = {key: 100 * (1 - sums[1 + i].item() / n) for i, key in enumerate(task.val_errors)}
    return {"val_loss": sums[0].item() / n, **errors}


# -- the run --------------------------------------------------------------------------

def run_training(task: Task, cfg: dict, resume: bool, force_resume: bool) -> dict:
    """Train under the run folder's lock; returns the last epoch's log record (plus paths).

    Every process of a torchrun job calls this; one run per folder: a second run on the
    same --out is refused (vggfeat.utils.locking).
    """
    device = D.init(cfg["device"])
    run_dir = Path(cfg["out"])
    try:
        with locking.job_lock(run_dir / LOCK_NAME, f"run folder {cfg['out']}",
                              log=lambda message: print(message, file=sys.stderr)), \
                interrupts.progress_note(lambda: stopped_note(run_dir, cfg["epochs"])):
            result = _train(task, cfg, device, resume, force_resume)
        # Every rank leaves together: rank 0 may still be writing the backbone, and a rank
        # that tears its process group down meanwhile can abort in gloo's threads.
        D.barrier()
        return result
    finally:
        D.shutdown()


@dataclass
class _Run:
    """The objects of a run being trained (`objects` is what a checkpoint saves)."""

    model: nn.Module
    train_model: nn.Module  # the model inside DDP / torch.compile
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    start_epoch: int
    step: int

    @property
    def objects(self) -> tuple:
        return self.model, self.optimizer, self.scheduler, self.scaler


def make_optimizer(model: nn.Module, cfg: dict, device: torch.device):
    """SGD with momentum on the trainable parameters, the plateau schedule, the grad scaler.

    fused: one kernel for the whole update on CUDA (the foreach/loop paths launch several
    per parameter); same arithmetic. Not on the CPU, where it brings nothing measurable.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"],
                                weight_decay=cfg["weight_decay"],
                                fused=True if device.type == "cuda" else None)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg["lr_factor"], patience=cfg["lr_patience"],
        min_lr=cfg["lr"] * cfg["lr_factor"] ** cfg["lr_drops"])
    scaler = torch.amp.GradScaler(device.type, enabled=cfg["precision"] == "fp16")
    return optimizer, scheduler, scaler


def _start(task: Task, cfg, device, train_set, state) -> _Run:
    """The model, optimizer, schedule and scaler, restored from `state` when resuming."""
    torch.manual_seed(cfg["seed"])  # the same initial weights on every rank
    model = task.build_model(cfg, train_set, state).to(device)
    if cfg["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    optimizer, scheduler, scaler = make_optimizer(model, cfg, device)
    start_epoch, step = 0, 0
    if state is not None:
        start_epoch, step = restore_state(state, model, optimizer, scheduler, scaler, cfg)
    train_model = D.wrap_ddp(model, device)
    if cfg["compile"]:
        train_model = torch.compile(train_model)
    return _Run(model, train_model, optimizer, scheduler, scaler, start_epoch, step)


def _train(task: Task, cfg, device, resume, force_resume):
    rank, world = D.rank(), D.world_size()
    run_dir = Path(cfg["out"])
    check_run_folder(run_dir)  # before any work; start_or_resume checks again
    if task.prepare is not None:
        task.prepare(cfg)
    loader, val = task.build_data(cfg, rank, world, pin_memory=device.type == "cuda")
    state = start_or_resume(cfg, run_dir, resume, force_resume)
    if state is not None and task.check_state is not None:
        task.check_state(state, cfg, run_dir)
    run = _start(task, cfg, device, loader.dataset, state)
    preprocessing = run.model.meta["preprocessing"]
    main = D.is_main_process()
    if main:
        open_run_dir(run_dir, cfg, run.start_epoch)
    writer = open_tensorboard(cfg, run_dir)
    bad = BadImageCounter(cfg["max_bad_fraction"], device)
    record = {}
    records, warned = resumed_stall_state(state)  # the "learnt nothing" check, resumed
    for epoch in range(run.start_epoch, cfg["epochs"]):
        seed_everything(cfg["seed"], epoch, rank)
        loader.sampler.set_epoch(epoch)
        lr, bad_before = run.optimizer.param_groups[0]["lr"], bad.total_bad
        stats = train_one_epoch(task, run.train_model, loader, run.optimizer, run.scaler, cfg,
                                device, epoch, bad, preprocessing)
        stats.update(validate(task, run.model, val, cfg, device, preprocessing))
        run.scheduler.step(stats[task.val_errors[0]])
        run.step += stats.pop("steps")
        record = {"epoch": epoch + 1, "step": run.step, "lr": lr, **stats,
                  "bad_images": bad.total_bad - bad_before,
                  "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if not math.isfinite(stats["train_loss"]):  # before saving: keep the last good one
            raise TrainingDiverged(f"the loss diverged in epoch {epoch + 1} (NaN/Inf); "
                                   f"{task.divergence_hint}; the last good checkpoint (if any) "
                                   "is kept.")
        if main:
            records.append(record)  # checked before saving: the checkpoint carries the state
            stalled = None if warned or task.stalled is None else \
                task.stalled(records, cfg["num_classes"])
            warned = warned or bool(stalled)
            save_epoch(record, run_dir, writer, run.objects, cfg, stall_state(records, warned))
            if not cfg["quiet"]:
                print(task.format_record(record), file=sys.stderr)
            if stalled:  # said once, even with --quiet: the run is producing nothing
                print(stalled, file=sys.stderr)
    if main:
        _finish(run, run_dir, writer, cfg, fresh=state is None)
    return {**record, "run_dir": str(run_dir), "backbone": str(run_dir / "backbone.pth")}


def _finish(run: _Run, run_dir: Path, writer, cfg: dict, fresh: bool) -> None:
    """Write backbone.pth (and, after --epochs 0, the initial net's checkpoint)."""
    if run.start_epoch >= cfg["epochs"] and fresh:  # --epochs 0: the initial net
        save_checkpoint(checkpoint_state(*run.objects, 0, 0, cfg), run_dir / CHECKPOINT_NAME)
    save_backbone(run.model.cpu().eval(), run_dir / "backbone.pth")
    if writer is not None:
        writer.close()
