"""Issue 21: the Python API never silently wrong, in scikit-learn's conventions.

Each test here failed before the fix (the behaviour it checks was a wrong result, a crash
from another library, or missing); the bad-input sweep is tests/test_api_bad_inputs.py.
"""
import warnings

import h5py
import numpy as np
import pytest
import torch
from conftest import make_tiny_backbone
from helpers_datasets import make_folder_dataset
from helpers_features import random_rgb, write_png
from PIL import Image
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.svm import LinearSVC

from vggfeat.data.readers import open_dataset
from vggfeat.features import FeatureExtractor, extract_to_cache, load_features
from vggfeat.features.cache import CacheError
from vggfeat.models import WeightsError, load_backbone, save_backbone
from vggfeat.utils.errors import InputError

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    """A crop-32 net of width 1/16: fc7 has 256 values, a few ms per image."""
    path = tmp_path_factory.mktemp("micro") / "micro.pth"
    save_backbone(make_tiny_backbone(width=0.0625, crop_size=32), path)
    return path


def extractor(weights, **kwargs):
    return FeatureExtractor(weights=weights, scales=kwargs.pop("scales", (32,)), device="cpu",
                            **kwargs)


# -- 1. one RGB array without a list --------------------------------------------------------


def test_one_rgb_array_without_a_list_is_refused_with_the_fix(micro):
    image = random_rgb(81, 90, seed=1)
    fitted = extractor(micro).fit([image])
    with pytest.raises(InputError, match=r"Wrap one image in a list \(X=\[image\]\)"):
        fitted.transform(image)  # was: 81 rows, each a 90 x 3 grey "image"
    assert fitted.transform([image]).shape == (1, 256)
    with pytest.raises(InputError, match="Wrap one image in a list"):
        extract_to_cache(image, "unused.h5", weights=micro, scales=(32,), ids=["a"])


# -- 2. pixels outside the documented ranges --------------------------------------------------


@pytest.mark.parametrize("pixels, says", [
    (random_rgb(40, 40, seed=2).astype(np.float32), r"0\.\.255 values\?\): divide by 255"),
    (random_rgb(40, 40, seed=2) / 127.5 - 1, r"normalised, e\.g\. -1\.\.1"),
    (random_rgb(40, 40, seed=2).astype(np.int64) - 128, "integer pixels must be 0..255"),
    (random_rgb(40, 40, seed=2).astype(np.int32) * 4, "integer pixels must be 0..255"),
])
def test_pixels_outside_the_documented_ranges_are_refused(micro, pixels, says):
    fitted = extractor(micro).fit([random_rgb(40, 40)])
    with pytest.raises(InputError, match=says):
        fitted.transform([pixels])


def test_uint16_is_read_by_its_range_and_said(micro):
    pixels = random_rgb(40, 40, seed=3)
    fitted = extractor(micro).fit([pixels])
    with pytest.warns(UserWarning, match="uint16 image array is read as 16-bit"):
        wide = fitted.transform([pixels.astype(np.uint16) * 257])  # 255 * 257 = 65535
    np.testing.assert_allclose(wide, fitted.transform([pixels]), atol=1e-6)


# -- 3. float16 that would store zeros ---------------------------------------------------------


def test_float16_refuses_descriptors_it_would_store_as_zeros(tmp_path):
    model = make_tiny_backbone(width=0.0625, crop_size=32)
    with torch.no_grad():  # fc7's raw values around 1e-7: far below float16's 6.1e-05
        model.classifier[3].weight.mul_(1e-7)
        model.classifier[3].bias.mul_(1e-7)
    paths = [write_png(tmp_path / f"{k}.png", random_rgb(40, 40, seed=k)) for k in range(3)]
    with pytest.raises(CacheError, match=r"outside float16's range .* zeros .*float32"):
        extract_to_cache(paths, tmp_path / "c16.h5", model=model, scales=(32,),
                         device="cpu", dtype="float16", progress=False)
    summary = extract_to_cache(paths, tmp_path / "c32.h5", model=model, scales=(32,),
                               device="cpu", dtype="float32", progress=False)
    _, rows = load_features(summary.path, l2=False)
    assert 0 < np.abs(rows).max() < 1e-5  # float32 keeps them


