"""The Python feature API: a scikit-learn transformer, and the cache writer re-exported."""
from __future__ import annotations

import hashlib
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from vggfeat.data.images import BadImageError
from vggfeat.features.cache import aggregate_scales, l2_normalize
from vggfeat.features.descriptor import DescriptorConfig, config_key
from vggfeat.features.engine import DEFAULT_BATCH_SIZE, Engine
from vggfeat.features.pipeline import extract_to_cache
from vggfeat.models.weights import WeightsError
from vggfeat.utils import atomic
from vggfeat.utils.errors import InputError
from vggfeat.utils.progress import progress_bar

__all__ = ["FeatureExtractor", "extract_to_cache"]

# verbose="auto" shows a progress bar for more images than this (fewer take seconds).
AUTO_PROGRESS_IMAGES = 16
# Suffixes that make a `weights` string a file name (checked for existence at clone time).
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# Serialises `_Memory.put` within a process (see there).
_PUT_LOCK = threading.Lock()


class FeatureExtractor(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """The paper's VGG transfer descriptor as a scikit-learn transformer.

    Each image is rescaled to every scale Q, run densely through the fixed net, its
    `layer` map pooled over positions (averaged; `pool`) and averaged with its horizontal
    flip; the scales
    are averaged or stacked, and each row is L2-normalised (paper Appendix B).

    Parameters
    ----------
    weights : str or path-like, default="vgg16"
        A weights file or a torchvision name (see `vggfeat.models.load_backbone`), e.g.
        "vgg16", "resnet50" or "resnet50-11ad3fa6.pth".
    arch : str, optional
        Architecture, when the weights file cannot say (e.g. "resnet50" for a bare
        state dict of another torchvision family).
    scales : tuple of int, default=(256, 384, 512)
        Smallest image side Q of each scale.
    aggregate : {"avg", "stack"}, default="avg"
        Average the scales (VOC) or concatenate them (Caltech).
    layer : str, optional
        One name of the net's layers (VGG: "conv1_1" ... "conv5_3", "pool5", "fc6", "fc7",
        "fc8"; other families: a torchvision module name, ``model_.layers``); None: the net's
        default (VGG: fc7, the paper's; ResNet: layer4, ...). A name the net does not have
        raises `vggfeat.utils.errors.InputError` listing the valid ones.
    pool : {"avg", "max"}, default="avg"
        How a layer's map is pooled over positions (the paper averages).
    flip : bool, default=True
        Average with the horizontally flipped image.
    device : str, default="auto"
        "auto" (cuda, mps, cpu), or a torch device name.
    batch_size : int, default=32
    workers : int, default=0
        DataLoader processes for decoding and rescaling.
    verbose : {"auto", True, False}, default="auto"
        A progress bar on stderr while transforming. "auto": when transforming more than
        16 images, unless a scikit-learn meta-estimator (Pipeline, cross-validation, a
        search) is the caller, so pipelines stay quiet.
    memory : str or path-like, optional
        A folder where descriptors are kept between calls, keyed by the configuration
        (weights' sha256, scales, layer, flip, preprocessing) and the image (a file's
        resolved path, size and modification time; the pixels of an in-memory image).
        Repeated fits, e.g. the folds of ``cross_val_score``, then reuse them instead of
        running the net again. Like the `memory` of scikit-learn's Pipeline; never cleared
        by vggfeat (delete the folder to reclaim the space).
    rows_as_images : bool, default=False
        Read a 2-D numeric array (n, F) as n grayscale images of 1 x F pixels, as
        scikit-learn's generic estimator checks need. Off, such an array is refused: it
        is almost always a table of features given by mistake.

    Attributes
    ----------
    model_ : torch.nn.Module
        The loaded backbone (on `device`).
    n_features_in_ : int
        Only when fitted on a 2-D numeric array with ``rows_as_images=True``.

    Notes
    -----
    `X` is a sequence of images: paths, PIL images, or arrays of shape (H, W) or
    (H, W, 3). A numeric ndarray is a batch: (n, H, W, 3) or (n, H, W) images. A 2-D
    array (n, F), or a list of n lists of F numbers, is refused unless ``rows_as_images``.
    Float pixels are taken as [0, 1], integers as 0..255. `fit` only loads the weights
    (nothing is learnt from the images); rows are float32.

    Weights are checked early: `fit` loads them before looking at `X` and raises
    `vggfeat.models.WeightsError` naming the file; cloning (which scikit-learn's
    cross-validation and searches do before any fold) already raises it for a weights
    file that does not exist, so the error is not buried under "All the fits failed".

    Examples
    --------
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.svm import LinearSVC
    >>> clf = make_pipeline(FeatureExtractor(weights="vgg16"), LinearSVC())  # doctest: +SKIP
    >>> clf.fit(train_paths, train_labels).score(test_paths, test_labels)  # doctest: +SKIP
    """

    def __init__(self, weights="vgg16", arch=None, scales=(256, 384, 512), aggregate="avg",
                 layer=None, flip=True, device="auto", batch_size=DEFAULT_BATCH_SIZE,
                 workers=0, verbose="auto", memory=None, rows_as_images=False, pool="avg"):
        self.weights = weights
        self.arch = arch
        self.scales = scales
        self.aggregate = aggregate
        self.layer = layer
        self.flip = flip
        self.device = device
        self.batch_size = batch_size
        self.workers = workers
        self.verbose = verbose
        self.memory = memory
        self.rows_as_images = rows_as_images
        self.pool = pool

    def fit(self, X, y=None):
        """Load the weights (and check `X`); nothing is learnt.

        Parameters
        ----------
        X : sequence of images or ndarray (see Notes)
        y : ignored

        Returns
        -------
        self : FeatureExtractor

        Raises
        ------
        vggfeat.models.WeightsError
            The weights cannot be found or loaded (checked before `X`).
        """
        from vggfeat.models import load_backbone

        if self.aggregate not in ("avg", "stack"):
            raise ValueError(f"aggregate must be 'avg' or 'stack', got {self.aggregate!r}")
        if self.verbose not in ("auto", True, False):
            raise ValueError(f"verbose must be 'auto', True or False, got {self.verbose!r}")
        model = load_backbone(self.weights, self.arch)
        self._images(X, reset=True)
        self.config_ = DescriptorConfig.from_model(model, self.scales, layer=self.layer,
                                                   flip=self.flip, pool=self.pool)
        if self.config_.extra_layers:
            raise InputError(f"layer={self.layer!r}: FeatureExtractor describes one layer; "
                             "give one name (several go to one cache with extract_to_cache)")
        # Built once per fit (the CPU fast path traces the net); not pickled (see below).
        self._engine = Engine(model, self.config_, batch_size=self.batch_size,
                              workers=self.workers, device=self.device)
        self.model_ = self._engine.model
        dim = model.feature_dim(self.config_.layer)
        self._n_features_out = dim * (len(self.config_.scales) if self.aggregate == "stack" else 1)
        return self

    def transform(self, X):
        """Descriptors of the images in `X`, one L2-normalised row each.

        Parameters
        ----------
        X : sequence of images or ndarray (see Notes)

        Returns
        -------
        ndarray of shape (n_images, D) or (n_images, S * D), float32

        Raises
        ------
        vggfeat.data.images.BadImageError
            An image cannot be decoded (the message names the file).
        """
        check_is_fitted(self, "model_")
        images = self._images(X, reset=False)
        descriptors = np.empty((len(images), len(self.config_.scales), self._dim()), np.float32)
        memory = _Memory(self.memory, self.config_) if self.memory is not None else None
        keys = [memory.key(image) for image in images] if memory else []
        todo = []
        for k in range(len(images)):
            stored = memory.get(keys[k]) if memory else None
            if stored is None:
                todo.append(k)
            else:
                descriptors[k] = stored
        if todo:
            self._compute(images, todo, descriptors, memory, keys)
        return l2_normalize(aggregate_scales(descriptors, self.aggregate)).astype(np.float32)

    def _compute(self, images, todo, descriptors, memory, keys) -> None:
        """Run the net on images[todo] into `descriptors` (and the memory)."""
        engine = getattr(self, "_engine", None) or Engine(
            self.model_, self.config_, batch_size=self.batch_size, workers=self.workers,
            device=self.device)
        show = self.verbose is True or (self.verbose == "auto"
                                        and len(todo) > AUTO_PROGRESS_IMAGES
                                        and not _called_by_scikit_learn())
        bar = progress_bar(total=len(todo), desc="describe images", unit="img",
                           disable=not show, dynamic_ncols=True)
        try:
            for result in engine.run([(k, images[k]) for k in todo]):
                if result.error is not None:
                    raise BadImageError(_name(images[result.index]), result.error)
                descriptors[result.index] = result.descriptor
                if memory:
                    memory.put(keys[result.index], result.descriptor)
                bar.update(1)
        finally:
            bar.close()

    def _dim(self) -> int:
        return self.model_.feature_dim(self.config_.layer)

    def _images(self, X, reset: bool) -> list:
        """X -> list of engine sources: paths, PIL images or (3, H, W) float tensors."""
        if isinstance(X, (str, os.PathLike)):
            raise TypeError("X must be a sequence of images; wrap a single path in a list")
        if (not isinstance(X, Sequence | np.ndarray) and hasattr(X, "__array__")) or (
                isinstance(X, list | tuple) and X and isinstance(X[0], list | tuple)):
            X = np.asarray(X)  # array-likes and nested lists of numbers
        if _is_table(X):
            if not self.rows_as_images:
                raise ValueError(_table_message(X))
            # The documented adaptation: rows of a 2-D array are 1 x F grayscale images.
            # validate_data also gives scikit-learn's errors (1-D, sparse, NaN, F changed).
            X = validate_data(self, X, reset=reset, dtype="numeric")
            return [_array_image(row[None, :]) for row in X]
        if isinstance(X, np.ndarray) and X.dtype.kind in "biuf":
            if X.ndim not in (3, 4):
                raise ValueError(f"a numeric array of images must be (n, H, W) or (n, H, W, 3) "
                                 f"(or (n, F) rows), got shape {X.shape}")
            return [_array_image(image) for image in X]
        if not isinstance(X, Sequence | np.ndarray):
            raise TypeError(f"X must be a sequence of images (paths, PIL images or arrays), "
                            f"got {type(X).__name__}")
        if len(X) == 0:
            raise ValueError("X holds no images (0 samples); at least 1 is required")
        return [_array_image(x) if isinstance(x, np.ndarray) else x for x in X]

    def __sklearn_clone__(self):
        # scikit-learn clones before every fold, outside the try that turns a failed fit
        # into "All the fits failed": a missing weights file is said here, once, clearly.
        _check_weights_file(self.weights)
        return super().__sklearn_clone__()

    def __getstate__(self):
        # The engine holds a TorchScript trace, which does not pickle; transform rebuilds it.
        state = super().__getstate__()
        state.pop("_engine", None)
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # Rows are float32 whatever the input (the descriptor's precision).
        tags.transformer_tags.preserves_dtype = []
        return tags


def _is_table(X) -> bool:
    """Sparse matrices, and numeric (or numeric-object) arrays of 1 or 2 dimensions."""
    if hasattr(X, "tocsr"):
        return True
    if not isinstance(X, np.ndarray) or X.ndim > 2:
        return False
    if X.dtype.kind in "biufc":
        return True
    return X.ndim == 2 and X.dtype == object and not _holds_images(X)


def _holds_images(X: np.ndarray) -> bool:
    return any(isinstance(x, (str, os.PathLike)) or hasattr(x, "convert") for x in X.flat[:1])


def _array_image(array: np.ndarray) -> torch.Tensor:
    """(H, W) or (H, W, 3) pixels -> (3, H, W) float tensor; integers are 0..255."""
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise ValueError(f"image arrays must be real numbers, got dtype {array.dtype}")
    if not np.all(np.isfinite(array)):
        raise ValueError("image arrays must not contain NaN or infinity")
    scale = 255.0 if np.issubdtype(array.dtype, np.integer) else 1.0
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32) / np.float32(scale))
    if x.dim() == 2:
        return x[None].expand(3, -1, -1).contiguous()
    if x.dim() == 3 and x.shape[-1] in (1, 3):
        return x.permute(2, 0, 1).expand(3, -1, -1).contiguous()
    raise ValueError(f"an image array must be (H, W) or (H, W, 3), got shape {tuple(x.shape)}")


