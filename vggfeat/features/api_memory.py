"""FeatureExtractor's `memory=`: descriptors kept on disk between calls.

One store per `transform` call that computed anything (not one file per image):
``<folder>/<configuration key>/<process>-<random>.npz`` holding ``keys`` (image keys) and
``descriptors`` (n, S, D) float32. A call reads every store of its configuration, computes
what none holds and writes its new rows as one more store, atomically, so parallel folds
never see half a file and never write the same name.
"""
from __future__ import annotations

import hashlib
import os
import uuid
import warnings
from pathlib import Path

import numpy as np
import torch

from vggfeat.features.descriptor import DescriptorConfig, config_key
from vggfeat.utils import atomic

_warned_about_memory = False


def user_cache_folder() -> Path:
    """The per-user cache folder the README suggests: $XDG_CACHE_HOME/vggfeat (~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vggfeat"


def warn_once_without_memory() -> None:
    """Cross-validation and searches describe every image again for each fit and score:
    say how to avoid it, once per process."""
    global _warned_about_memory
    if _warned_about_memory:
        return
    _warned_about_memory = True
    warnings.warn(
        "FeatureExtractor without memory= runs the net on every image again for each fit "
        "and score of a cross-validation or search; pass memory=\"" + str(user_cache_folder())
        + "\" (or any folder) to describe each image once and reuse it", stacklevel=2)


class Memory:
    """The stores of one configuration; `get` answers from all of them."""

    def __init__(self, folder, config: DescriptorConfig):
        self.folder = Path(folder).expanduser() / config_key(config.as_dict())
        self.folder.mkdir(parents=True, exist_ok=True)
        self._index: dict[str, np.ndarray] | None = None

    def lookup(self, keys: list[str]) -> dict[int, np.ndarray]:
        """{position in keys: stored (S, D) descriptor} for the keys some store holds."""
        wanted = {key: k for k, key in enumerate(keys)}
        found: dict[int, np.ndarray] = {}
        for store in sorted(self.folder.glob("*.npz")):
            try:
                with np.load(store) as data:
                    stored_keys = [str(s) for s in data["keys"]]
                    rows = [(wanted[s], r) for r, s in enumerate(stored_keys) if s in wanted]
                    if rows:
                        block = data["descriptors"]
                        found.update({k: block[r] for k, r in rows})
            except (OSError, ValueError, KeyError):  # damaged or foreign: computed again
                continue
        return found

    def store(self, keys: list[str], descriptors: np.ndarray) -> None:
        """One new store holding these rows (nothing if none)."""
        if not keys:
            return
        name = self.folder / f"{os.getpid()}-{uuid.uuid4().hex[:12]}.npz"
        with atomic.replacing(name) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, keys=np.array(keys), descriptors=np.asarray(descriptors,
                                                                          np.float32))


def image_key(source) -> str:
    """A file: resolved path, size, mtime. In-memory pixels: their content."""
    digest = hashlib.sha256()
    path = getattr(source, "path", source)
    if isinstance(path, str | os.PathLike):
        resolved = Path(path).expanduser().resolve()
        stat = resolved.stat() if resolved.exists() else None
        digest.update(f"file:{resolved}:{stat and stat.st_size}:{stat and stat.st_mtime_ns}"
                      .encode())
        box = getattr(source, "box", None)
        if box is not None:
            digest.update(f":box{tuple(box)}".encode())
    elif isinstance(source, torch.Tensor):
        array = source.detach().cpu().contiguous().numpy()
        digest.update(f"tensor:{array.shape}:{array.dtype}:".encode() + array.tobytes())
    elif hasattr(source, "tobytes") and hasattr(source, "mode"):  # a PIL image
        digest.update(f"pil:{source.mode}:{source.size}:".encode() + source.tobytes())
    else:
        digest.update(repr(source).encode())
    return digest.hexdigest()[:32]


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of a loaded model's tensors: the memory key of weights given as an object."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()

