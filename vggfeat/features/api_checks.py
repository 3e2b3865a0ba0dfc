"""What the Python API accepts, checked before any work, in the words of its arguments.

`FeatureExtractor` and `extract_to_cache` take images as Python objects, so the mistakes a
user can make are Python ones: an RGB array given without a list, pixels in another range,
a DataFrame, a folder, a misspelt argument, a device this machine lacks. Each is refused
here with a `vggfeat.utils.errors.InputError` that names the argument and the fix (never a
CLI option, never an error from deep inside numpy, torch or pathlib).
"""
from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from vggfeat.utils.errors import InputError

# Suffixes that make a `weights` string a file name (checked for existence at clone time).
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# Arguments of other libraries a user may reach for, and what FeatureExtractor calls them.
ARGUMENT_ALIASES = {"n_jobs": "workers", "num_workers": "workers", "model": "weights",
                    "scale": "scales", "batch": "batch_size", "layers": "layer",
                    "cache": "memory", "cache_dir": "memory"}
# Float pixels may exceed [0, 1] by rounding (e.g. a resize in float32); more is a mistake.
FLOAT_SLACK = 1e-3
UINT16_MAX = 65535


class ImageInputError(InputError, TypeError):
    """X is not a sequence of images (a TypeError for scikit-learn, an InputError for us)."""


class UnknownArgumentError(InputError, TypeError):
    """An argument FeatureExtractor does not have (a TypeError, as Python's own)."""


def refuse_unknown_arguments(unknown: dict) -> None:
    """FeatureExtractor(n_jobs=2) and friends: say which argument is meant."""
    for name in unknown:
        meant = ARGUMENT_ALIASES.get(name)
        hint = f"use {meant}=" if meant else "see help(FeatureExtractor) for its arguments"
        raise UnknownArgumentError(f"FeatureExtractor has no argument {name!r}: {hint}"
                         + (" (DataLoader processes that decode images)"
                            if meant == "workers" else ""))


def check_weights_argument(weights) -> None:
    """Refuse weights of the wrong type or naming a file that does not exist (cheap: no
    loading). A loaded vggfeat backbone is accepted as it is."""
    if is_backbone(weights):
        return
    if isinstance(weights, torch.nn.Module):
        raise InputError(f"weights is a {type(weights).__name__} that vggfeat did not load: "
                         "save its state dict (torch.save(model.state_dict(), 'net.pth')) and "
                         "give weights='net.pth' (with arch= if the file cannot say), or pass "
                         "a backbone from vggfeat.models.load_backbone")
    if not isinstance(weights, str | os.PathLike):
        raise InputError(f"weights={weights!r}: give a weights file, a torchvision name such "
                         "as 'vgg16', or a backbone loaded with vggfeat.models.load_backbone")
    text = os.fspath(weights)
    looks_like_file = (isinstance(weights, os.PathLike) or os.sep in text or "/" in text
                       or text.lower().endswith(WEIGHT_SUFFIXES))
    if looks_like_file and not Path(text).expanduser().exists():
        from vggfeat.models.weights import WeightsError

        raise WeightsError(f"weights {text!r}: no such file or folder (FeatureExtractor "
                           "checks its weights before any fit). Give the path of a .pth file, "
                           "a train-backbone run folder, or a torchvision name such as vgg16.")


def is_backbone(weights) -> bool:
    """A model loaded by vggfeat (it carries the metadata a descriptor needs)."""
    return isinstance(weights, torch.nn.Module) and isinstance(getattr(weights, "meta", None),
                                                               dict)


def checked_scales(scales) -> tuple[int, ...] | None:
    """scales as a tuple of positive ints (None: the net's defaults), or InputError."""
    if scales is None:
        return None
    if isinstance(scales, int | np.integer):
        raise InputError(f"scales={scales!r}: give a sequence of smallest image sides, e.g. "
                         f"scales=({int(scales)},)")
    try:
        values = tuple(scales)
    except TypeError:
        raise InputError(f"scales={scales!r}: give a sequence of ints, e.g. scales=(256, 384)"
                         ) from None
    if not values or not all(isinstance(q, int | np.integer) and not isinstance(q, bool)
                             and q > 0 for q in values):
        raise InputError(f"scales={scales!r}: give one or more positive ints (smallest image "
                         "sides in pixels), e.g. scales=(256, 384, 512)")
    return tuple(int(q) for q in values)


