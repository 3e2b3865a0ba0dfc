"""The Python API's bad-input sweep (issue 21), like the CLI's tests/test_bad_inputs.py.

Every mistake a user can make through `FeatureExtractor`, `extract_to_cache` and
`load_features` must raise a vggfeat error (`VggfeatError`, an `InputError` for a bad
input) raised by vggfeat's own code (not numpy's, torch's, pathlib's or h5py's, passed
through), whose message names the argument or file and says the fix in Python terms
(never a CLI option).
"""
import re

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_tiny_backbone
from helpers_features import random_rgb, write_png
from PIL import Image

from vggfeat.features import FeatureExtractor, extract_to_cache, load_features
from vggfeat.models import save_backbone
from vggfeat.utils.errors import VggfeatError


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    weights = root / "micro.pth"
    save_backbone(make_tiny_backbone(width=0.0625, crop_size=32), weights)
    image = write_png(root / "a.png", random_rgb(40, 40))
    (root / "folder").mkdir()
    return {"weights": weights, "image": image, "root": root}


def fe(files, **kwargs):
    kwargs = {"weights": files["weights"], "scales": (32,), "device": "cpu", **kwargs}
    return FeatureExtractor(**kwargs)


def fit(files, X, **kwargs):
    return fe(files, **kwargs).fit(X)


def extract(files, items, **kwargs):
    kwargs = {"weights": files["weights"], "scales": (32,), "device": "cpu",
              "progress": False, **kwargs}
    return extract_to_cache(items, kwargs.pop("path", files["root"] / "out.h5"), **kwargs)


RGB = random_rgb(40, 40, seed=1)

