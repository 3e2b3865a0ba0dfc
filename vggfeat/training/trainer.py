"""The bundled trainer: the paper's recipe (SPEC section 3), one process or many (torchrun).

One flat script of short functions, as torchvision's classification reference:
`build_data`, `build_model`, `train_one_epoch`, `validate`, `train`. The configuration is
the flat, commented `DEFAULTS` dict below; the resolved copy is saved in every checkpoint
and in RUN_DIR/config.json, so a run can be rebuilt from its output.

Reproducibility: every epoch reseeds the global RNGs from (seed, epoch, rank) and every
image's augmentation from (seed, epoch, index); the sampler's order is a function of
(seed, epoch). A resumed run therefore needs no iterator state, and on the CPU stopping
after epoch k and resuming gives bitwise the weights of an uninterrupted run.
"""
from __future__ import annotations

import json
import math
import random
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vggfeat.diagnostics import training_stalled
from vggfeat.models import build_backbone, canonical_arch, load_backbone, normalize, save_backbone
from vggfeat.models.vgg import check_pool_rounding
from vggfeat.training.augment import (
    PREPROCESSINGS,
    TrainTransform,
    ValTransform,
    apply_on_device,
    sample_mean_rgb,
    training_preprocessing,
)
from vggfeat.training.checkpoint import (
    CHECKPOINT_NAME,
    IDENTITY_KEYS,
    apply_optimizer_options,
    check_resumable,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from vggfeat.training.data import (
    FolderDataset,
    SyntheticDataset,
    TrainingDataError,
    scan_image_folder,
    train_loader,
    val_loader,
)
from vggfeat.utils import atomic, locking
from vggfeat.utils import distributed as D
from vggfeat.utils.progress import progress_bar

DEFAULTS = {
    # -- data ---------------------------------------------------------------------------
    "data": None,             # DIR holding train/<class>/* and val/<class>/*
    "synthetic": False,       # fixed random crops instead of DIR: measures the model alone
    "synthetic_size": 2560,   # synthetic training images per epoch (val: a tenth)
    "num_classes": 1000,      # synthetic data only; real data has one class per folder
    "out": None,              # RUN_DIR: checkpoint.pth, log.jsonl, config.json, backbone.pth
    # -- network ------------------------------------------------------------------------
    "arch": "vgg11",          # paper configuration A..E or vgg11..vgg19 (SPEC section 1)
    "width": 1.0,             # channel multiplier (0.125 for test-sized nets)
    "crop_size": 224,         # training crop; fc6 kernel is crop_size / 32
    "init": "normal",         # "normal" (std 0.01, biases 0) or "xavier" (Glorot)
    "init_from": None,        # net A run/file: copy its first 4 convs and 3 FCs (SPEC 3)
    "finetune_from": None,    # run/file of the same configuration to start from
    "dropout": 0.5,           # after fc6 and fc7
    "pool_rounding": None,    # "floor" (torch) or "ceil" (Caffe); None: floor, or the
                              # --init-from/--finetune-from net's. Recorded in the backbone.
    # -- the paper's recipe -------------------------------------------------------------
    "epochs": 74,             # 370K iterations of 256 images
    "batch_size": 256,        # global batch, split evenly over processes
    "lr": 0.01,
    "momentum": 0.9,
    "weight_decay": 5e-4,     # on all parameters (torchvision's reference does the same)
    "lr_factor": 0.1,         # divide by 10 ...
    "lr_patience": 3,         # ... when val top-1 has not improved for this many epochs (choice)
    "lr_drops": 3,            # at most this many times (3 in the paper)
    # -- augmentation -------------------------------------------------------------------
    "scale": None,            # fixed training scale S (smallest side); None: crop * 8/7 ...
    "scale_jitter": None,     # ... or [S_min, S_max], S drawn per image (e.g. [256, 512])
    "val_scale": None,        # Q of the single-crop validation; default S or (S_min+S_max)/2
    "flip": True,             # random horizontal flips
    "color_shift": 0.1,       # std of AlexNet's PCA colour weights; 0 disables
    # -- input normalisation (stored in the backbone's meta) -----------------------------
    "preprocessing": None,    # "paper": RGB 0..255 minus the mean, std 1 (SPEC section 1);
                              # "torchvision": RGB in [0, 1], ImageNet mean and std;
                              # None: the --init-from/--finetune-from net's record, else paper
    "mean": None,             # "sample" (mean RGB of the training images), "imagenet", or
                              # 3 numbers on that scale; None: paper "sample", torchvision
                              # "imagenet"
    "std": None,              # 3 numbers; None: 1 (paper) or ImageNet's std (torchvision)
    "mean_sample": 1000,      # training images the "sample" mean is computed from
    # -- runtime ------------------------------------------------------------------------
    "seed": 0,
    "device": "auto",         # "auto": cuda when available, else cpu
    "workers": 8,             # decoding processes per rank
    "precision": "fp32",      # "fp32", "bf16" (autocast) or "fp16" (autocast + grad scaler)
    "channels_last": False,
    "compile": False,         # torch.compile the model
    "max_bad_fraction": 0.01, # abort when more than this share of images cannot be decoded
    "max_steps": None,        # stop each epoch after this many steps (benchmarks)
    "tensorboard": False,     # also write TensorBoard scalars (needs the tensorboard package)
    "quiet": False,
}


LOCK_NAME = "train.lock"  # held while a run writes its folder (vggfeat.utils.locking)
RUN_FILES = ("config.json", "log.jsonl", CHECKPOINT_NAME, "backbone.pth")
# config.json of a run folder carries this key, so that a folder is known to be vggfeat's
# before anything in it is replaced (a user's own config.json or log.jsonl never is).
RUN_MARKER = "vggfeat"


class TrainingError(ValueError):
    """A run cannot start or continue as asked; the message says how to fix it."""


class TrainingDiverged(TrainingError):
    """The run itself failed (NaN/Inf loss): exit status 1, not a bad-input 2."""

    exit_code = 1


def make_config(**options) -> dict:
    """DEFAULTS updated by options; unknown names are an error."""
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown training options: {sorted(unknown)}")
    cfg = {**DEFAULTS, **options}
    cfg["arch"] = canonical_arch(cfg["arch"])
    for key in ("data", "out", "init_from", "finetune_from"):
        cfg[key] = None if cfg[key] is None else str(cfg[key])
    if cfg["scale"] is None:  # the paper's S = 256 for 224 crops, kept in proportion
        cfg["scale"] = round(cfg["crop_size"] * 256 / 224)
    if cfg["scale_jitter"] is not None:
        cfg["scale_jitter"] = [int(s) for s in cfg["scale_jitter"]]
    if cfg["preprocessing"] not in (None, *PREPROCESSINGS):
        raise TrainingError(f"preprocessing must be one of {PREPROCESSINGS}, got "
                            f"{cfg['preprocessing']!r}")
    if cfg["mean"] not in (None, "sample", "imagenet"):
        cfg["mean"] = [float(m) for m in cfg["mean"]]
    if cfg["std"] is not None:
        cfg["std"] = [float(s) for s in cfg["std"]]
    if isinstance(cfg["mean"], list):  # given numbers: checked before any work is done
        try:
            training_preprocessing(cfg["preprocessing"] or "paper", cfg["mean"], cfg["std"])
        except ValueError as error:
            raise TrainingError(f"--mean/--std: {error}") from None
    if cfg["pool_rounding"] is not None:
        check_pool_rounding(cfg["pool_rounding"])
    if cfg["device"] == "auto":
        cfg["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    if cfg["precision"] not in ("fp32", "bf16", "fp16"):
        raise TrainingError(f"precision must be fp32, bf16 or fp16, got {cfg['precision']!r}")
    if cfg["out"] is None:
        raise TrainingError("give --out RUN_DIR for the checkpoints and logs.")
    if cfg["init_from"] and cfg["finetune_from"]:
        raise TrainingError("--init-from and --finetune-from exclude each other; give one.")
    return cfg


def seed_everything(seed: int, epoch: int, rank: int) -> None:
    """Reseed python, numpy and torch (incl. CUDA) from (seed, epoch, rank)."""
    s = int(np.random.SeedSequence([seed, epoch, rank, 0x5EED]).generate_state(1)[0])
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


# -- data -----------------------------------------------------------------------------

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


# -- model ----------------------------------------------------------------------------

def load_run_model(source: str) -> nn.Module:
    """A trained net from a run folder (backbone.pth, else checkpoint.pth) or a weights file."""
    path = Path(source)
    if path.is_dir():
        path = path / "backbone.pth" if (path / "backbone.pth").exists() else path / CHECKPOINT_NAME
    if not path.exists():
        raise TrainingError(f"{source} holds no backbone.pth or {CHECKPOINT_NAME}; give a run "
                            "folder written by train-backbone or a backbone file.")
    if path.name == CHECKPOINT_NAME:
        state = load_checkpoint(path)
        c = state["config"]
        model = build_backbone(c["arch"], num_classes=c["num_classes"], width=c["width"],
                               crop_size=c["crop_size"],
                               pool_rounding=c.get("pool_rounding") or "floor")
        model.load_state_dict(state["model"])
        model.meta["classes"] = list(state["classes"])
        if c.get("input_preprocessing"):
            model.meta["preprocessing"] = dict(c["input_preprocessing"])
        return model.eval()
    return load_backbone(path)


def conv_positions(model: nn.Module) -> dict[tuple[int, int], str]:
    """(block, position in block) -> name in model.features of each convolution."""
    block, index, positions = 0, 0, {}
    for name, module in model.features.named_children():
        if isinstance(module, nn.MaxPool2d):
            block, index = block + 1, 0
        elif isinstance(module, nn.Conv2d):
            positions[(block, index)] = name
            index += 1
    return positions


def init_from_net_a(model: nn.Module, source: nn.Module, n_convs: int = 4) -> list[str]:
    """Copy net A's first `n_convs` conv layers and its three FC layers into `model`.

    A's first four convs are conv1_1, conv2_1, conv3_1, conv3_2 (SPEC section 3); each goes
    to the layer at the same block and position of the deeper net, the only reading under
    which the shapes agree. A batch-norm layer right after a copied conv is copied too
    when both nets have one. Everything else keeps its random init.

    Returns:
        The state-dict keys that were copied.
    """
    src_positions, dst_positions = conv_positions(source), conv_positions(model)
    pairs = []
    for pos, src_name in list(src_positions.items())[:n_convs]:
        if pos not in dst_positions:
            raise TrainingError(f"the target net has no conv at block {pos[0] + 1}, "
                                f"position {pos[1] + 1} to take {src_name} from net A.")
        pairs.append((f"features.{src_name}", f"features.{dst_positions[pos]}"))
        src_next, dst_next = str(int(src_name) + 1), str(int(dst_positions[pos]) + 1)
        if isinstance(getattr(source.features, src_next, None), nn.BatchNorm2d) and \
                isinstance(getattr(model.features, dst_next, None), nn.BatchNorm2d):
            pairs.append((f"features.{src_next}", f"features.{dst_next}"))
    pairs += [(f"classifier.{i}", f"classifier.{i}") for i in (0, 3, 6)]
    src_state, dst_state = source.state_dict(), model.state_dict()
    copied = []
    for src_prefix, dst_prefix in pairs:
        for key in [k for k in src_state if k.startswith(src_prefix + ".")]:
            dst_key = dst_prefix + key[len(src_prefix):]
            if dst_state[dst_key].shape != src_state[key].shape:
                raise TrainingError(
                    f"--init-from: {key} {tuple(src_state[key].shape)} does not fit {dst_key} "
                    f"{tuple(dst_state[dst_key].shape)}; net A must have the same width, crop "
                    "size and number of classes.")
            dst_state[dst_key].copy_(src_state[key])
            copied.append(dst_key)
    return copied


def resolve_preprocessing(cfg: dict, train_set, state, source=None) -> dict:
    """The run's input normalisation, also written to cfg["input_preprocessing"].

    On --resume the checkpoint's (the same numbers as before). A net started from another
    (`source`, --init-from/--finetune-from) keeps the input its weights were trained on
    unless --preprocessing, --mean or --std say otherwise. Else from the options: paper
    (the mean RGB sampled from `train_set`) by default.
    """
    if state is not None and state["config"].get("input_preprocessing"):
        record = dict(state["config"]["input_preprocessing"])
    elif source is not None and cfg["preprocessing"] is None and cfg["mean"] is None \
            and cfg["std"] is None:
        record = dict(source.meta["preprocessing"])
    else:
        kind = cfg["preprocessing"] = cfg["preprocessing"] or "paper"
        mean = cfg["mean"] = cfg["mean"] or ("sample" if kind == "paper" else "imagenet")
        sampled = None
        if mean == "sample":
            sampled = sample_mean_rgb(train_set, cfg["mean_sample"], cfg["seed"],
                                      cfg["workers"])
        try:
            record = training_preprocessing(kind, mean, cfg["std"], sampled)
        except ValueError as error:
            raise TrainingError(f"--mean/--std: {error}") from None
    cfg["input_preprocessing"] = record
    return record


def build_model(cfg: dict, train_set=None, state=None) -> nn.Module:
    """The network to train: fresh init, or from net A, or a trained net to fine-tune.

    Fills cfg["input_preprocessing"] (`resolve_preprocessing`, from `train_set` and the
    resumed `state`) and cfg["pool_rounding"] when it is None (the source net's rounding,
    else torch's floor).
    """
    model = build_backbone(cfg["arch"], num_classes=cfg["num_classes"], width=cfg["width"],
                           crop_size=cfg["crop_size"], init=cfg["init"], dropout=cfg["dropout"])
    source_path = cfg["init_from"] or cfg["finetune_from"]
    source = load_run_model(source_path) if source_path else None  # after the random init
    if cfg["pool_rounding"] is None:
        cfg["pool_rounding"] = source.pool_rounding if source is not None else "floor"
    model.set_pool_rounding(cfg["pool_rounding"])
    resolve_preprocessing(cfg, train_set, state, source)
    if source is not None:
        if source.meta.get("classes") and list(source.meta["classes"]) != cfg["classes"]:
            raise TrainingError(f"{source_path} was trained on other classes than {cfg['data']}; "
                                "use a net trained on the same class folders.")
        if cfg["init_from"]:
            init_from_net_a(model, source)
        else:
            try:
                model.load_state_dict(source.state_dict())
            except RuntimeError as error:
                raise TrainingError(f"--finetune-from {source_path} has another configuration "
                                    f"than --arch {cfg['arch']} --width {cfg['width']} "
                                    f"--crop-size {cfg['crop_size']}: {error}") from None
    model.meta.update(
        classes=list(cfg["classes"]),
        preprocessing=dict(cfg["input_preprocessing"]),
        training={"scale": cfg["scale_jitter"] or cfg["scale"], "epochs": cfg["epochs"],
                  "init": cfg["init"], "seed": cfg["seed"],
                  "preprocessing": cfg["preprocessing"] or ("from " + source_path if source
                                                            else "paper"),
                  "mean": cfg["mean"] if isinstance(cfg["mean"], str | None) else "given"},
    )
    return model


# -- one epoch ------------------------------------------------------------------------

def prepare_batch(images, shifts, preprocessing, device, channels_last: bool):
    """uint8 crops + colour shifts -> normalised float batch on the device."""
    x = apply_on_device(images.to(device, non_blocking=True), shifts.to(device, non_blocking=True))
    x = normalize(x, preprocessing)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> list[torch.Tensor]:
    """Number of samples whose label is among the top-k scores, for each k."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return [hits[:, :k].any(1).sum() for k in ks]


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


def autocast_for(cfg: dict, device: torch.device):
    """Mixed precision as configured (bf16 needs no grad scaler; fp16 does)."""
    dtype = torch.float16 if cfg["precision"] == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=cfg["precision"] != "fp32")


def train_step(model, x, y, optimizer, scaler, autocast, loss_fn=None):
    """One SGD step on a prepared batch; returns the (detached) loss and logits.

    `loss_fn(outputs, y)` replaces the softmax cross-entropy (the localisation task's
    Euclidean loss); it too must sum over this rank's batch and divide by its size.
    """
    with autocast:
        logits = model(x)
        # Mean over this rank's batch; DDP averages over ranks -> the global-batch mean.
        loss = (loss_fn(logits.float(), y) if loss_fn is not None else
                F.cross_entropy(logits.float(), y, reduction="sum") / max(len(y), 1))
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), logits.detach()


def train_one_epoch(model, loader, optimizer, scaler, cfg, device, epoch, bad, preprocessing):
    """One pass over the training loader; returns loss, top-1 error, images/s."""
    model.train()
    autocast = autocast_for(cfg, device)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss*n, top-1 hits, n
    c = cfg["crop_size"]
    steps = len(loader) if cfg["max_steps"] is None else min(len(loader), cfg["max_steps"])
    bar = progress_bar(total=steps, desc=f"epoch {epoch + 1}/{cfg['epochs']}", file=sys.stderr,
                       disable=cfg["quiet"] or not D.is_main_process(), leave=False, unit="batch")
    start = time.perf_counter()
    for step, (images, labels, shifts, bad_paths) in enumerate(loader):
        if step >= steps:
            break
        if images is None:  # every image of this batch was unreadable: keep ranks in step
            images = torch.zeros((0, 3, c, c), dtype=torch.uint8)
            labels, shifts = torch.zeros(0, dtype=torch.long), torch.zeros(0, 3)
        bad.add(len(labels), bad_paths)
        x = prepare_batch(images, shifts, preprocessing, device, cfg["channels_last"])
        y = labels.to(device, non_blocking=True)
        loss, logits = train_step(model, x, y, optimizer, scaler, autocast)
        with torch.no_grad():
            n = torch.full((), len(y), device=device, dtype=torch.float64)
            sums += torch.stack([loss.double() * n, topk_correct(logits, y, (1,))[0].double(), n])
        if (step + 1) % 100 == 0:
            bad.check()
        bar.update()
        if (step + 1) % 20 == 0 and not bar.disable:
            bar.set_postfix(loss=f"{sums[0].item() / max(sums[2].item(), 1):.3f}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    bar.close()
    bad.check()
    local_images = sums[2].item()
    sums = D.all_reduce_sum(sums)
    n = max(sums[2].item(), 1)
    images_per_s = D.all_reduce_sum(torch.tensor([local_images / elapsed])).item()
    return {"train_loss": sums[0].item() / n, "train_top1_err": 100 * (1 - sums[1].item() / n),
            "images_per_s": images_per_s, "train_time_s": elapsed, "steps": steps}


@torch.no_grad()
def validate(model, loader, cfg, device, preprocessing):
    """Single-centre-crop validation over all ranks' shards: loss, top-1 and top-5 error (%)."""
    model.eval()
    autocast = autocast_for(cfg, device)
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss*n, top1, top5, n
    for images, labels, shifts, _ in loader:
        if images is None:
            continue
        x = prepare_batch(images, shifts, preprocessing, device, cfg["channels_last"])
        y = labels.to(device)
        with autocast:
            logits = model(x).float()
        top1, top5 = topk_correct(logits, y)
        sums += torch.stack([F.cross_entropy(logits, y, reduction="sum").double(),
                             top1.double(), top5.double(),
                             torch.tensor(float(len(y)), device=device, dtype=torch.float64)])
    sums = D.all_reduce_sum(sums)
    n = max(sums[3].item(), 1)
    return {"val_loss": sums[0].item() / n, "val_top1_err": 100 * (1 - sums[1].item() / n),
            "val_top5_err": 100 * (1 - sums[2].item() / n)}


# -- the run --------------------------------------------------------------------------

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


def open_tensorboard(cfg, run_dir):
    if not cfg["tensorboard"] or not D.is_main_process():
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn("--tensorboard needs the tensorboard package (pip install tensorboard); "
                      "logging to log.jsonl only.", stacklevel=2)
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def train(resume: bool = False, force_resume: bool = False, **options) -> dict:
    """Train a backbone; returns the last epoch's log record (plus paths).

    Args:
        resume: continue the run in options["out"] from its checkpoint.
        force_resume: resume even if architecture or dataset differ from the checkpoint.
        **options: entries of `DEFAULTS`.

    Raises:
        TrainingError, TrainingDataError, CheckpointError: problems the user can fix.
    """
    cfg = make_config(**options)
    device = D.init(cfg["device"])
    try:  # one run per folder: a second train-backbone on the same --out is refused
        with locking.job_lock(Path(cfg["out"]) / LOCK_NAME, f"run folder {cfg['out']}",
                              log=lambda message: print(message, file=sys.stderr)):
            result = _train(cfg, device, resume, force_resume)
        # Every rank leaves together: rank 0 may still be writing the backbone, and a rank
        # that tears its process group down meanwhile can abort in gloo's threads.
        D.barrier()
        return result
    finally:
        D.shutdown()


def _train(cfg, device, resume, force_resume):
    rank, world = D.rank(), D.world_size()
    run_dir = Path(cfg["out"])
    check_run_folder(run_dir)  # before any work; start_or_resume checks again
    loader, val = build_data(cfg, rank, world, pin_memory=device.type == "cuda")
    state = start_or_resume(cfg, run_dir, resume, force_resume)
    torch.manual_seed(cfg["seed"])  # the same initial weights on every rank
    model = build_model(cfg, loader.dataset, state).to(device)
    if cfg["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    preprocessing = model.meta["preprocessing"]
    # fused: one kernel for the whole update on CUDA (the foreach/loop paths launch several
    # per parameter); same arithmetic. Not on the CPU, where it brings nothing measurable.
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                                weight_decay=cfg["weight_decay"],
                                fused=True if device.type == "cuda" else None)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg["lr_factor"], patience=cfg["lr_patience"],
        min_lr=cfg["lr"] * cfg["lr_factor"] ** cfg["lr_drops"])
    scaler = torch.amp.GradScaler(device.type, enabled=cfg["precision"] == "fp16")
    start_epoch, step = 0, 0
    if state is not None:
        start_epoch, step = restore_state(state, model, optimizer, scheduler, scaler, cfg)
    train_model = D.wrap_ddp(model, device)
    if cfg["compile"]:
        train_model = torch.compile(train_model)
    main = D.is_main_process()
    if main:
        open_run_dir(run_dir, cfg, start_epoch)
    writer = open_tensorboard(cfg, run_dir)
    bad = BadImageCounter(cfg["max_bad_fraction"], device)
    record = {}
    records, warned = [], False  # for the "learnt nothing" check (vggfeat.diagnostics)
    for epoch in range(start_epoch, cfg["epochs"]):
        seed_everything(cfg["seed"], epoch, rank)
        loader.sampler.set_epoch(epoch)
        lr, bad_before = optimizer.param_groups[0]["lr"], bad.total_bad
        stats = train_one_epoch(train_model, loader, optimizer, scaler, cfg, device, epoch, bad,
                                preprocessing)
        stats.update(validate(model, val, cfg, device, preprocessing))
        scheduler.step(stats["val_top1_err"])
        step += stats.pop("steps")
        record = {"epoch": epoch + 1, "step": step, "lr": lr, **stats,
                  "bad_images": bad.total_bad - bad_before,
                  "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if not math.isfinite(stats["train_loss"]):  # before saving: keep the last good one
            raise TrainingDiverged(f"the loss diverged in epoch {epoch + 1} (NaN/Inf); lower --lr "
                                "or use --init xavier / --init-from for deep nets; the last "
                                "good checkpoint (if any) is kept.")
        if main:
            save_epoch(record, run_dir, writer, (model, optimizer, scheduler, scaler), cfg)
            if not cfg["quiet"]:
                print(format_record(record), file=sys.stderr)
            records.append(record)
            stalled = None if warned else training_stalled(records, cfg["num_classes"])
            if stalled:  # said once, even with --quiet: the run is producing nothing
                print(stalled, file=sys.stderr)
                warned = True
    if main:
        if start_epoch >= cfg["epochs"] and state is None:  # --epochs 0: the initial net
            save_checkpoint(checkpoint_state(model, optimizer, scheduler, scaler, 0, 0, cfg),
                            run_dir / CHECKPOINT_NAME)
        save_backbone(model.cpu().eval(), run_dir / "backbone.pth")
        if writer is not None:
            writer.close()
    return {**record, "run_dir": str(run_dir), "backbone": str(run_dir / "backbone.pth")}


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


def open_run_dir(run_dir: Path, cfg: dict, start_epoch: int) -> None:
    """The run folder with its config.json, and log.jsonl cut back to `start_epoch`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_config(run_dir, cfg)
    rewrite_log(run_dir / "log.jsonl", start_epoch)


def save_epoch(record: dict, run_dir: Path, writer, objects: tuple, cfg: dict) -> None:
    """Log one finished epoch and checkpoint it (main process only).

    `objects` is (model, optimizer, scheduler, scaler). The log line is appended atomically
    (never a half line if killed) before the checkpoint, and rewrite_log drops lines past a
    resumed checkpoint's epoch, so log and checkpoint always agree after a rerun.
    """
    atomic.append_line(run_dir / "log.jsonl", json.dumps(record))
    if writer is not None:
        for key, value in record.items():
            if isinstance(value, float):
                writer.add_scalar(key, value, record["epoch"])
    save_checkpoint(checkpoint_state(*objects, record["epoch"], record["step"], cfg),
                    run_dir / CHECKPOINT_NAME)


def checkpoint_state(model, optimizer, scheduler, scaler, epoch, step, cfg) -> dict:
    """Everything --resume needs, as tensors and plain containers (weights_only loadable)."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "epoch": epoch, "step": step, "rng": rng_state(), "config": cfg,
            "classes": list(cfg["classes"])}


def format_record(r: dict) -> str:
    return (f"epoch {r['epoch']}: loss {r['train_loss']:.4f}, train top-1 err "
            f"{r['train_top1_err']:.2f}%, val top-1/top-5 err {r['val_top1_err']:.2f}%/"
            f"{r['val_top5_err']:.2f}%, lr {r['lr']:.2g}, {r['images_per_s']:.0f} images/s")