def checked_device(device) -> torch.device:
    """A torch device that exists here; "auto" picks one. InputError names `device`."""
    from vggfeat.utils.devices import resolve_device

    text = str(device)
    kind, _, index = text.partition(":")
    if kind not in ("auto", "cpu", "cuda", "mps") or (index and not index.isdigit()):
        raise InputError(f"device={device!r} is not a device vggfeat runs on; use 'auto', "
                         "'cpu', 'cuda', 'cuda:N' or 'mps'")
    if kind == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device={device!r} but torch sees no CUDA GPU here; use "
                         "device='auto' (the GPU when there is one) or device='cpu'")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise InputError(f"device={device!r} but this machine has {torch.cuda.device_count()} "
                         "CUDA GPUs; use device='cuda' or another index")
    mps = getattr(torch.backends, "mps", None)
    if kind == "mps" and not (mps is not None and mps.is_available()):
        raise InputError("device='mps' but Apple's MPS is not available here; use "
                         "device='auto' or device='cpu'")
    return resolve_device(device)


def unwrap_table_of_paths(X):
    """A pandas DataFrame / Series, or a 2-D object array, holding one column of images ->
    a list; several columns are refused naming them."""
    if hasattr(X, "columns") and hasattr(X, "iloc"):  # a DataFrame
        if X.shape[1] != 1:
            raise ImageInputError(f"X is a DataFrame with columns {list(X.columns)[:8]}: give "
                                  "the one column that holds the images, e.g. X['path']")
        return X.iloc[:, 0].tolist()
    if hasattr(X, "iloc") and hasattr(X, "tolist"):  # a Series
        return X.tolist()
    if isinstance(X, np.ndarray) and X.dtype == object and X.ndim == 2 and X.shape[1] == 1:
        return X[:, 0].tolist()
    return X


def refuse_one_rgb_array(X: np.ndarray) -> None:
    """An (H, W, 3) array given bare would be read as H grey images of W x 3 pixels."""
    if X.ndim == 3 and X.shape[-1] in (3, 4):
        h, w, c = X.shape
        raise ImageInputError(
            f"X is one array of shape {X.shape}: read as a batch it would be {h} grey images "
            f"of {w} x {c} pixels. Wrap one image in a list (X=[image]); a batch of colour "
            "images is one (n, H, W, 3) array, of grey images a list of (H, W) arrays")


def refuse_folders(sources: Sequence) -> None:
    """A folder among the images: say so before the engine calls it a bad image."""
    for k, source in enumerate(sources):
        path = getattr(source, "path", source)
        if isinstance(path, str | os.PathLike) and Path(path).expanduser().is_dir():
            raise InputError(f"X[{k}] = {os.fspath(path)!r} is a folder, not an image: give "
                             "its image files, e.g. sorted(Path(folder).glob('*/*.jpg'))")


def array_image(array, checked: bool = True) -> torch.Tensor:
    """(H, W) or (H, W, 3) pixels -> (3, H, W) float tensor in [0, 1].

    uint8 and integers in 0..255 are /255, uint16 is /65535 (with a warning), floats must
    already be in [0, 1]. Anything else is refused rather than guessed (a float image in
    0..255 would otherwise read as nearly white). `checked=False` (``rows_as_images``)
    takes numbers as they are.
    """
    array = np.asarray(array)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.number) \
            or np.iscomplexobj(array):
        raise ImageInputError(f"image arrays must hold real pixel values, got dtype "
                              f"{array.dtype}; give uint8 (0..255) or float (0..1) pixels")
    if not np.all(np.isfinite(array)):
        raise InputError("image arrays must not contain NaN or infinity")
    scale = pixel_scale(array) if checked else (
        255.0 if np.issubdtype(array.dtype, np.integer) else 1.0)
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32) / np.float32(scale))
    if checked:
        x = x.clamp_(0, 1)  # only rounding slack is left to clamp (pixel_scale refused more)
    if x.dim() == 2:
        return x[None].expand(3, -1, -1).contiguous()
    if x.dim() == 3 and x.shape[-1] in (1, 3):
        return x.permute(2, 0, 1).expand(3, -1, -1).contiguous()
    raise ImageInputError(f"an image array must be (H, W) or (H, W, 3), got shape "
                          f"{tuple(x.shape)}")