def test_float16_of_an_ordinary_net_is_stored(micro, tmp_path):
    paths = [write_png(tmp_path / f"{k}.png", random_rgb(40, 40, seed=k)) for k in range(2)]
    summary = extract_to_cache(paths, tmp_path / "c.h5", weights=micro, scales=(32,),
                               device="cpu", dtype="float16", progress=False)
    with h5py.File(summary.path) as f:
        assert f["descriptors"].dtype == np.float16 and np.abs(f["descriptors"][()]).max() > 0


# -- 4. set_params after fit -------------------------------------------------------------------


@pytest.mark.parametrize("change", [{"scales": (48,)}, {"layer": "fc6"}, {"flip": False},
                                    {"aggregate": "stack"}, {"weights": "other.pth"}])
def test_a_parameter_changed_after_fit_is_refused_not_mixed(micro, change):
    images = [random_rgb(40, 40, seed=k) for k in range(2)]
    fitted = extractor(micro).fit(images)
    name = next(iter(change))
    fitted.set_params(**change)
    with pytest.raises(InputError, match=f"{name} changed since fit .*call fit again"):
        fitted.transform(images)  # was: old features, or numpy's broadcast error (layer)


def test_engine_settings_may_change_after_fit_with_the_same_numbers(micro):
    images = [random_rgb(40, 40, seed=k) for k in range(3)]
    fitted = extractor(micro).fit(images)
    before = fitted.transform(images)
    fitted.set_params(batch_size=1, verbose=False)
    np.testing.assert_allclose(fitted.transform(images), before, atol=1e-6)
    refit = fitted.set_params(layer="fc6").fit(images)
    assert refit.transform(images).shape == (3, 256) and refit.config_.layer == "fc6"


# -- 5. extract_to_cache with in-memory images -------------------------------------------------


def test_in_memory_images_need_ids_and_keep_them(micro, tmp_path):
    pixels = [random_rgb(40, 40, seed=k) for k in range(3)]
    with pytest.raises(InputError, match=r"items\[0\] is an in-memory image .*ids="):
        extract_to_cache([Image.fromarray(p) for p in pixels], tmp_path / "a.h5",
                         weights=micro, scales=(32,), device="cpu", progress=False)
    with pytest.raises(InputError, match="ids=") as refused:
        extract_to_cache(np.stack(pixels), tmp_path / "b.h5", weights=micro, scales=(32,),
                         device="cpu", progress=False)
    assert len(str(refused.value)) < 200  # no pixels dumped into the message
    for items in ([Image.fromarray(p) for p in pixels], np.stack(pixels)):
        out = tmp_path / f"{type(items).__name__}.h5"
        extract_to_cache(items, out, weights=micro, scales=(32,), device="cpu",
                         progress=False, ids=["x", "y", "z"])
        ids, rows = load_features(out)
        assert ids == ["x", "y", "z"]
        np.testing.assert_allclose(rows, extractor(micro).fit(pixels).transform(pixels),
                                   atol=1e-6)


def test_folder_ids_and_labels_agree_with_the_cli(micro, tmp_path):
    data = make_folder_dataset(tmp_path / "photos", classes=("cat", "dog"), per_class=2)
    cli_ids = [s.id for s in open_dataset("folder", data.root).images()]
    paths = sorted(p for p in data.root.glob("*/*") if p.is_file())
    labels = [p.parent.name for p in paths]
    out = tmp_path / "photos.h5"
    extract_to_cache(paths, out, weights=micro, scales=(32,), device="cpu", progress=False,
                     root=data.root, labels=labels)
    ids, rows, got = load_features(out, return_labels=True)
    assert sorted(ids) == sorted(cli_ids) and ids[0] == "cat/" + paths[0].name
    assert got == labels and rows.shape == (4, 256)
    bare = tmp_path / "bare.h5"
    extract_to_cache(paths, bare, weights=micro, scales=(32,), device="cpu", progress=False)
    with pytest.raises(CacheError, match="holds no labels.*labels="):
        load_features(bare, return_labels=True)


