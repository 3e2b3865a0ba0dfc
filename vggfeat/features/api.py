"""The Python feature API: a scikit-learn transformer, and the cache writer re-exported."""
from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils._set_output import _get_output_config
from sklearn.utils.validation import check_is_fitted, validate_data

from vggfeat.data.images import BadImageError
from vggfeat.features.api_checks import (
    ImageInputError,
    TableError,
    array_image,
    check_weights_argument,
    checked_device,
    checked_scales,
    image_sources,
    in_python_terms,
    is_backbone,
    is_table,
    refuse_unknown_arguments,
    table_message,
    unwrap_table_of_paths,
)
from vggfeat.features.api_memory import Memory, image_key, warn_once_without_memory, weights_digest
from vggfeat.features.cache import aggregate_rows
from vggfeat.features.descriptor import DescriptorConfig
from vggfeat.features.engine import DEFAULT_BATCH_SIZE, Engine
from vggfeat.features.pipeline import extract_to_cache
from vggfeat.utils.errors import InputError
from vggfeat.utils.progress import progress_bar

__all__ = ["FeatureExtractor", "extract_to_cache"]

# verbose="auto" shows a progress bar for more images than this (fewer take seconds).
AUTO_PROGRESS_IMAGES = 16


class FeatureExtractor(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """The paper's VGG transfer descriptor as a scikit-learn transformer.

    Each image is rescaled to every scale Q, run densely through the fixed net, its
    `layer` map pooled over positions (averaged; `pool`) and averaged with its horizontal
    flip; the scales
    are averaged or stacked, and each row is L2-normalised (paper Appendix B).

    Parameters
    ----------
    weights : str, path-like or loaded backbone, default="vgg16"
        A weights file or a torchvision name (see `vggfeat.models.load_backbone`), e.g.
        "vgg16", "resnet50" or "resnet50-11ad3fa6.pth"; or a model already loaded with
        `vggfeat.models.load_backbone` (as `extract_to_cache`'s ``model=``).
    arch : str, optional
        Architecture, when the weights file cannot say (e.g. "resnet50" for a bare
        state dict of another torchvision family).
    scales : tuple of int, optional
        Smallest image side Q of each scale. None: the paper's (256, 384, 512) for a net
        trained on 224-pixel crops, in proportion for other crop sizes (crop 32: 37, 55, 73).
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
        running the net again. Like the `memory` of scikit-learn's Pipeline; one file per
        call that computed anything (not per image); never cleared by vggfeat (delete the
        folder to reclaim the space). Without it, a cross-validation or search warns once
        (e.g. memory="~/.cache/vggfeat").
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
    One (H, W, 3) array is refused (it would read as H grey images): wrap it in a list.
    Float pixels must be in [0, 1], integers in 0..255; uint16 is read as 0..65535 (with a
    warning); other ranges are refused, not guessed. A pandas DataFrame with one column
    (or a Series) of paths is read as that column. `fit` only loads the weights (nothing
    is learnt from the images); rows are float32. `transform` uses what `fit` saw: a
    parameter that changes the numbers (weights, arch, scales, aggregate, layer, pool,
    flip), set after `fit`, is refused with "call fit again". ``set_output("pandas")``
    gives a DataFrame indexed by image id (a path as given, else the position), with
    columns named by `get_feature_names_out` (``fc7_q256_0`` ...). Every mistake raises a
    `vggfeat.utils.errors.InputError` naming the argument (``n_jobs=``: use ``workers=``).

    Weights are checked early: `fit` loads them before looking at `X` and raises
    `vggfeat.models.WeightsError` naming the file; cloning (which scikit-learn's
    cross-validation and searches do before any fold, outside the try that catches fit
    errors) already raises it for weights of the wrong type, a file that does not exist or
    does not load (loaded once per process), so the error is not buried under "All the
    fits failed".

    Examples
    --------
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.svm import LinearSVC
    >>> clf = make_pipeline(FeatureExtractor(weights="vgg16"), LinearSVC())  # doctest: +SKIP
    >>> clf.fit(train_paths, train_labels).score(test_paths, test_labels)  # doctest: +SKIP
    """

    def __new__(cls, *args, **kwargs):
        # FeatureExtractor(n_jobs=2): name the argument meant (workers=), not Python's
        # "unexpected keyword argument"; __init__ stays plain, as scikit-learn requires.
        known = inspect.signature(cls.__init__).parameters
        refuse_unknown_arguments({k: v for k, v in kwargs.items() if k not in known})
        return super().__new__(cls)

    def __init__(self, weights="vgg16", arch=None, scales=None, aggregate="avg",
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
        vggfeat.utils.errors.InputError
            An argument or `X` that cannot be used; the message names it and the fix.
        """
        if self.aggregate not in ("avg", "stack"):
            raise InputError(f"aggregate must be 'avg' or 'stack', got {self.aggregate!r}")
        if self.verbose not in ("auto", True, False):
            raise InputError(f"verbose must be 'auto', True or False, got {self.verbose!r}")
        scales = checked_scales(self.scales)
        device = checked_device(self.device)
        model = _load(self.weights, self.arch)
        self._images(X, reset=True)
        try:
            self.config_ = DescriptorConfig.from_model(
                model, scales or default_scales(model), layer=self.layer, flip=self.flip,
                pool=self.pool)
        except InputError as error:  # worded for the CLI's --layer
            raise in_python_terms(error) from None
        if self.config_.weights_sha256 == "unknown":  # a model object: key memory by content
            self.config_ = replace(self.config_, weights_sha256=weights_digest(model))
        if self.config_.extra_layers:
            raise InputError(f"layer={self.layer!r}: FeatureExtractor describes one layer; "
                             "give one name (several go to one cache with extract_to_cache)")
        # Built once per fit (the CPU fast path traces the net); not pickled (see below).
        self._engine = Engine(model, self.config_, batch_size=self.batch_size,
                              workers=self.workers, device=device)
        self._engine_params = self._current(ENGINE_PARAMS)
        self._fitted_params = self._current(FITTED_PARAMS)
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
        ndarray of shape (n_images, D) or (n_images, S * D), float32; a DataFrame indexed
        by image id (a path as given, else the position) after ``set_output("pandas")``.

        Raises
        ------
        vggfeat.data.images.BadImageError
            An image cannot be decoded (the message names the file).
        vggfeat.utils.errors.InputError
            `X` cannot be used, or a parameter that determines the numbers changed since
            `fit` (``set_params``): call `fit` again.
        """
        check_is_fitted(self, "model_")
        self._refuse_changes_since_fit()
        images = self._images(X, reset=False)
        descriptors = np.empty((len(images), len(self.config_.scales), self._dim()), np.float32)
        memory = Memory(self.memory, self.config_) if self.memory is not None else None
        if memory is None and _called_by_scikit_learn("sklearn.model_selection"):
            warn_once_without_memory()
        keys = [image_key(image) for image in images] if memory else []
        stored = memory.lookup(keys) if memory else {}
        for k, descriptor in stored.items():
            descriptors[k] = descriptor
        todo = [k for k in range(len(images)) if k not in stored]
        if todo:
            self._compute(images, todo, descriptors)
            if memory:
                memory.store([keys[k] for k in todo], descriptors[todo])
        # block by block: no float64 copy of the whole matrix beside `descriptors`
        rows = aggregate_rows(descriptors, self.aggregate)
        del descriptors
        return self._as_output(rows, images)

    def get_feature_names_out(self, input_features=None):
        """Column names that say the layer and scale: ``fc7_q256_0`` ... (stacked scales),
        ``fc7_q256-384-512_0`` ... (averaged). With ``rows_as_images`` scikit-learn's
        ``featureextractor0`` ... (its generic checks expect them)."""
        check_is_fitted(self, "model_")
        if self.rows_as_images:
            return super().get_feature_names_out(input_features)
        scales, dim = self.config_.scales, self._dim()
        blocks = [(q,) for q in scales] if self.aggregate == "stack" else [scales]
        return np.asarray([f"{self.config_.layer}_q{'-'.join(map(str, qs))}_{i}"
                           for qs in blocks for i in range(dim)], dtype=object)

    def set_params(self, **params):
        wrong = {name: value for name, value in params.items()
                 if name.split("__")[0] not in self.get_params(deep=False)}
        refuse_unknown_arguments(wrong)
        return super().set_params(**params)

    def _compute(self, images, todo, descriptors) -> None:
        """Run the net on images[todo] into `descriptors`."""
        engine = getattr(self, "_engine", None)
        if engine is None or getattr(self, "_engine_params", None) != self._current(
                ENGINE_PARAMS):  # unpickled, or device/batch_size/workers set since fit
            engine = self._engine = Engine(
                self.model_, self.config_, batch_size=self.batch_size, workers=self.workers,
                device=checked_device(self.device))
            self._engine_params = self._current(ENGINE_PARAMS)
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
                bar.update(1)
        finally:
            bar.close()

    def _current(self, names) -> dict:
        return {name: _comparable(getattr(self, name)) for name in names}

    def _refuse_changes_since_fit(self) -> None:
        """transform uses what fit saw: a parameter set since then is refused by name."""
        fitted = getattr(self, "_fitted_params", None)  # None: pickled by an older vggfeat
        if fitted is None:
            return
        now = self._current(FITTED_PARAMS)
        changed = [name for name in FITTED_PARAMS if not _same(fitted[name], now[name])]
        if changed:
            raise InputError(
                f"{', '.join(changed)} changed since fit (set_params): transform uses what fit "
                "saw; call fit again (it only loads the weights) before transform")

    def _as_output(self, rows: np.ndarray, images: list):
        if _get_output_config("transform", self)["dense"] != "pandas" or self.rows_as_images:
            return rows
        import pandas as pd

        ids = [os.fspath(getattr(s, "id", s)) if isinstance(getattr(s, "id", s), str | os.PathLike)
               else k for k, s in enumerate(images)]
        return pd.DataFrame(rows, index=pd.Index(ids, name="image"),
                            columns=self.get_feature_names_out())

    def _dim(self) -> int:
        return self.model_.feature_dim(self.config_.layer)

    def _images(self, X, reset: bool) -> list:
        """X -> list of engine sources: paths, PIL images or (3, H, W) float tensors."""
        if isinstance(X, str | os.PathLike):
            raise ImageInputError("X must be a sequence of images; wrap a single path in a "
                                  "list (X=[path])")
        X = unwrap_table_of_paths(X)
        if (not isinstance(X, Sequence | np.ndarray) and hasattr(X, "__array__")) or (
                isinstance(X, list | tuple) and X and isinstance(X[0], list | tuple)):
            X = np.asarray(X)  # array-likes and nested lists of numbers
        if is_table(X):
            if not self.rows_as_images:
                raise TableError(table_message(X))
            # The documented adaptation: rows of a 2-D array are 1 x F grayscale images,
            # taken as they are. validate_data also gives scikit-learn's errors (1-D,
            # sparse, NaN, F changed).
            X = validate_data(self, X, reset=reset, dtype="numeric")
            return [array_image(row[None, :], checked=False) for row in X]
        return image_sources(X)

    def __sklearn_clone__(self):
        # scikit-learn clones before every fold, outside the try that turns a failed fit
        # into "All the fits failed" (cross_val_score's error_score): arguments of the
        # wrong type, a missing weights file and weights that do not load are said here,
        # once, clearly (a file is loaded once per process, see _load_checked).
        check_weights_argument(self.weights)
        checked_scales(self.scales)
        _load_checked(self.weights, self.arch)
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


# scikit-learn reads the parameters from the signature: __init__'s, not __new__'s.
FeatureExtractor.__signature__ = inspect.signature(FeatureExtractor.__init__).replace(
    parameters=list(inspect.signature(FeatureExtractor.__init__).parameters.values())[1:])

# Parameters that determine the numbers: transform refuses them changed since fit.
FITTED_PARAMS = ("weights", "arch", "scales", "aggregate", "layer", "pool", "flip",
                 "rows_as_images")
# Parameters of the engine only (same numbers): transform rebuilds the engine for them.
ENGINE_PARAMS = ("device", "batch_size", "workers")
# The paper's test scales for its 224-pixel crop (Sec. 3.2); other crops scale them.
PAPER_CROP, PAPER_SCALES = 224, (256, 384, 512)
# (path, size, mtime) of weights files already loaded once at clone time in this process.
_LOADED_AT_CLONE: set = set()


def default_scales(model) -> tuple[int, ...]:
    """The paper's scales (256, 384, 512) for its 224 crop, in proportion for other crops
    (a net trained at crop 32: 37, 55, 73), as the CLI's scale follows its crop size."""
    crop = int(model.meta.get("crop_size", PAPER_CROP))
    return tuple(max(crop, round(q * crop / PAPER_CROP)) for q in PAPER_SCALES)


def _load(weights, arch):
    """The backbone of `weights`: loaded from a file or name, or the loaded model itself."""
    check_weights_argument(weights)
    if is_backbone(weights):
        return weights.eval()
    from vggfeat.models import load_backbone

    return load_backbone(weights, arch)


def _load_checked(weights, arch) -> None:
    """Load a weights file once per process at clone time, so a damaged file is refused
    before cross-validation starts (not buried in "All the fits failed")."""
    if is_backbone(weights) or not isinstance(weights, str | os.PathLike):
        return
    path = Path(weights).expanduser()
    if not path.is_file():
        return  # a torchvision name, or a run folder: fit loads it
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, arch)
    if key not in _LOADED_AT_CLONE:
        _load(weights, arch)
        _LOADED_AT_CLONE.add(key)


def _comparable(value):
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, list | np.ndarray):
        return tuple(np.asarray(value).tolist())
    return value


def _same(a, b) -> bool:
    if isinstance(a, torch.nn.Module) or isinstance(b, torch.nn.Module):
        return a is b
    return a == b


def _name(source) -> str:
    return str(getattr(source, "path", source if isinstance(source, (str, os.PathLike))
                       else "<in-memory image>"))


def _called_by_scikit_learn(prefix: str = "sklearn.") -> bool:
    """Whether a scikit-learn meta-estimator (Pipeline, cross-validation, a search, ...;
    one whose module starts with `prefix`) is on the call stack; sklearn.base and
    sklearn.utils wrap every direct call too."""
    frame = sys._getframe(1)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.startswith(prefix) and not module.startswith(("sklearn.base",
                                                                "sklearn.utils")):
            return True
        frame = frame.f_back
    return False
