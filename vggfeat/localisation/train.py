"""Training a localisation net (paper Appendix A.1): `train-backbone --task localisation`.

The classification recipe with three changes, as the paper: the last layer predicts a box
(4 outputs, single-class regression "scr", or 4 per class, per-class regression "pcr"),
the loss is Euclidean (Caffe's EuclideanLoss: half the squared distance, batch mean), and
the net starts from the classification net trained at the same scale (`--finetune-from`,
required), its last layer from scratch, lr 1e-3; `--finetune fc` trains fc6-fc8 only,
`all` every layer. Architecture, width, crop, pooling and input normalisation all come
from that classification net.

This module is only what differs (data with box targets, the box layer, the loss, the
validation error, the log line): a `vggfeat.training.loop.Task`. The loop itself (the
run-folder lock, per-image seeding, DistributedSampler order, DDP, fused SGD, mixed
precision, atomic checkpoints, exact --resume, log.jsonl and backbone.pth) is the
classification trainer's, written once in `vggfeat.training.loop`.
"""
from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from vggfeat.data.images import BadImageError, open_rgb
from vggfeat.data.readers import LocImages, read_localisation
from vggfeat.data.transforms import rescale_pil, to_uint8_tensor
from vggfeat.localisation.boxes import box_iou, crop_target, decode_boxes
from vggfeat.localisation.config import make_loc_config
from vggfeat.training.augment import pca_shift, sample_generator
from vggfeat.training.config import TrainingError
from vggfeat.training.data import train_loader, val_loader
from vggfeat.training.loop import Task, run_training
from vggfeat.training.model import load_run_model
from vggfeat.utils import distributed as D

# A box is correct at this IoU with a ground-truth box (ILSVRC criterion, paper Appendix A.2).
IOU_THRESHOLD = 0.5


# -- data: crops and their box targets --------------------------------------------------

class LocTransform:
    """Rescale to S, crop (random or central), flip; returns the crop and its box target.

    The random draws are those of `TrainTransform`, in the same order, so a localisation
    run sees the crops a classification run with the same seed would.

    Args:
        scale: S, or (S_min, S_max) for scale jittering.
        crop_size: crop side.
        train: random crop and flip and colour shift; else the central crop.
        flip: random horizontal flips (train only).
        lighting_std: PCA colour shift std (train only).
    """

    def __init__(self, scale, crop_size: int, train: bool = True, flip: bool = True,
                 lighting_std: float = 0.1):
        lo, hi = (scale, scale) if isinstance(scale, int) else tuple(scale)
        if lo > hi or lo < crop_size:
            raise ValueError(f"training scale {scale} must be >= crop size {crop_size} "
                             "(and min <= max)")
        self.scale_range, self.crop_size, self.train = (int(lo), int(hi)), crop_size, train
        self.flip, self.lighting_std = flip, lighting_std
        self.draft_size = hi

    def __call__(self, img, boxes, gen):
        """(uint8 crop, RGB shift (3,), target (cx, cy, w, h) or None)."""
        lo, hi = self.scale_range
        c = self.crop_size
        s = int(torch.randint(lo, hi + 1, (1,), generator=gen)) if self.train else lo
        scaled = rescale_pil(img, s)
        w, h = scaled.size
        if self.train:
            top = int(torch.randint(0, h - c + 1, (1,), generator=gen))
            left = int(torch.randint(0, w - c + 1, (1,), generator=gen))
            flip = self.flip and bool(torch.rand(1, generator=gen) < 0.5)
            shift = pca_shift(torch.randn(3, generator=gen) * self.lighting_std)
        else:
            top, left, flip, shift = (h - c) // 2, (w - c) // 2, False, torch.zeros(3)
        x = to_uint8_tensor(scaled.crop((left, top, left + c, top + c)))
        if flip:
            x = x.flip(-1)
        scale_xy = (w / img.size[0], h / img.size[1])
        return x, shift, crop_target(boxes, scale_xy, (left, top), c, flip)