def test_python_errors_name_python_arguments_and_bad_images_are_printed(micro, tmp_path,
                                                                        capsys):
    good = write_png(tmp_path / "good.png", random_rgb(40, 40))
    (tmp_path / "bad.png").write_text("not an image")
    out = tmp_path / "c.h5"
    summary = extract_to_cache([good, tmp_path / "bad.png"], out, weights=micro, scales=(32,),
                               device="cpu", progress=False)
    assert len(summary.failed) == 1 and "bad image" in capsys.readouterr().err
    with pytest.raises(CacheError) as refused:
        extract_to_cache([good], out, weights=micro, scales=(48,), device="cpu", progress=False)
    assert "overwrite=True" in str(refused.value) and "--" not in str(refused.value)


# -- conventions --------------------------------------------------------------------------------


def test_default_scales_follow_the_crop_size(micro):
    fitted = FeatureExtractor(weights=micro, device="cpu").fit([random_rgb(40, 40)])
    assert fitted.config_.scales == (37, 55, 73)  # (256, 384, 512) * 32 / 224
    from vggfeat.features.api import default_scales

    assert default_scales(make_tiny_backbone(crop_size=224)) == (256, 384, 512)


def test_feature_names_and_pandas_output_indexed_by_image_id(micro, tmp_path):
    paths = [write_png(tmp_path / f"{k}.png", random_rgb(40, 40, seed=k)) for k in range(2)]
    stacked = extractor(micro, scales=(32, 48), aggregate="stack").fit(paths)
    names = stacked.get_feature_names_out()
    assert names[0] == "fc7_q32_0" and names[256] == "fc7_q48_0" and len(names) == 512
    frame = stacked.set_output(transform="pandas").transform([str(p) for p in paths])
    assert list(frame.index) == [str(p) for p in paths] and frame.columns[0] == "fc7_q32_0"
    np.testing.assert_allclose(frame.to_numpy(), stacked.set_output(transform="default")
                               .transform(paths), atol=1e-6)
    averaged = extractor(micro, scales=(32, 48)).fit(paths)
    assert averaged.get_feature_names_out()[0] == "fc7_q32-48_0"


def _labelled(n=4):
    X = [random_rgb(36, 36, seed=k) for k in range(2 * n)]
    for k in range(n):
        X[n + k][8:28, 8:28] = 255
    return X, [0] * n + [1] * n


def test_cross_validation_warns_once_without_memory_and_memory_is_one_file_per_call(
        micro, tmp_path, monkeypatch):
    import vggfeat.features.api_memory as api_memory

    monkeypatch.setattr(api_memory, "_warned_about_memory", False)
    X, y = _labelled()
    with pytest.warns(UserWarning, match="without memory=.*memory=") as caught:
        cross_val_score(make_pipeline(extractor(micro), LinearSVC()), X, y, cv=2)
    assert sum("without memory" in str(w.message) for w in caught) == 1
    memory = tmp_path / "memory"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # with memory=: no warning
        cross_val_score(make_pipeline(extractor(micro, memory=memory), LinearSVC()), X, y,
                        cv=2)
    stores = list(memory.glob("*/*.npz"))
    assert 1 <= len(stores) <= 2 < len(X)  # per call that computed, not per image


def test_weights_may_be_a_loaded_backbone(micro):
    images = [random_rgb(40, 40, seed=k) for k in range(2)]
    by_path = extractor(micro).fit(images).transform(images)
    by_model = extractor(load_backbone(micro)).fit(images).transform(images)
    np.testing.assert_allclose(by_model, by_path, atol=1e-6)


def test_damaged_weights_surface_before_cross_validation(tmp_path):
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(b"not a checkpoint")
    X, y = _labelled()
    with pytest.raises(WeightsError, match="damaged.pth"):  # not "All the fits failed"
        cross_val_score(make_pipeline(extractor(damaged), LinearSVC()), X, y, cv=2)