def _name(source) -> str:
    return str(getattr(source, "path", source if isinstance(source, (str, os.PathLike))
                       else "<in-memory image>"))



def _table_message(X) -> str:
    shape = getattr(X, "shape", None)
    return (f"X is a {len(shape) if shape else 2}-D numeric table"
            f"{f' of shape {tuple(shape)}' if shape else ''}, not images: FeatureExtractor "
            "turns images into descriptors (features already computed go straight to the "
            "classifier). Give paths, PIL images, a list of (H, W[, 3]) arrays, or an "
            "(n, H, W[, 3]) array; rows_as_images=True reads each row as a 1 x F image.")


def _check_weights_file(weights) -> None:
    """Raise WeightsError for `weights` that names a file (a path, or a string with a folder
    or a weights suffix) which does not exist; names of torchvision weights pass."""
    if not isinstance(weights, str | os.PathLike):
        return
    text = os.fspath(weights)
    looks_like_file = (isinstance(weights, os.PathLike) or os.sep in text or "/" in text
                       or text.lower().endswith(WEIGHT_SUFFIXES))
    if looks_like_file and not Path(text).expanduser().exists():
        raise WeightsError(f"weights {text!r}: no such file or folder (FeatureExtractor "
                           "checks its weights before any fit). Give the path of a .pth file, "
                           "a train-backbone run folder, or a torchvision name such as vgg16.")