class LocDataset(Dataset):
    """`dataset[(epoch, index)]` -> (uint8 crop, target (6,), shift, None), or
    (None, None, None, path) for an unreadable file.

    target = (cx, cy, w, h, class index, valid): valid is 0 when no box overlaps the crop.
    """

    def __init__(self, images: LocImages, transform: LocTransform, seed: int = 0):
        self.images, self.transform, self.seed = images, transform, seed

    def __len__(self):
        return len(self.images)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        path = self.images.root / self.images.paths[index]
        try:
            img = open_rgb(path, draft_size=self.transform.draft_size)
        except BadImageError:
            return None, None, None, str(path)
        x, shift, box = self.transform(img, self.images.boxes[index],
                                       sample_generator(self.seed, epoch, index))
        valid = box is not None
        box = box if valid else torch.zeros(4)
        target = torch.cat([box, torch.tensor([float(self.images.labels[index]), float(valid)])])
        return x, target, shift, None


def collate_targets(batch):
    """Stack good samples; returns (images, targets (N, 6), shifts, bad_paths)."""
    good = [b for b in batch if b[3] is None]
    bad = [b[3] for b in batch if b[3] is not None]
    if not good:
        return None, None, None, bad
    return (torch.stack([b[0] for b in good]), torch.stack([b[1] for b in good]),
            torch.stack([b[2] for b in good]), bad)


# -- model and loss ---------------------------------------------------------------------

def predicted_box(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N, 4) box of each sample's class (PCR) or the single box (SCR)."""
    heads = outputs.view(len(outputs), -1, 4)
    index = labels.long() if heads.shape[1] > 1 else torch.zeros_like(labels, dtype=torch.long)
    return heads[torch.arange(len(outputs), device=outputs.device), index]


