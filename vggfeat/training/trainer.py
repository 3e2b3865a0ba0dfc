"""The classification task: the paper's ImageNet recipe (paper Sec. 3.1) on the one loop.

Softmax cross-entropy on image-folder classes, top-1/top-5 error on single centre crops,
and the "learnt nothing" warning; the rest (lock, resume, fused SGD, mixed precision, DDP,
checkpoints) is `vggfeat.training.loop`'s. Configuration: `vggfeat.training.config`;
the net: `vggfeat.training.model`; the run folder: `vggfeat.training.run_folder`.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from vggfeat.training.augment import TrainTransform, ValTransform
from vggfeat.training.config import TrainingError, make_config
from vggfeat.training.data import (
    FolderDataset,
    SyntheticDataset,
    scan_image_folder,
    train_loader,
    val_loader,
)
from vggfeat.training.loop import Task, run_training
from vggfeat.training.model import build_model
from vggfeat.training.stall import training_stalled


def build_data(cfg: dict, rank: int, world: int, pin_memory: bool):
    """Loaders for this rank and the class list; fills cfg's classes/num_classes/train_digest."""
    scale = cfg["scale_jitter"] or cfg["scale"]
    val_scale = cfg["val_scale"] or (sum(scale) // 2 if cfg["scale_jitter"] else scale)
    if cfg["synthetic"]:
        n = cfg["num_classes"]
        classes = [f"class{i:04d}" for i in range(n)]
        train_set = SyntheticDataset(cfg["synthetic_size"], n, cfg["crop_size"])
        val_set = SyntheticDataset(max(1, cfg["synthetic_size"] // 10), n, cfg["crop_size"])
        digest = f"synthetic-{cfg['synthetic_size']}"
    else:
        if cfg["data"] is None:
            raise TrainingError("give --data DIR (with train/ and val/) or --synthetic.")
        train_images, val_images = scan_image_folder(Path(cfg["data"]))
        try:
            train_tf = TrainTransform(scale, cfg["crop_size"], cfg["flip"], cfg["color_shift"])
            val_tf = ValTransform(val_scale, cfg["crop_size"])
        except ValueError as error:
            raise TrainingError(f"{error}; raise --scale or lower --crop-size.") from None
        train_set = FolderDataset(train_images, train_tf, cfg["seed"])
        val_set = FolderDataset(val_images, val_tf, cfg["seed"])
        classes, digest = list(train_images.classes), train_images.digest()
    cfg.update(classes=classes, num_classes=len(classes), train_digest=digest)
    common = {"rank": rank, "world": world, "workers": cfg["workers"], "pin_memory": pin_memory}
    return (train_loader(train_set, batch_size=cfg["batch_size"], seed=cfg["seed"], **common),
            val_loader(val_set, batch_size=cfg["batch_size"], **common))


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> list[torch.Tensor]:
    """Number of samples whose label is among the top-k scores, for each k."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return [hits[:, :k].any(1).sum() for k in ks]


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy, the mean over this rank's batch."""
    return F.cross_entropy(logits, labels, reduction="sum") / max(len(labels), 1)


def _val_counts(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    top1, top5 = topk_correct(logits, labels)
    return torch.stack([F.cross_entropy(logits, labels, reduction="sum").double(),
                        top1.double(), top5.double()])


def format_record(r: dict) -> str:
    return (f"epoch {r['epoch']}: loss {r['train_loss']:.4f}, train top-1 err "
            f"{r['train_top1_err']:.2f}%, val top-1/top-5 err {r['val_top1_err']:.2f}%/"
            f"{r['val_top5_err']:.2f}%, lr {r['lr']:.2g}, {r['images_per_s']:.0f} images/s")


CLASSIFICATION = Task(
    build_data=build_data,
    build_model=build_model,
    loss=classification_loss,
    val_counts=_val_counts,
    val_errors=("val_top1_err", "val_top5_err"),
    format_record=format_record,
    empty_targets=lambda: torch.zeros(0, dtype=torch.long),
    train_error="train_top1_err",
    train_hits=lambda logits, labels: topk_correct(logits, labels, (1,))[0],
    stalled=training_stalled,
    divergence_hint="lower --lr or use --init xavier / --init-from for deep nets",
)


def train(resume: bool = False, force_resume: bool = False, **options) -> dict:
    """Train a backbone; returns the last epoch's log record (plus paths).

    Args:
        resume: continue the run in options["out"] from its checkpoint.
        force_resume: resume even if architecture or dataset differ from the checkpoint.
        **options: entries of `vggfeat.training.config.DEFAULTS`.

    Raises:
        TrainingError, TrainingDataError, CheckpointError: problems the user can fix.
    """
    return run_training(CLASSIFICATION, make_config(**options), resume, force_resume)