def _called_by_scikit_learn() -> bool:
    """Whether a scikit-learn meta-estimator (Pipeline, cross-validation, a search, ...) is
    on the call stack; sklearn.base and sklearn.utils wrap every direct call too."""
    frame = sys._getframe(1)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.startswith("sklearn.") and not module.startswith(("sklearn.base",
                                                                    "sklearn.utils")):
            return True
        frame = frame.f_back
    return False


class _Memory:
    """Descriptors on disk: <folder>/<configuration key>/<image key>.npy, (S, D) float32."""

    def __init__(self, folder, config: DescriptorConfig):
        self.folder = Path(folder).expanduser() / config_key(config.as_dict())
        self.folder.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(source) -> str:
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

    def get(self, key: str) -> np.ndarray | None:
        try:
            return np.load(self.folder / f"{key}.npy")
        except (OSError, ValueError):  # absent, or damaged by a crash: computed again
            return None

    def put(self, key: str, descriptor: np.ndarray) -> None:
        # Parallel folds may write the same key: last one wins, intact. The atomic writer's
        # temporary name is per process, so this process's threads take turns.
        with _PUT_LOCK, atomic.replacing(self.folder / f"{key}.npy") as tmp, \
                open(tmp, "wb") as handle:
            np.save(handle, np.asarray(descriptor, dtype=np.float32))
