"""vggfeat.features.api: FeatureExtractor as a scikit-learn transformer; extract_to_cache."""
import numpy as np
import pytest
from conftest import make_tiny_backbone
from helpers_datasets import make_folder_dataset
from helpers_features import random_rgb, reference_descriptor, write_png
from PIL import Image
from sklearn.pipeline import make_pipeline
from sklearn.svm import LinearSVC
from sklearn.utils.estimator_checks import parametrize_with_checks

from vggfeat.data.images import BadImageError
from vggfeat.data.readers import open_dataset
from vggfeat.features import FeatureExtractor, extract_to_cache, load_features
from vggfeat.models import load_backbone, save_backbone

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pictures")
    pixels = [random_rgb(48, 64, seed=1), random_rgb(70, 50, seed=2), random_rgb(64, 64, seed=3)]
    return pixels, [write_png(folder / f"{k}.png", p) for k, p in enumerate(pixels)]


def test_paths_pil_images_and_arrays_give_the_same_rows(tiny_weights, pictures):
    pixels, paths = pictures
    extractor = FeatureExtractor(weights=tiny_weights, scales=(64, 96), device="cpu").fit(paths)
    rows = extractor.transform(paths)
    assert rows.shape == (3, 512) and rows.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(extractor.transform([Image.fromarray(p) for p in pixels]), rows,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(extractor.transform(list(pixels)), rows, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(extractor.transform(np.stack([pixels[2]] * 2)), rows[[2, 2]],
                               rtol=1e-5, atol=1e-6)
    model = load_backbone(tiny_weights)  # independent float64 computation, averaged + L2
    expected = reference_descriptor(model, pixels[1], (64, 96)).mean(0)
    np.testing.assert_allclose(rows[1], expected / np.linalg.norm(expected), atol=1e-5)


def test_stack_aggregation(tiny_weights, pictures):
    _, paths = pictures
    stacked = FeatureExtractor(weights=tiny_weights, scales=(64, 96), aggregate="stack",
                               device="cpu").fit_transform(paths)
    assert stacked.shape == (3, 1024)
    np.testing.assert_allclose(np.linalg.norm(stacked, axis=1), 1, rtol=1e-5)


def test_bad_image_in_transform_names_the_file(tiny_weights, tmp_path):
    (tmp_path / "bad.jpg").write_text("no")
    extractor = FeatureExtractor(weights=tiny_weights, scales=(64,), device="cpu").fit(
        [tmp_path / "bad.jpg"])  # fit only loads the weights
    with pytest.raises(BadImageError, match="bad.jpg"):
        extractor.transform([tmp_path / "bad.jpg"])


def test_in_a_pipeline_with_a_linear_svm(tiny_weights, tmp_path):
    data = make_folder_dataset(tmp_path / "data", classes=("a", "b"), per_class=6)
    samples = open_dataset("folder", data.root).images()
    paths, labels = [s.path for s in samples], [s.id.split("/")[0] for s in samples]
    pipeline = make_pipeline(FeatureExtractor(weights=tiny_weights, scales=(64,),
                                              device="cpu"), LinearSVC(C=10.0))
    pipeline.fit(paths[::2], labels[::2])
    assert len(pipeline.predict(paths[1::2])) == 6
    assert pipeline.score(paths[::2], labels[::2]) == 1.0  # 6 points in 512-D: separable


def test_extract_to_cache_matches_the_transformer(tiny_weights, pictures, tmp_path):
    _, paths = pictures
    summary = extract_to_cache([str(p) for p in paths], tmp_path / "c.h5", weights=tiny_weights,
                               scales=(64, 96), device="cpu", progress=False)
    assert summary.complete and summary.computed == 3 and not summary.failed
    ids, x = load_features(tmp_path / "c.h5", "avg", l2=True)
    assert ids == [str(p) for p in paths]
    rows = FeatureExtractor(weights=tiny_weights, scales=(64, 96), device="cpu") \
        .fit(paths).transform(paths)
    np.testing.assert_allclose(x, rows, rtol=1e-5, atol=1e-6)


def test_unfitted_and_wrong_inputs_are_refused(tiny_weights, pictures):
    _, paths = pictures
    extractor = FeatureExtractor(weights=tiny_weights, scales=(64,), device="cpu")
    with pytest.raises(TypeError, match="wrap a single path"):
        extractor.fit(str(paths[0]))
    with pytest.raises(ValueError, match="aggregate"):
        FeatureExtractor(weights=tiny_weights, aggregate="max").fit(paths)
    with pytest.raises(ValueError, match="crop size"):
        FeatureExtractor(weights=tiny_weights, scales=(32,)).fit(paths)


@pytest.fixture(scope="module")
def micro_weights(tmp_path_factory):
    """An even smaller net (crop 32, width 1/16) so the ~40 scikit-learn checks stay fast."""
    path = tmp_path_factory.mktemp("micro") / "micro.pth"
    save_backbone(make_tiny_backbone(width=0.0625, crop_size=32), path)
    return path


# scikit-learn feeds numeric tables: with rows_as_images=True each row of an (n, F) array is
# read as a 1 x F grayscale image (documented), so every applicable check runs; none is
# skipped. The weights path is filled in per test (parametrize_with_checks needs instances
# at collection time, the file exists only once the fixture ran).
@parametrize_with_checks([FeatureExtractor(weights="<micro>", scales=(32,), device="cpu",
                                           rows_as_images=True)])
def test_scikit_learn_estimator_checks(estimator, check, micro_weights):
    estimator.set_params(weights=micro_weights)
    check(estimator)


# -- first-hour traps (issue 10) ------------------------------------------------------------


def test_a_table_of_features_is_refused_not_read_as_images(micro_weights):
    extractor = FeatureExtractor(weights=micro_weights, scales=(32,), device="cpu")
    table = np.random.default_rng(0).random((6, 512))  # e.g. descriptors already computed
    with pytest.raises(ValueError, match=r"2-D numeric table of shape \(6, 512\), not images"):
        extractor.fit(table)
    with pytest.raises(ValueError, match="not images"):
        extractor.fit(table.tolist())
    grey = np.random.default_rng(0).random((2, 40, 40))  # (n, H, W) images still work
    assert extractor.fit_transform(grey).shape == (2, 256)  # micro net: fc7 of 256


def _labelled_arrays(n_per_class=4):
    rng = np.random.default_rng(0)
    X = [random_rgb(36, 36, seed=k) for k in range(2 * n_per_class)]
    for k in range(n_per_class):  # class 1: a bright square, so the task is learnable
        X[n_per_class + k][8:28, 8:28] = 255
    y = [0] * n_per_class + [1] * n_per_class
    order = rng.permutation(len(X))
    return [X[i] for i in order], [y[i] for i in order]


def test_missing_weights_surface_before_any_fold(tmp_path):
    from sklearn.model_selection import cross_val_score

    from vggfeat.models import WeightsError

    missing = tmp_path / "runs" / "D" / "backbone.pth"
    X, y = _labelled_arrays()
    pipeline = make_pipeline(FeatureExtractor(weights=missing, scales=(32,)), LinearSVC())
    with pytest.raises(WeightsError, match="backbone.pth"):  # not "All the fits failed"
        cross_val_score(pipeline, X, y, cv=2)
    with pytest.raises(WeightsError, match="backbone.pth"):  # fit: before looking at X
        FeatureExtractor(weights=str(missing)).fit(None)


def test_memory_reuses_descriptors_across_folds_and_fits(micro_weights, tmp_path, monkeypatch):
    from sklearn.model_selection import cross_val_score

    from vggfeat.features.engine import Engine

    computed = []
    run = Engine.run

    def counting_run(self, items):  # a spy: the real engine runs, we count its images
        items = list(items)
        computed.append(len(items))
        return run(self, items)

    monkeypatch.setattr(Engine, "run", counting_run)
    X, y = _labelled_arrays()

    def pipeline(memory):
        return make_pipeline(FeatureExtractor(weights=micro_weights, scales=(32,), device="cpu",
                                              memory=memory), LinearSVC(C=10.0))

    plain = cross_val_score(pipeline(None), X, y, cv=2)
    without = sum(computed)
    assert without == 2 * len(X)  # every fold describes its train and test images again
    computed.clear()
    first = cross_val_score(pipeline(tmp_path / "memory"), X, y, cv=2)
    assert sum(computed) == len(X)  # each image once: the second fold reuses the first's
    computed.clear()
    again = cross_val_score(pipeline(tmp_path / "memory"), X, y, cv=2)
    assert sum(computed) == 0
    np.testing.assert_array_equal(first, plain)
    np.testing.assert_array_equal(again, plain)


def test_memory_follows_the_file_and_the_configuration(micro_weights, tmp_path):
    path = write_png(tmp_path / "a.png", random_rgb(40, 40, seed=1))
    memory = tmp_path / "memory"
    extractor = FeatureExtractor(weights=micro_weights, scales=(32,), device="cpu",
                                 memory=memory).fit([path])
    before = extractor.transform([path])
    write_png(path, random_rgb(40, 40, seed=2))  # the file changes: recomputed, not reused
    fresh = FeatureExtractor(weights=micro_weights, scales=(32,), device="cpu").fit([path])
    np.testing.assert_allclose(extractor.transform([path]), fresh.transform([path]), atol=1e-6)
    assert not np.allclose(extractor.transform([path]), before)
    other = FeatureExtractor(weights=micro_weights, scales=(48,), device="cpu", memory=memory)
    assert other.fit([path]).transform([path]).shape == (1, 256)
    assert len(list(memory.iterdir())) == 2  # one folder per configuration


def test_progress_is_shown_for_many_images_but_not_inside_scikit_learn(micro_weights, capsys):
    from sklearn.model_selection import cross_val_score

    X, y = _labelled_arrays(n_per_class=9)  # 18 images: more than a few
    extractor = FeatureExtractor(weights=micro_weights, scales=(32,), device="cpu").fit(X)
    extractor.transform(X)
    assert "describe images" in capsys.readouterr().err
    extractor.transform(X[:3])
    assert "describe images" not in capsys.readouterr().err  # a few: no bar
    cross_val_score(make_pipeline(FeatureExtractor(weights=micro_weights, scales=(32,),
                                                   device="cpu"), LinearSVC()), X, y, cv=2)
    assert "describe images" not in capsys.readouterr().err  # a pipeline stays quiet
    extractor.set_params(verbose=True).transform(X[:3])
    assert "describe images" in capsys.readouterr().err
    extractor.set_params(verbose=False).transform(X)
    assert "describe images" not in capsys.readouterr().err
    params = FeatureExtractor().get_params()
    assert params["verbose"] == "auto" and params["memory"] is None