# (case id, action on the fixture's files, what the message must say)
CASES = [
    ("weights-none", lambda f: fit(f, [RGB], weights=None), "weights=None"),
    ("weights-int", lambda f: fit(f, [RGB], weights=42), "weights=42"),
    ("weights-foreign-module", lambda f: fit(f, [RGB], weights=torch.nn.Linear(2, 2)),
     "torch.save"),
    ("weights-missing-file", lambda f: fit(f, [RGB], weights=f["root"] / "no.pth"), "no.pth"),
    ("scales-int", lambda f: fit(f, [RGB], scales=32), r"scales=\(32,\)"),
    ("scales-zero", lambda f: fit(f, [RGB], scales=(0,)), "scales="),
    ("scales-text", lambda f: fit(f, [RGB], scales=("a",)), "scales="),
    ("scales-below-crop", lambda f: fit(f, [RGB], scales=(16,)), "crop size 32"),
    ("device-gpu", lambda f: fit(f, [RGB], device="gpu"), "device='gpu'"),
    ("device-cuda-index", lambda f: fit(f, [RGB], device="cuda:x"), "device='cuda:x'"),
    ("aggregate", lambda f: fit(f, [RGB], aggregate="max"), "aggregate"),
    ("verbose", lambda f: fit(f, [RGB], verbose="yes"), "verbose"),
    ("layer-unknown", lambda f: fit(f, [RGB], layer="fc9"), "layer: .*fc9.*choose from"),
    ("layer-two", lambda f: fit(f, [RGB], layer="fc6,fc7"), "describes one layer"),
    ("n-jobs", lambda f: fe(f, n_jobs=2), "use workers="),
    ("model-argument", lambda f: fe(f, model=object()), "use weights="),
    ("set-params-n-jobs", lambda f: fe(f).set_params(n_jobs=2), "use workers="),
    ("X-one-path", lambda f: fit(f, str(f["image"])), "wrap a single path"),
    ("X-one-rgb-array", lambda f: fit(f, RGB), "Wrap one image in a list"),
    ("X-floats-0-255", lambda f: fit(f, [RGB.astype(float)]), "divide by 255"),
    ("X-floats-minus-1-1", lambda f: fit(f, [RGB / 127.5 - 1]), "normalised"),
    ("X-negative-ints", lambda f: fit(f, [RGB.astype(int) - 200]), "0..255"),
    ("X-bool", lambda f: fit(f, [RGB > 100]), "dtype bool"),
    ("X-nan", lambda f: fit(f, [np.full((8, 8), np.nan)]), "NaN"),
    ("X-rgba", lambda f: fit(f, [np.zeros((8, 8, 4), np.uint8)]), r"\(H, W\) or \(H, W, 3\)"),
    ("X-folder", lambda f: fit(f, [f["root"] / "folder"]), "is a folder, not an image"),
    ("X-dataframe-two-columns",
     lambda f: fit(f, pd.DataFrame({"path": [str(f["image"])], "label": ["cat"]})),
     r"X\['path'\]"),
    ("X-table", lambda f: fit(f, np.random.default_rng(0).random((6, 512))), "not images"),
    ("X-empty", lambda f: fit(f, []), "no images"),
    ("X-numbers", lambda f: fit(f, [1, 2]), r"X\[0\] is a int, not an image"),
    ("X-dict", lambda f: fit(f, {"a": 1}), "sequence of images"),
    ("X-none", lambda f: fit(f, None), "sequence of images"),
    ("X-5d", lambda f: fit(f, np.zeros((1, 2, 8, 8, 3), np.uint8)), "numeric array of images"),
    ("transform-after-set-params",
     lambda f: fit(f, [RGB]).set_params(scales=(48,)).transform([RGB]), "call fit again"),
    ("load-weights-file", lambda f: load_features(f["weights"]), "not a vggfeat feature cache"),
    ("load-folder", lambda f: load_features(f["root"] / "folder"), "not a vggfeat feature"),
    ("load-missing", lambda f: load_features(f["root"] / "none.h5"), "no such feature file"),
    ("load-nothing", lambda f: load_features([]), "at least one path"),
    ("extract-weights-none", lambda f: extract(f, [f["image"]], weights=None), "weights=None"),
    ("extract-model-foreign", lambda f: extract(f, [f["image"]], model=torch.nn.Linear(2, 2)),
     "load_backbone"),
    ("extract-pil-without-ids", lambda f: extract(f, [Image.fromarray(RGB)]), "ids="),
    ("extract-ids-length", lambda f: extract(f, [f["image"]], ids=["a", "b"]), "ids has 2"),
    ("extract-repeated-ids", lambda f: extract(f, [RGB, RGB], ids=["a", "a"]), "unique"),
    ("extract-one-path", lambda f: extract(f, str(f["image"])), "wrap a single path"),
    ("extract-scales-int", lambda f: extract(f, [f["image"]], scales=32), "scales="),
    ("extract-device", lambda f: extract(f, [f["image"]], device="gpu"), "device='gpu'"),
    ("extract-labels-length", lambda f: extract(f, [f["image"]], labels=["a", "b"]),
     "labels has 2"),
    ("extract-over-weights", lambda f: extract(f, [f["image"]], path=f["weights"]),
     "is the weights file.*choose another path"),
    ("extract-layer", lambda f: extract(f, [f["image"]], layer="fc9"), "layer: .*fc9"),
]
if not torch.cuda.is_available():
    CASES.append(("device-cuda-without-gpu", lambda f: fit(f, [RGB], device="cuda"),
                  "no CUDA GPU"))


@pytest.mark.parametrize("action, says", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_a_vggfeat_error_naming_the_fix(files, action, says):
    with pytest.raises(VggfeatError) as raised:
        action(files)
    message = str(raised.value)
    assert re.search(says, message), message
    assert not re.search(r"(^|\s)--[a-z]", message), f"CLI advice in the Python API: {message}"
    assert "\n" not in message and len(message) < 400, message
    frame = raised.tb
    while frame.tb_next is not None:
        frame = frame.tb_next
    raised_in = frame.tb_frame.f_code.co_filename
    assert "/vggfeat/" in raised_in.replace("\\", "/"), f"raised by {raised_in}"


def test_a_dataframe_or_series_of_paths_is_read_as_its_column(files):
    frame = pd.DataFrame({"path": [str(files["image"])]})
    rows = fit(files, frame).transform(frame)
    np.testing.assert_allclose(fit(files, [files["image"]]).transform(frame["path"]), rows,
                               atol=1e-6)
