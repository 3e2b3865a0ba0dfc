"""Loading and saving backbone weights, safely.

Three sources: torchvision's checkpoint files (a plain state dict, found by path or by
name in torch hub's checkpoint folder), vggfeat's own checkpoints (weights plus `meta`),
and Caffe models converted by `vggfeat.models.caffe`. Files are read by
`vggfeat.models.files` (`torch.load(weights_only=True)`, never retried without it: nothing
in a file runs). `load_backbone` hands other torchvision families (ResNet, ConvNeXt, ...)
to `vggfeat.models.torchvision_load`; the VGG path below is the paper's.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

import torch

from vggfeat.models import torchvision_load
from vggfeat.models.files import (  # noqa: F401 - names this module has always offered
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    WeightsError,
    _atomic_save,
    check_finite,
    check_release_hash,
    describe_mismatch,
    hub_checkpoint_dir,
    read_checkpoint,
    read_weights,
    split_checkpoint,
)
from vggfeat.models.preprocessing import TORCHVISION_IMAGENET, validate
from vggfeat.models.vgg import (
    BN_ARCHS,
    CONFIGS,
    VGG,
    build_backbone,
    canonical_arch,
    recorded_pool_rounding,
)
from vggfeat.utils.hashing import sha256_future

# -- where weights are -----------------------------------------------------------------

def torchvision_weights(arch: str):
    """torchvision's ImageNet weights entry for an architecture, or None if it has none."""
    from torchvision.models import get_model_weights

    try:
        name = canonical_arch(arch)
    except ValueError:
        return None
    if name not in BN_ARCHS and name not in ("vgg11", "vgg13", "vgg16", "vgg19"):
        return None
    return get_model_weights(name.replace("-", "_")).IMAGENET1K_V1


def torchvision_release_files() -> dict:
    """torchvision's VGG release file names (e.g. "vgg16-397923af.pth") -> (arch, entry)."""
    files = {}
    for arch in ("vgg11", "vgg13", "vgg16", "vgg19", *BN_ARCHS):
        entry = torchvision_weights(arch)
        if entry is not None:
            files[entry.url.rsplit("/", 1)[-1]] = (arch, entry)
    return files


# torchvision's VGG release files are named "<arch>-<hash prefix>.pth" (vgg16-397923af.pth,
# vgg16_bn-6c64b313.pth). Only such a name needs torchvision's table of releases, whose
# import (torchvision.models pulls in torch._dynamo) costs ~2 s of every command's start.
RELEASE_NAME = re.compile(r"^vgg\d+(_bn)?-[0-9a-f]{8,}\.pth$")


def resolve_weights(weights: str | os.PathLike) -> tuple[Path, object]:
    """Turn a path or a torchvision weight name into (file path, torchvision entry or None).

    A file called like a torchvision release (found by name in torch hub's folder, or given
    by path under that name) returns the release's entry: `load_backbone` then checks the
    hash in the name and the architecture, as torch hub's `check_hash` does. A renamed
    file is taken for what it holds.
    """
    path = Path(weights).expanduser()
    if path.is_dir():  # a train-backbone run folder: its final weights
        if not (path / "backbone.pth").is_file():
            raise WeightsError(f"{path} is a folder without backbone.pth; give a weights file, "
                               "or a train-backbone run folder whose run has finished.")
        path = path / "backbone.pth"
    if path.exists():
        if not RELEASE_NAME.match(path.name):
            return path, None  # not named like a release: no need to import torchvision
        release = torchvision_release_files().get(path.name)
        return path, (release[1] if release else None)
    entry = torchvision_weights(str(weights))
    if entry is None:
        raise WeightsError(
            f"weights {str(weights)!r}: no such file, and not a torchvision VGG name "
            "(vgg11, vgg13, vgg16, vgg19 and their -bn variants). Give the path of a .pth file.")
    filename = entry.url.rsplit("/", 1)[-1]
    hub_path = hub_checkpoint_dir() / filename
    if not hub_path.exists():
        raise WeightsError(
            f"weights {str(weights)!r}: {hub_path} not found and vggfeat never downloads. "
            f"Download {entry.url} on a machine with network access and put it at {hub_path} "
            "(or set TORCH_HOME), or pass the file's path with --weights.")
    return hub_path, entry


