"""The Python feature API: a scikit-learn transformer, and the cache writer re-exported."""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from vggfeat.data.images import BadImageError
from vggfeat.features.cache import aggregate_scales, l2_normalize
from vggfeat.features.descriptor import DescriptorConfig
from vggfeat.features.engine import DEFAULT_BATCH_SIZE, Engine
from vggfeat.features.pipeline import extract_to_cache

__all__ = ["FeatureExtractor", "extract_to_cache"]


class FeatureExtractor(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """The paper's VGG transfer descriptor as a scikit-learn transformer.

    Each image is rescaled to every scale Q, run densely through the fixed net, its
    `layer` map global-average-pooled (and averaged with its horizontal flip); the scales
    are averaged or stacked, and each row is L2-normalised (SPEC section 5).

    Parameters
    ----------
    weights : str or path-like, default="vgg16"
        A weights file or a torchvision name (see `vggfeat.models.load_backbone`).
    arch : str, optional
        Architecture, when the weights file cannot say.
    scales : tuple of int, default=(256, 384, 512)
        Smallest image side Q of each scale.
    aggregate : {"avg", "stack"}, default="avg"
        Average the scales (VOC) or concatenate them (Caltech).
    layer : {"fc7", "fc6", "pool5"}, default="fc7"
    flip : bool, default=True
        Average with the horizontally flipped image.
    device : str, default="auto"
        "auto" (cuda, mps, cpu), or a torch device name.
    batch_size : int, default=32
    workers : int, default=0
        DataLoader processes for decoding and rescaling.

    Attributes
    ----------
    model_ : torch.nn.Module
        The loaded backbone (on `device`).
    n_features_in_ : int
        Only when fitted on a 2-D numeric array (see Notes).

    Notes
    -----
    `X` is a sequence of images: paths, PIL images, or arrays of shape (H, W) or
    (H, W, 3). A numeric ndarray is a batch: (n, H, W, 3) or (n, H, W) images, and, so
    that scikit-learn's array-based estimator checks apply, a 2-D array (n, F) (or a list
    of n lists of F numbers) is read as n grayscale images of 1 x F pixels. Float pixels
    are taken as [0, 1], integers as 0..255. `fit` only loads the weights (nothing is
    learnt from the images); rows are float32.

    Examples
    --------
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.svm import LinearSVC
    >>> clf = make_pipeline(FeatureExtractor(weights="vgg16"), LinearSVC())  # doctest: +SKIP
    >>> clf.fit(train_paths, train_labels).score(test_paths, test_labels)  # doctest: +SKIP
    """

    def __init__(self, weights="vgg16", arch=None, scales=(256, 384, 512), aggregate="avg",
                 layer="fc7", flip=True, device="auto", batch_size=DEFAULT_BATCH_SIZE,
                 workers=0):
        self.weights = weights
        self.arch = arch
        self.scales = scales
        self.aggregate = aggregate
        self.layer = layer
        self.flip = flip
        self.device = device
        self.batch_size = batch_size
        self.workers = workers

    def fit(self, X, y=None):
        """Load the weights (and check `X`); nothing is learnt.

        Parameters
        ----------
        X : sequence of images or ndarray (see Notes)
        y : ignored

        Returns
        -------
        self : FeatureExtractor
        """
        from vggfeat.models import load_backbone

        if self.aggregate not in ("avg", "stack"):
            raise ValueError(f"aggregate must be 'avg' or 'stack', got {self.aggregate!r}")
        self._images(X, reset=True)
        model = load_backbone(self.weights, self.arch)
        self.config_ = DescriptorConfig.from_model(model, self.scales, layer=self.layer,
                                                   flip=self.flip)
        # Built once per fit (the CPU fast path traces the net); not pickled (see below).
        self._engine = Engine(model, self.config_, batch_size=self.batch_size,
                              workers=self.workers, device=self.device)
        self.model_ = self._engine.model
        dim = model.feature_dim(self.layer)
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
        engine = getattr(self, "_engine", None) or Engine(
            self.model_, self.config_, batch_size=self.batch_size, workers=self.workers,
            device=self.device)
        descriptors = np.empty((len(images), len(self.config_.scales), self._dim()), np.float32)
        for result in engine.run(list(enumerate(images))):
            if result.error is not None:
                raise BadImageError(_name(images[result.index]), result.error)
            descriptors[result.index] = result.descriptor
        return l2_normalize(aggregate_scales(descriptors, self.aggregate)).astype(np.float32)

    def _dim(self) -> int:
        return self.model_.feature_dim(self.layer)

    def _images(self, X, reset: bool) -> list:
        """X -> list of engine sources: paths, PIL images or (3, H, W) float tensors."""
        if isinstance(X, (str, os.PathLike)):
            raise TypeError("X must be a sequence of images; wrap a single path in a list")
        if (not isinstance(X, Sequence | np.ndarray) and hasattr(X, "__array__")) or (
                isinstance(X, list | tuple) and X and isinstance(X[0], list | tuple)):
            X = np.asarray(X)  # array-likes and nested lists of numbers
        if _is_table(X):
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