def pixel_scale(array: np.ndarray) -> float:
    """What the pixels are divided by to read [0, 1]; InputError when the range is not one
    of the documented ones (uint16 is converted by its range, with a warning)."""
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    if array.dtype == np.uint16:
        warnings.warn("a uint16 image array is read as 16-bit pixels (0..65535 -> 0..1)",
                      stacklevel=4)
        return float(UINT16_MAX)
    if np.issubdtype(array.dtype, np.integer):
        if low < 0 or high > 255:
            raise InputError(
                f"integer pixels must be 0..255, this {array.dtype} image holds {low:g}..{high:g}"
                "; give uint8 pixels (0..255), uint16 (0..65535) or floats in 0..1")
        return 255.0
    if high > 1 + FLOAT_SLACK:
        raise InputError(
            f"float pixels are read as 0..1, this image holds {low:g}..{high:g} (0..255 "
            "values?): divide by 255 (image / 255.0) or give uint8")
    if low < -FLOAT_SLACK:
        raise InputError(
            f"float pixels are read as 0..1, this image holds {low:g}..{high:g} (normalised, "
            "e.g. -1..1 or mean-subtracted?): give the image's own 0..1 pixels; vggfeat "
            "applies the net's normalisation itself")
    return 1.0


def in_python_terms(error: BaseException) -> BaseException:
    """Reword a library message written for the CLI (--out, --overwrite, --layer) in the
    Python API's arguments (path, overwrite=True, layer), in place; returns `error`."""
    if len(error.args) == 1 and isinstance(error.args[0], str):
        names = {"out": "path", "overwrite": "overwrite=True"}
        error.args = (re.sub(r"--([a-z][a-z0-9-]*)", lambda m: names.get(
            m.group(1), m.group(1).replace("-", "_")), error.args[0]),)
    return error


def is_table(X) -> bool:
    """Sparse matrices, and numeric (or numeric-object) arrays of 1 or 2 dimensions."""
    if hasattr(X, "tocsr"):
        return True
    if not isinstance(X, np.ndarray) or X.ndim > 2:
        return False
    if X.dtype.kind in "biufc":
        return True
    return X.ndim == 2 and X.dtype == object and not _holds_images(X)


def _holds_images(X: np.ndarray) -> bool:
    return any(isinstance(x, str | os.PathLike) or hasattr(x, "convert") for x in X.flat[:1])


def table_message(X) -> str:
    shape = getattr(X, "shape", None)
    return (f"X is a {len(shape) if shape else 2}-D numeric table"
            f"{f' of shape {tuple(shape)}' if shape else ''}, not images: FeatureExtractor "
            "turns images into descriptors (features already computed go straight to the "
            "classifier). Give paths, PIL images, a list of (H, W[, 3]) arrays, or an "
            "(n, H, W[, 3]) array; rows_as_images=True reads each row as a 1 x F image.")


class TableError(InputError):
    """A table of numbers where images were expected."""


def image_sources(X) -> list:
    """X (not a table) -> list of engine sources: paths, PIL images or (3, H, W) tensors."""
    if isinstance(X, np.ndarray) and X.dtype.kind in "biuf":
        if X.ndim not in (3, 4):
            raise ImageInputError(f"a numeric array of images must be (n, H, W) or "
                                  f"(n, H, W, 3) (or (n, F) rows), got shape {X.shape}")
        refuse_one_rgb_array(X)
        return [array_image(image) for image in X]
    if not isinstance(X, Sequence | np.ndarray):
        raise ImageInputError(f"X must be a sequence of images (paths, PIL images or "
                              f"arrays), got {type(X).__name__}")
    if len(X) == 0:
        raise InputError("X holds no images (0 samples); at least 1 is required")
    sources = [array_image(x) if isinstance(x, np.ndarray) else x for x in X]
    for k, source in enumerate(sources):
        if not (isinstance(source, str | os.PathLike | torch.Tensor) or hasattr(source, "convert")
                or hasattr(source, "path")):
            raise ImageInputError(f"X[{k}] is a {type(source).__name__}, not an image: give "
                                  "paths, PIL images or (H, W[, 3]) arrays")
    refuse_folders(sources)
    return sources
