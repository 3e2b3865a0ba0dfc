"""A training run's configuration: the flat, commented `DEFAULTS` and their checks.

The resolved copy is saved in every checkpoint and in RUN_DIR/config.json, so a run can be
rebuilt from its output. `DEFAULTS` is also where the command line takes its defaults
from (`vggfeat train-backbone`), so this module imports nothing heavy at load time.
"""
from __future__ import annotations

from vggfeat.utils.devices import CUDA_ONLY, resolve_device
from vggfeat.utils.errors import InputError

INITS = ("normal", "xavier")
PRECISIONS = ("fp32", "bf16", "fp16")

DEFAULTS = {
    # -- data ---------------------------------------------------------------------------
    "data": None,             # DIR holding train/<class>/* and val/<class>/*
    "synthetic": False,       # fixed random crops instead of DIR: measures the model alone
    "synthetic_size": 2560,   # synthetic training images per epoch (val: a tenth)
    "num_classes": 1000,      # synthetic data only; real data has one class per folder
    "out": None,              # RUN_DIR: checkpoint.pth, log.jsonl, config.json, backbone.pth
    # -- network ------------------------------------------------------------------------
    "arch": "vgg11",          # paper configuration A..E or vgg11..vgg19 (paper Table 1)
    "width": 1.0,             # channel multiplier (0.125 for test-sized nets)
    "crop_size": 224,         # training crop; fc6 kernel is crop_size / 32
    "init": "normal",         # "normal" (std 0.01, biases 0) or "xavier" (Glorot)
    "init_from": None,        # net A run/file: copy its first 4 convs and 3 FCs (paper Sec. 3.1)
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
    "preprocessing": None,    # "paper": RGB 0..255 minus the mean, std 1 (paper Sec. 2.1);
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


class TrainingError(InputError):
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
    _normalise_types(cfg)
    _check_preprocessing(cfg)
    if cfg["pool_rounding"] is not None:
        from vggfeat.models.vgg import check_pool_rounding

        check_pool_rounding(cfg["pool_rounding"])
    if cfg["device"] == "auto":  # the trainer and the evaluations run on CUDA or the CPU only
        cfg["device"] = str(resolve_device("auto", CUDA_ONLY))
    if cfg["precision"] not in PRECISIONS:
        raise TrainingError(f"precision must be fp32, bf16 or fp16, got {cfg['precision']!r}")
    if cfg["out"] is None:
        raise TrainingError("give --out RUN_DIR for the checkpoints and logs.")
    if cfg["init_from"] and cfg["finetune_from"]:
        raise TrainingError("--init-from and --finetune-from exclude each other; give one.")
    return cfg


def _normalise_types(cfg: dict) -> None:
    """Paths as strings, numbers as lists, the architecture by its canonical name, and the
    default S (config.json and checkpoints hold plain JSON values)."""
    from vggfeat.models import canonical_arch

    cfg["arch"] = canonical_arch(cfg["arch"])
    for key in ("data", "out", "init_from", "finetune_from"):
        cfg[key] = None if cfg[key] is None else str(cfg[key])
    if cfg["scale"] is None:  # the paper's S = 256 for 224 crops, kept in proportion
        cfg["scale"] = round(cfg["crop_size"] * 256 / 224)
    if cfg["scale_jitter"] is not None:
        cfg["scale_jitter"] = [int(s) for s in cfg["scale_jitter"]]
    if cfg["mean"] not in (None, "sample", "imagenet"):
        cfg["mean"] = [float(m) for m in cfg["mean"]]
    if cfg["std"] is not None:
        cfg["std"] = [float(s) for s in cfg["std"]]


def _check_preprocessing(cfg: dict) -> None:
    """Refuse an unknown --preprocessing and given --mean/--std numbers that do not fit,
    before any work is done."""
    from vggfeat.training.augment import PREPROCESSINGS, training_preprocessing

    if cfg["preprocessing"] not in (None, *PREPROCESSINGS):
        raise TrainingError(f"preprocessing must be one of {PREPROCESSINGS}, got "
                            f"{cfg['preprocessing']!r}")
    if isinstance(cfg["mean"], list):
        try:
            training_preprocessing(cfg["preprocessing"] or "paper", cfg["mean"], cfg["std"])
        except ValueError as error:
            raise TrainingError(f"--mean/--std: {error}") from None
