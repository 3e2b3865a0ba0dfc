"""The file format's names, the cache's file names next to ``OUT``, and its errors.

Only the modules of `vggfeat.features.cache` know these names; everything else reads a
cache through the package's reader functions.
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from vggfeat.features.descriptor import DescriptorConfig, config_key
from vggfeat.utils.errors import InputError
from vggfeat.version import __version__

ROOT_GROUP = "/"
BOXES_GROUP = "boxes"
DTYPES = ("float32", "float16")
STRING = h5py.string_dtype("utf-8")
FAILED_DTYPE = np.dtype([("id", STRING), ("reason", STRING)])
# Root attribute that identifies a file as a vggfeat cache: only such files (and the
# cache's own .partial and shards) are ever replaced or deleted without --overwrite.
FORMAT = "vggfeat-feature-cache/1"
# Labels stored by the Python API (`write_labels`).
LABELS, SPLITS, CLASSES_ATTR = "labels", "splits", "classes"
PARTIAL_SUFFIX = ".partial"
# The undo journal of an in-place change to an unfinished file (`inplace`): OUT.partial.journal
JOURNAL_SUFFIX = ".journal"
# Several layers in one file: the first layer's rows stay in ``descriptors`` (so a
# one-layer cache is written, and every cache read, as before); each further layer's rows
# are the dataset ``layers/<name>`` of the same row group, and the root attribute
# ``layers`` (JSON) lists all of them in order.
LAYERS_GROUP, LAYERS_ATTR = "layers", "layers"


class CacheError(InputError):
    """A cache file that cannot be used as asked; the message names the file and the fix."""


class ConfigMismatchError(CacheError):
    """An existing cache file was made with another configuration."""


class NotACacheError(CacheError):
    """``--out`` names a file that vggfeat did not write (or an input): never replaced."""

    exit_code = 2


class CacheInUseError(CacheError):
    """Another process has the file open (HDF5's lock): never deleted."""

    exit_code = 2


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + PARTIAL_SUFFIX)


def final_path(path: Path) -> Path:
    """``OUT`` for ``OUT.partial``; `path` itself otherwise."""
    path = Path(path)
    if path.name.endswith(PARTIAL_SUFFIX):
        return path.with_name(path.name[: -len(PARTIAL_SUFFIX)])
    return path


def is_partial(path: Path) -> bool:
    """Whether `path` names an unfinished extraction's file."""
    return Path(path).name.endswith(PARTIAL_SUFFIX)


def shard_path(out: Path, rank: int, group: str) -> Path:
    name = "images" if group == ROOT_GROUP else group
    return out.with_name(f"{out.name}{PARTIAL_SUFFIX}.rank{rank}.{name}")


def lock_path(out: Path) -> Path:
    """The lock file held while a run writes `out` (see `vggfeat.utils.locking`)."""
    return out.with_name(out.name + ".lock")


def shard_paths(out: Path) -> list[Path]:
    """The shards of `out` (not their undo journals, see `inplace`)."""
    return sorted(p for p in out.parent.glob(out.name + PARTIAL_SUFFIX + ".rank*")
                  if not p.name.endswith(JOURNAL_SUFFIX))


def cache_attributes(config: DescriptorConfig, *, dataset: str, root: str | None = None,
                     reader_options: dict | None = None, dtype: str = "float32") -> dict:
    """The file attributes, config_key included (root is not part of the key: moving a
    dataset does not change its numbers; the ids are checked separately)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    record = {**config.as_dict(), "dataset": dataset, "reader_options": reader_options or {},
              "dtype": dtype}
    extra = {"pool": config.pool} if config.pool != "avg" else {}
    if config.extra_layers:
        extra[LAYERS_ATTR] = json.dumps(list(config.layers))
    return {**extra,
        "vggfeat_format": FORMAT, "vggfeat_version": __version__, "dataset": dataset,
        "root": str(root or ""),
        "arch": config.arch, "layer": config.layer, "weights_sha256": config.weights_sha256,
        "scales": np.asarray(config.scales, dtype=np.int64), "flip": bool(config.flip),
        "precision": config.precision, "dtype": dtype,
        "preprocessing": json.dumps(config.preprocessing, sort_keys=True),
        "reader_options": json.dumps(reader_options or {}, sort_keys=True),
        "config": json.dumps(record, sort_keys=True), "config_key": config_key(record),
    }


def stored_layers(attrs) -> list[str]:
    """The layers a cache holds, in order (the first in ``descriptors``)."""
    if LAYERS_ATTR in attrs:
        return json.loads(text(attrs[LAYERS_ATTR]))
    return [text(attrs["layer"])] if "layer" in attrs else []


def layer_rows(f: h5py.File, group: str, layer: str | None) -> h5py.Dataset:
    """The (N, S, D) rows of `layer` (None: the first) in row group `group` of `f`."""
    names = stored_layers(f.attrs)
    if layer is None or (names and layer == names[0]):
        return f[group]["descriptors"]
    if layer not in names:
        raise CacheError(f"{f.filename} holds no layer {layer!r}; it holds "
                         f"{', '.join(names) or 'one unnamed layer'}: choose one of those "
                         "(--layer), or extract that layer")
    return f[group][LAYERS_GROUP][layer]


def is_vggfeat_cache(stored_attrs) -> bool:
    """Whether HDF5 root attributes are those of a vggfeat cache (the format marker, or for
    files written before it existed, both the version and the configuration key)."""
    if text(stored_attrs.get("vggfeat_format", "")) == FORMAT:
        return True
    return "vggfeat_version" in stored_attrs and "config_key" in stored_attrs


def describe_difference(stored: dict, attrs: dict) -> str:
    """'' if the configs agree, else the differing fields with both values."""
    if text(stored.get("config_key", "")) == attrs["config_key"]:
        return ""
    try:
        old = json.loads(text(stored["config"]))
    except (KeyError, TypeError, ValueError):
        return "config_key differs and the file records no readable config"
    new = json.loads(attrs["config"])
    fields = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "; ".join(f"{k}: file has {old.get(k)!r}, this run {new.get(k)!r}" for k in fields)


def is_lock_error(error: OSError) -> bool:
    return isinstance(error, BlockingIOError) or "unable to lock file" in str(error)


def open_file(path: Path, mode: str) -> h5py.File:
    """h5py.File, with HDF5's "unable to lock file" turned into `CacheInUseError`."""
    try:
        return h5py.File(path, mode)
    except OSError as error:
        if is_lock_error(error):
            raise CacheInUseError(
                f"{path} is open in another process (HDF5 could not lock it); close that "
                "program or wait for it, then rerun the same command.") from None
        raise


def group_names(f: h5py.File) -> list[str]:
    """The row groups present: the root, and the person boxes of voc2012-action."""
    return [ROOT_GROUP] + [name for name in (BOXES_GROUP,) if name in f]


def text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
