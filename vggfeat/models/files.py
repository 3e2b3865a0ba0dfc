"""Weight files, read safely: the parts every backbone family's loader shares.

Every read uses `torch.load(weights_only=True)` and is never retried without it: a file
that needs arbitrary unpickling is refused, and nothing in it runs. torch hub's folder and
its release-name hash convention, vggfeat's checkpoint format, and the atomic writer are
here too, so that `vggfeat.models.weights` (VGG) and `vggfeat.models.torchvision_weights`
(other torchvision families) read and write files the same way.
"""
from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from concurrent.futures import Future
from pathlib import Path

import torch

from vggfeat.utils import hashing
from vggfeat.utils.errors import InputError

CHECKPOINT_FORMAT = "vggfeat-backbone"
CHECKPOINT_VERSION = 1

class WeightsError(InputError):
    """A weights file that cannot be used; the message names the file and the fix."""



def hub_checkpoint_dir() -> Path:
    """torch hub's checkpoint folder ($TORCH_HOME/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints"



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



def _atomic_save(obj: object, path: Path) -> Path:
    """torch.save through the one atomic writer: a kill or a full disk never leaves a
    half-written weight file under `path`; its sha256 is recorded in `<path>.sha256`
    (`read_weights` checks it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with hashing.writing_with_sum(path) as handle:
        torch.save(obj, handle)
    return path


# What to do about a file vggfeat wrote that no longer has the bytes it wrote.
DAMAGED_WEIGHTS_FIX = ("Copy it again from a good copy, or write it again (train-backbone, "
                       "convert-caffe, export-torchvision or vggfeat.save_backbone).")


def read_weights(path: Path, digest: Future) -> tuple[dict, dict]:
    """(state_dict, meta) of a weights file, checked against the sha256 vggfeat recorded
    beside it when it wrote it (files without one, e.g. torchvision's, load unchecked).

    `digest` is the file's sha256 being computed beside the read (the loaders need it for
    the cache's record anyway), so the check adds no read of the file. A damaged file is
    reported as damaged, not with the unpickling error its bytes may cause.
    """
    try:
        recorded = hashing.recorded_sha256(path)
    except hashing.RecordedSumError as error:
        raise WeightsError(str(error)) from None
    try:
        loaded = read_checkpoint(path)
    except WeightsError:
        if recorded is not None:
            _check_recorded(path, recorded, digest.result())
        raise
    if recorded is not None:  # before any tensor is used (they are memory-mapped)
        _check_recorded(path, recorded, digest.result())
    return split_checkpoint(loaded, path)


def _check_recorded(path: Path, recorded: str, actual: str) -> None:
    try:
        hashing.check_recorded(path, recorded, actual, DAMAGED_WEIGHTS_FIX)
    except hashing.RecordedSumError as error:
        raise WeightsError(str(error)) from None
