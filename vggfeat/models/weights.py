"""Loading and saving backbone weights, safely.

Three sources: torchvision's checkpoint files (a plain state dict, found by path or by
name in torch hub's checkpoint folder), vggfeat's own checkpoints (weights plus `meta`),
and Caffe models converted by `vggfeat.models.caffe`. Every read uses
`torch.load(weights_only=True)` and is never retried without it: a file that needs
arbitrary unpickling is refused, and nothing in it runs.
"""
from __future__ import annotations

import hashlib
import math
import os
import pickle
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

CHECKPOINT_FORMAT = "vggfeat-backbone"
CHECKPOINT_VERSION = 1


class WeightsError(ValueError):
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


def resolve_weights(weights: str | os.PathLike) -> tuple[Path, object]:
    """Turn a path or a torchvision weight name into (file path, torchvision entry or None)."""
    path = Path(weights).expanduser()
    if path.exists():
        return path, None
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


# -- reading ------------------------------------------------------------------------

def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_checkpoint(path: Path) -> object:
    """`torch.load(path, weights_only=True)` with errors that name the file and the fix."""
    if path.stat().st_size == 0:
        raise WeightsError(f"{path} is empty; download or save it again.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # "Unsupported global": the pickle names a callable to import, i.e. it wants to
        # run code. Any other unpickling failure is a damaged or foreign file.
        if "Unsupported global" in str(error):
            raise WeightsError(
                f"refused to load {path}: it holds Python objects other than tensors and plain "
                "containers, and unpickling them could run code. vggfeat loads only "
                "weights_only files. If you trust its origin, re-save just its state_dict: "
                "torch.save(model.state_dict(), 'clean.pth').") from None
        raise WeightsError(f"cannot read {path}: {error}. The file is damaged or not a "
                           "PyTorch checkpoint; download or save it again.") from None
    except Exception as error:  # zip, EOF and format errors all mean the same to a user
        raise WeightsError(f"cannot read {path}: {type(error).__name__}: {error}. The file is "
                           "truncated or not a PyTorch checkpoint; download or save it "
                           "again.") from None


def split_checkpoint(obj: object, path: Path) -> tuple[dict, dict]:
    """(state_dict, meta) of a loaded file: a vggfeat checkpoint or a bare state dict."""
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        return obj["state_dict"], dict(obj["meta"])
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, {}
    kind = type(obj).__name__
    keys = list(obj)[:8] if isinstance(obj, dict) else []
    raise WeightsError(f"{path} is not a VGG state dict or vggfeat checkpoint (found a {kind}"
                       f"{' with keys ' + str(keys) if keys else ''}). Give a torchvision VGG "
                       ".pth file or a file written by vggfeat.save_backbone.")


def expected_shapes(arch: str, width: float, crop_size: int, num_classes: int) -> dict:
    """Parameter and buffer shapes of a configuration, without allocating its weights."""
    with torch.device("meta"):
        model = build_backbone(arch, width=width, crop_size=crop_size, num_classes=num_classes)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def infer_config(state_dict: dict, path: Path, arch: str | None = None) -> dict:
    """Work out arch, width, crop size and classes from the tensors' names and shapes."""
    try:
        width = state_dict["features.0.weight"].shape[0] / 64
        fc6_in = state_dict["classifier.0.weight"].shape[1]
        num_classes = state_dict["classifier.6.weight"].shape[0]
    except KeyError as error:
        raise WeightsError(f"{path} has no {error.args[0]!r}: not a VGG state dict "
                           f"(its first keys: {list(state_dict)[:6]}).") from None
    last_conv = max((k for k in state_dict if k.startswith("features.") and k.endswith(".weight")
                     and state_dict[k].ndim == 4), key=lambda k: int(k.split(".")[1]))
    kernel = math.isqrt(fc6_in // state_dict[last_conv].shape[0])
    config = {"width": width, "crop_size": kernel * 32, "num_classes": num_classes}
    actual = {key: tuple(value.shape) for key, value in state_dict.items()}
    candidates = [canonical_arch(arch)] if arch else list(CONFIGS) + list(BN_ARCHS)
    for name in candidates:
        if expected_shapes(name, **config) == actual:
            return {"arch": name, **config}
    if arch:
        raise WeightsError(f"{path} does not fit {canonical_arch(arch)}: "
                           + describe_mismatch(expected_shapes(canonical_arch(arch), **config),
                                               actual))
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
           if value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        raise WeightsError(f"{path} has NaN or Inf values in {bad[:10]}: the training run that "
                           "wrote it diverged or the file is damaged; use another checkpoint.")


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
    state_dict, meta = split_checkpoint(read_checkpoint(path), path)
    if meta and arch and canonical_arch(arch) != meta["arch"]:
        raise WeightsError(f"{path} holds {meta['arch']} weights, not {canonical_arch(arch)}; "
                           "drop --arch or give the matching file.")
    config = infer_config(state_dict, path, arch or meta.get("arch"))
    check_finite(state_dict, path)
    model = build_backbone(config["arch"], width=config["width"], crop_size=config["crop_size"],
                           num_classes=config["num_classes"])
    model.load_state_dict(state_dict)
    model.meta.update(meta)
    model.set_pool_rounding(recorded_pool_rounding(meta))  # the file's record; Caffe: ceil
    if not meta:
        model.meta["preprocessing"] = _torchvision_preprocessing(entry)
        if entry is not None:
            model.meta["classes"] = list(entry.meta["categories"])
    validate(model.meta["preprocessing"])
    model.meta.update(source=str(path), sha256=sha256_of(path))
    return model.eval()


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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path
