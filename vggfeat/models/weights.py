"""Loading and saving backbone weights, safely.

Three sources: torchvision's checkpoint files (a plain state dict, found by path or by
name in torch hub's checkpoint folder), vggfeat's own checkpoints (weights plus `meta`),
and Caffe models converted by `vggfeat.models.caffe`. Every read uses
`torch.load(weights_only=True)` and is never retried without it: a file that needs
arbitrary unpickling is refused, and nothing in it runs.
"""
from __future__ import annotations

import math
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch

from vggfeat.models.preprocessing import TORCHVISION_IMAGENET, validate
from vggfeat.models.vgg import (
    BN_ARCHS,
    CONFIGS,
    VGG,
    build_backbone,
    canonical_arch,
    recorded_pool_rounding,
)
from vggfeat.utils.errors import InputError
from vggfeat.utils.hashing import sha256_future

CHECKPOINT_FORMAT = "vggfeat-backbone"
CHECKPOINT_VERSION = 1


class WeightsError(InputError):
    """A weights file that cannot be used; the message names the file and the fix."""


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


def hub_checkpoint_dir() -> Path:
    """torch hub's checkpoint folder ($TORCH_HOME/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


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


# torch hub's convention: the name's last "-<hex>." part is a prefix of the file's sha256.
HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.")


def check_release_hash(path: Path, digest: str) -> None:
    """Refuse a file whose torchvision-style name promises another sha256 than it has."""
    match = HASH_IN_NAME.search(path.name)
    if match and not digest.startswith(match.group(1)):
        raise WeightsError(
            f"{path} is named like torchvision's release, whose sha256 starts with "
            f"{match.group(1)}, but this file's sha256 is {digest[:len(match.group(1))]}... "
            f"({digest}): it is not that release (damaged, incomplete, or another file under "
            "its name). Download it again, or rename the file if it is your own weights.")


# -- reading ------------------------------------------------------------------------

def read_checkpoint(path: Path) -> object:
    """`torch.load(path, weights_only=True)` with errors that name the file and the fix."""
    if path.stat().st_size == 0:
        raise WeightsError(f"{path} is empty; download or save it again.")
    try:
        with warnings.catch_warnings():  # torch warns about old pickle protocols: noise here
            warnings.simplefilter("ignore")
            # Zip-format files (torch.save's default) are memory-mapped: their tensors are
            # read when first used instead of copied now (0.3 s less for VGG16's 528 MB).
            return torch.load(path, map_location="cpu", weights_only=True,
                              mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as error:
        # "unsupported GLOBAL": the pickle names a callable to import, i.e. it wants to run
        # code; a bare pickle may fail on an opcode first, so it is scanned for the same.
        if "global" in str(error).lower() or _pickle_names_callables(path):
            raise WeightsError(
                f"refused to load {path}: the file contains code (pickled Python objects "
                "that name functions to call), and vggfeat will not run code from a weights "
                "file. Use a file that holds only tensors, e.g. one saved with "
                "torch.save(model.state_dict(), PATH) by someone you trust.") from None
        raise WeightsError(f"cannot read {path}: not a PyTorch checkpoint, or damaged "
                           f"({_first_line(error)}); download or save it again.") from None
    except Exception as error:  # zip, EOF and format errors all mean the same to a user
        raise WeightsError(f"cannot read {path}: the file is truncated, damaged or not a "
                           f"PyTorch checkpoint ({type(error).__name__}: {_first_line(error)}); "
                           "download or save it again.") from None


# Modules a plain tensor pickle may name; anything else named by a pickle is code to run.
SAFE_PICKLE_MODULES = ("torch", "collections", "numpy", "_codecs")


def _pickle_names_callables(path: Path) -> bool:
    """Whether a bare (non-zip) pickle imports something other than tensor machinery.

    Reads opcodes only (pickletools never executes anything).
    """
    import pickletools
    import zipfile

    if zipfile.is_zipfile(path):
        return False
    strings: list[str] = []
    try:
        with open(path, "rb") as handle:
            for opcode, arg, _ in pickletools.genops(handle):
                if isinstance(arg, str):
                    strings.append(arg)
                if opcode.name == "GLOBAL":
                    module = str(arg).split(" ")[0]
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    module = strings[-2]
                else:
                    continue
                if module.split(".")[0] not in SAFE_PICKLE_MODULES:
                    return True
    except Exception:  # noqa: BLE001 - a damaged pickle is reported as damaged, not as code
        return False
    return False


def _first_line(error: BaseException) -> str:
    """An exception's first line, without torch's advice to turn weights_only off."""
    line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return line.split(" Re-running `torch.load`")[0].split("weights_only")[0].rstrip(" .(,")


def split_checkpoint(obj: object, path: Path) -> tuple[dict, dict]:
    """(state_dict, meta) of a loaded file: a vggfeat checkpoint or a bare state dict."""
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        state_dict, meta = obj.get("state_dict"), obj.get("meta")
        if not _is_tensor_dict(state_dict) or not isinstance(meta, dict):
            raise WeightsError(f"{path} is a vggfeat checkpoint without a usable 'state_dict' "
                               "or 'meta': it is damaged or incomplete; save it again.")
        return state_dict, dict(meta)
    if _is_tensor_dict(obj):
        return obj, {}
    if isinstance(obj, dict) and {"model", "optimizer", "epoch"} <= set(obj):
        raise WeightsError(f"{path} is a training checkpoint (weights plus optimizer state, for "
                           f"--resume); use {path.parent / 'backbone.pth'} (RUN_DIR/backbone.pth) "
                           "or the run folder itself as the weights.")
    kind = type(obj).__name__
    keys = list(obj)[:8] if isinstance(obj, dict) else []
    raise WeightsError(f"{path} is not a VGG state dict or vggfeat checkpoint (found a {kind}"
                       f"{' with keys ' + str(keys) if keys else ''}). Give a torchvision VGG "
                       ".pth file or a file written by vggfeat.save_backbone.")


def _is_tensor_dict(obj: object) -> bool:
    return (isinstance(obj, dict) and bool(obj)
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


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
                           f"(its first keys: {list(state_dict)[:6]}).") from None
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


def describe_mismatch(expected: dict, actual: dict, limit: int = 10) -> str:
    """Missing, unexpected and wrongly shaped keys, as one readable message."""
    missing = sorted(set(expected) - set(actual), key=_key_order)
    unexpected = sorted(set(actual) - set(expected), key=_key_order)
    shapes = [f"{k} {actual[k]} (expected {expected[k]})" for k in sorted(
        set(expected) & set(actual), key=_key_order) if expected[k] != actual[k]]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected),
                         ("wrong shape", shapes)):
        if items:
            shown = ", ".join(items[:limit]) + (f", ... ({len(items)} in all)"
                                               if len(items) > limit else "")
            parts.append(f"{label}: {shown}")
    return "; ".join(parts)


def _key_order(key: str):
    return [int(p) if p.isdigit() else p for p in key.split(".")]


def check_finite(state_dict: dict, path: Path) -> None:
    bad = [key for key, value in state_dict.items()
           if value.is_floating_point() and not _all_finite(value)]
    if bad:
        raise WeightsError(f"{path} has NaN or Inf values in {bad[:10]}: the training run that "
                           "wrote it diverged or the file is damaged; use another checkpoint.")


def _all_finite(tensor: torch.Tensor) -> bool:
    # A NaN or an Inf makes the sum non-finite, so a finite sum proves every value finite
    # (one vectorised read of the tensor, ~10x faster than isfinite().all()); a non-finite
    # sum can also be an overflow of large finite values, so that case is checked exactly.
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


# -- the public entry points ----------------------------------------------------------

def load_backbone(weights: str | os.PathLike, arch: str | None = None) -> VGG:
    """Load a backbone in eval mode.

    Args:
        weights: a file (torchvision .pth or vggfeat checkpoint) or a torchvision name
            ("vgg16", "vgg19-bn", ...) looked up in torch hub's checkpoint folder.
        arch: the architecture, when the file cannot say (e.g. A vs A-LRN from a
            bare state dict); checked against the file otherwise.

    Raises:
        WeightsError: the file is missing, unsafe, damaged, of another architecture, or
            holds non-finite values.
    """
    path, entry = resolve_weights(weights)
    hashing = sha256_future(path)  # beside reading the file (or started earlier); in meta
    if entry is not None:
        check_release_hash(path, hashing.result())
    state_dict, meta = split_checkpoint(read_checkpoint(path), path)
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


def _atomic_save(obj: object, path: Path) -> Path:
    """torch.save through the one atomic writer: a kill or a full disk never leaves a
    half-written weight file under `path`."""
    from vggfeat.utils import atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(path) as tmp:
        torch.save(obj, tmp)
    return path