def expected_shapes(arch: str, width: float, crop_size: int, num_classes: int) -> dict:
    """Parameter and buffer shapes of a configuration, without allocating its weights."""
    with torch.device("meta"):  # init=None: initialising meta tensors imports torch._dynamo
        model = build_backbone(arch, width=width, crop_size=crop_size, num_classes=num_classes,
                               init=None)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def infer_config(state_dict: dict, path: Path, arch: str | None = None,
                 width: float | None = None) -> dict:
    """Work out arch, width, crop size and classes from the tensors' names and shapes.

    `width` comes from a vggfeat checkpoint's meta when it has one: a width such as 0.1
    scales 64 channels to round(6.4) = 6 but 4096 to 410, so no single tensor gives it
    back. A bare state dict is tried with the widths its first conv and its fc7 imply.
    """
    try:
        widths = [state_dict["features.0.weight"].shape[0] / 64,
                  state_dict["classifier.3.weight"].shape[0] / 4096]
        fc6_in = state_dict["classifier.0.weight"].shape[1]
        num_classes = state_dict["classifier.6.weight"].shape[0]
    except KeyError as error:
        raise WeightsError(f"{path} has no {error.args[0]!r}: not a VGG state dict "
                           f"(its first keys: {list(state_dict)[:6]}); for another "
                           "torchvision family pass --arch, e.g. resnet50.") from None
    convs = [k for k in state_dict if k.startswith("features.") and k.endswith(".weight")
             and state_dict[k].ndim == 4]
    if not convs:
        raise WeightsError(f"{path} has no convolution weights: not a VGG state dict.")
    last_conv = max(convs, key=lambda k: int(k.split(".")[1]))
    kernel = math.isqrt(fc6_in // max(1, state_dict[last_conv].shape[0]))
    if kernel < 1:
        raise WeightsError(f"{path}: fc6 ({fc6_in} inputs) does not fit the last conv's "
                           f"{state_dict[last_conv].shape[0]} channels; the file is damaged.")
    actual = {key: tuple(value.shape) for key, value in state_dict.items()}
    candidates = [canonical_arch(arch)] if arch else list(CONFIGS) + list(BN_ARCHS)
    tried = [width] if width is not None else list(dict.fromkeys(widths))
    first = None
    for guess in tried:
        config = {"width": guess, "crop_size": kernel * 32, "num_classes": num_classes}
        first = first or config
        for name in candidates:
            if expected_shapes(name, **config) == actual:
                return {"arch": name, **config}
    if arch:
        raise WeightsError(f"{path} does not fit {canonical_arch(arch)} (width {first['width']})"
                           ": " + describe_mismatch(expected_shapes(canonical_arch(arch),
                                                                    **first), actual))
    raise WeightsError(f"{path}: no VGG configuration has exactly these tensors; pass --arch "
                       "to see which keys differ.")


# -- the public entry points ----------------------------------------------------------

def load_backbone(weights: str | os.PathLike, arch: str | None = None, *,
                  download: bool = False, log=print):
    """Load a backbone in eval mode: a VGG, or another torchvision CNN family
    (`vggfeat.models.torchvision_load`: ResNet, ConvNeXt, EfficientNet, ...).

    Args:
        weights: a file (torchvision .pth or vggfeat checkpoint) or a torchvision name
            ("vgg16", "vgg19-bn", "resnet50", "resnet50-11ad3fa6.pth", ...) looked up in
            torch hub's checkpoint folder.
        arch: the architecture, when the file cannot say (e.g. A vs A-LRN, or resnet50,
            from a bare state dict); checked against the file otherwise.
        download: fetch a named torchvision release into torch hub's folder first if it
            is not there (hash-checked); off by default, vggfeat works offline.
        log: where `download` says what it did.

    Raises:
        WeightsError: the file is missing, unsafe, damaged, of another architecture, or
            holds non-finite values.
    """
    if download:
        torchvision_load.download_release(weights, log)
    if torchvision_load.wants_torchvision(weights, arch):
        return torchvision_load.load_torchvision(weights, arch)
    path, entry = resolve_weights(weights)
    hashing = sha256_future(path)  # beside reading the file (or started earlier); in meta
    if entry is not None:
        check_release_hash(path, hashing.result())
    state_dict, meta = read_weights(path, hashing)
    if torchvision_load.wants_torchvision(path, meta.get("arch")):  # saved by vggfeat
        return torchvision_load.model_from(path, state_dict, meta, hashing.result(), arch,
                                              None)
    if meta.get("arch") is not None and arch and canonical_arch(arch) != meta["arch"]:
        raise WeightsError(f"{path} holds {meta['arch']} weights, not {canonical_arch(arch)}; "
                           "drop --arch or give the matching file.")
    release_arch = _release_arch(path, entry)
    if release_arch and arch and canonical_arch(arch) != release_arch:
        raise WeightsError(f"{path} is torchvision's {release_arch} release, not "
                           f"{canonical_arch(arch)}; drop --arch or give the matching file.")
    config = infer_config(state_dict, path, arch or meta.get("arch") or release_arch,
                          _meta_width(meta, path))
    check_finite(state_dict, path)
    model = _model_with(state_dict, config)
    model.meta.update(meta)
    model.set_pool_rounding(recorded_pool_rounding(meta))  # the file's record; Caffe: ceil
    if not meta:
        model.meta["preprocessing"] = _torchvision_preprocessing(entry)
        if entry is not None:
            model.meta["classes"] = list(entry.meta["categories"])
    try:
        validate(model.meta.get("preprocessing") or {})
    except ValueError as error:
        raise WeightsError(f"{path}: its preprocessing record is unusable ({error}); the file "
                           "is damaged or was written by hand: save the backbone again with "
                           "valid --mean/--std.") from None
    model.meta.update(source=str(path), sha256=hashing.result())
    return model.eval()


def _model_with(state_dict: dict, config: dict) -> VGG:
    """The backbone of `config` holding the tensors of `state_dict` (not copies).

    Built on the meta device without initialisation, so no random weights are computed only
    to be overwritten (1.2 s for VGG16; initialising meta tensors would import torch._dynamo,
    another 1.5 s); ``assign=True`` then adopts the loaded tensors as the parameters.
    """
    with torch.device("meta"):
        model = build_backbone(config["arch"], width=config["width"], init=None,
                               crop_size=config["crop_size"], num_classes=config["num_classes"])
    model.load_state_dict(state_dict, assign=True)
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # load_state_dict is strict, so this is a bug, not a user's file
        raise RuntimeError(f"backbone tensors not loaded: {left}")
    return model


def _release_arch(path: Path, entry) -> str | None:
    """The architecture of the torchvision release `entry` names, if any."""
    if entry is None:
        return None
    release = torchvision_release_files().get(entry.url.rsplit("/", 1)[-1])
    return release[0] if release else None


def _meta_width(meta: dict, path: Path) -> float | None:
    """The width a vggfeat checkpoint records (None for a bare state dict)."""
    width = meta.get("width")
    if width is None:
        return None
    if not isinstance(width, (int, float)) or not math.isfinite(width) or width <= 0:
        raise WeightsError(f"{path}: its meta records width {width!r}, which no net has; the "
                           "file is damaged or was written by hand.")
    return float(width)


def _torchvision_preprocessing(entry) -> dict:
    if entry is None:  # a bare state dict: torchvision's convention is the only one it can be
        return dict(TORCHVISION_IMAGENET)
    transform = entry.transforms()
    return {"mean": list(transform.mean), "std": list(transform.std), "channel_order": "RGB",
            "value_scale": 1.0}


def save_backbone(model: VGG, path: str | os.PathLike) -> Path:
    """Write a vggfeat checkpoint: weights plus `meta` (arch, preprocessing, classes, ...).

    Written to a temporary file and renamed, so a crash never leaves a half-written file.
    """
    path = Path(path)
    meta = {k: v for k, v in model.meta.items() if k not in ("source", "sha256")}
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "meta": meta,
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    _atomic_save(payload, path)
    return path


def export_torchvision(model: VGG, path: str | os.PathLike) -> Path:
    """Write a bare state dict that torchvision's vgg builders load unchanged.

    Only A, B, D, E (and BN variants) exist in torchvision; width and crop must be the paper's.
    """
    arch = model.meta.get("arch", "")
    if torchvision_weights(arch) is None or model.meta.get("width", 1.0) != 1.0 \
            or model.kernel != 7:
        raise ValueError(f"torchvision has no model for {arch} (width {model.meta.get('width')}, "
                         f"crop {model.kernel * 32}); keep the vggfeat checkpoint instead.")
    return _atomic_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, Path(path))