def euclidean_loss(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Caffe's EuclideanLoss, 1/(2N) sum ||pred - target||^2, over samples with a target.

    Divided by this rank's batch size N (DDP averages ranks -> the global-batch mean).
    """
    diff = predicted_box(outputs, target[:, 4]) - target[:, :4]
    return 0.5 * (diff.pow(2).sum(1) * target[:, 5]).sum() / max(len(target), 1)


def build_loc_model(cfg: dict) -> nn.Module:
    """The classification net of --finetune-from with a fresh box layer (4 or 4 x C)."""
    source = load_run_model(cfg["finetune_from"])
    model = copy.deepcopy(source).train()
    fc8 = model.classifier[6]
    outputs = 4 * (len(cfg["classes"]) if cfg["box_head"] == "pcr" else 1)
    model.classifier[6] = nn.Linear(fc8.in_features, outputs)
    if cfg["init"] == "xavier":
        nn.init.xavier_uniform_(model.classifier[6].weight)
    else:
        nn.init.normal_(model.classifier[6].weight, 0.0, 0.01)
    nn.init.zeros_(model.classifier[6].bias)
    for module in model.classifier:
        if isinstance(module, nn.Dropout):
            module.p = cfg["dropout"]
    if cfg["finetune"] == "fc":  # the paper's "first two FC layers" (+ the new box layer)
        for p in model.features.parameters():
            p.requires_grad_(False)
    src_training = source.meta.get("training", {})
    model.meta = {**{k: v for k, v in source.meta.items() if k not in ("source", "sha256")},
                  "num_classes": outputs, "task": "localisation", "box_head": cfg["box_head"],
                  "finetune": cfg["finetune"], "classes": list(cfg["classes"]),
                  "training": {"scale": cfg["scale_jitter"] or cfg["scale"],
                               "epochs": cfg["epochs"], "init": f"finetune {cfg['init']}",
                               "seed": cfg["seed"], "classifier_scale": src_training.get("scale")}}
    cfg.update(arch=model.meta["arch"], width=model.meta["width"],
               crop_size=model.meta["crop_size"], num_classes=outputs)
    return model


# -- the task -------------------------------------------------------------------------

def _set_train(model, cfg):
    model.train()
    if cfg["finetune"] == "fc":  # frozen trunk: batch-norm statistics stay as trained
        _raw(model).features.eval()


def _raw(model):
    """The model inside DDP and torch.compile wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def build_loc_data(cfg: dict, rank: int, world: int, pin_memory: bool):
    """Loaders of the localisation crops; fills cfg's classes, train_digest and num_classes
    (the box layer's outputs)."""
    scale = cfg["scale_jitter"] or cfg["scale"]
    val_scale = cfg["val_scale"] or (sum(scale) // 2 if cfg["scale_jitter"] else scale)
    train_images = read_localisation(cfg["data"], "train")
    val_images = read_localisation(cfg["data"], "val")
    if val_images.classes != train_images.classes:
        raise TrainingError(f"{cfg['data']}: train and val list different classes.")
    try:
        train_tf = LocTransform(scale, cfg["crop_size"], True, cfg["flip"], cfg["color_shift"])
        val_tf = LocTransform(val_scale, cfg["crop_size"], train=False)
    except ValueError as error:
        raise TrainingError(f"{error}; raise --scale.") from None
    cfg.update(classes=list(train_images.classes), train_digest=train_images.digest())
    cfg["num_classes"] = 4 * (len(cfg["classes"]) if cfg["box_head"] == "pcr" else 1)
    common = {"rank": rank, "world": world, "workers": cfg["workers"], "pin_memory": pin_memory,
              "collate_fn": collate_targets}
    return (train_loader(LocDataset(train_images, train_tf, cfg["seed"]),
                         batch_size=cfg["batch_size"], seed=cfg["seed"], **common),
            val_loader(LocDataset(val_images, val_tf, cfg["seed"]),
                       batch_size=cfg["batch_size"], **common))


def _peek_source(cfg):
    """Architecture entries of the source net, so the crop size is known before the data."""
    source = load_run_model(cfg["finetune_from"])
    cfg.update(arch=source.meta["arch"], width=source.meta["width"],
               crop_size=source.meta["crop_size"])
    s = source.meta.get("training", {}).get("scale")
    if s is not None and s != (cfg["scale_jitter"] or cfg["scale"]) and D.is_main_process():
        warnings.warn(f"--finetune-from {cfg['finetune_from']} was trained at S={s}; the paper "
                      "initialises each localisation net from the classification net of its "
                      "own scale.", stacklevel=3)


def _val_counts(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(loss summed over the batch, boxes of the ground-truth class at IoU >= 0.5).

    The IoU is taken in crop coordinates against the target box (the ground-truth box with
    the most area in the crop); eval-localisation measures against every ground-truth box
    of the whole image.
    """
    pred = decode_boxes(predicted_box(outputs, targets[:, 4]).cpu(), 1).numpy()
    true = decode_boxes(targets[:, :4].cpu(), 1).numpy()
    iou = np.array([box_iou(p[None], t[None])[0, 0] for p, t in zip(pred, true, strict=True)])
    hits = float(((iou >= IOU_THRESHOLD) & (targets[:, 5].cpu().numpy() > 0)).sum())
    return torch.tensor([euclidean_loss(outputs, targets).item() * len(targets), hits],
                        dtype=torch.float64)


def _check_state(state: dict, cfg: dict, run_dir) -> None:
    if state["config"].get("box_head") != cfg["box_head"]:
        raise TrainingError(f"{run_dir} holds a --box-head {state['config'].get('box_head')} "
                            "run; resume it with the same --box-head.")


def format_record(r: dict) -> str:
    return (f"epoch {r['epoch']}: loss {r['train_loss']:.4f}, val loss {r['val_loss']:.4f}, "
            f"val GT-class localisation err {r['val_loc_err']:.2f}%, lr {r['lr']:.2g}, "
            f"{r['images_per_s']:.0f} images/s")


LOCALISATION = Task(
    build_data=build_loc_data,
    build_model=lambda cfg, train_set, state: build_loc_model(cfg),
    loss=euclidean_loss,
    val_counts=_val_counts,
    val_errors=("val_loc_err",),
    format_record=format_record,
    empty_targets=lambda: torch.zeros(0, 6),
    set_train=_set_train,
    prepare=_peek_source,
    check_state=_check_state,
)


def train_localisation(resume: bool = False, force_resume: bool = False, **options) -> dict:
    """Fine-tune a classification net into a localisation net; returns the last log record.

    Args:
        resume: continue the run in options["out"] from its checkpoint.
        force_resume: resume even if the architecture or dataset differ.
        **options: entries of the trainer's `DEFAULTS` plus box_head ("scr"/"pcr") and
            finetune ("fc"/"all"); finetune_from and data are required.
    """
    return run_training(LOCALISATION, make_loc_config(**options), resume, force_resume)
