"""Any layer, pooled by mean or max, several layers in one pass and one cache (issue 18).

Numbers are checked against the float64 reference of `helpers_features` (its own layer
naming and pooling), and a multi-layer cache against one-layer caches of the same images.
"""
import json

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers_datasets import make_folder_dataset
from helpers_features import random_rgb, read_cache, reference_descriptor, write_png

from vggfeat.cli import cli
from vggfeat.data.readers import open_dataset
from vggfeat.features import FeatureExtractor, cache, extract_to_cache, load_features
from vggfeat.features.descriptor import DescriptorConfig, config_key, describe
from vggfeat.features.engine import Engine
from vggfeat.features.export import cache_summary, export_features
from vggfeat.models import build_backbone
from vggfeat.utils.errors import InputError
from vggfeat.utils.threads import torch_threads

pytestmark = pytest.mark.usefixtures("one_torch_thread")
# A tiny VGG-A's conv5_2 (64 channels) and fc7 (512): the deepest conv and the paper's layer.
PAIR = "conv5_2,fc7"



@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """12 labelled images (2 classes) read by the folder reader."""
    data = make_folder_dataset(tmp_path_factory.mktemp("layers") / "data", classes=("a", "b"),
                               per_class=6, size=(70, 90))
    return open_dataset("folder", data.root)


def _extract(reader, out, weights, layer=None, **kwargs):
    samples = reader.images()
    labels = [s.id.split("/")[0] for s in samples]
    with torch_threads(1):
        return extract_to_cache(samples, out, weights=weights, scales=(64, 96), layer=layer,
                                device="cpu", progress=False, dataset="folder",
                                root=reader.root, reader_options=reader.options,
                                labels=labels, log=lambda m: None, **kwargs)


@pytest.fixture(scope="module")
def caches(folder, tiny_weights, tmp_path_factory):
    """One cache of conv5_2 and fc7 together, and one of each alone."""
    base = tmp_path_factory.mktemp("caches")
    both = _extract(folder, base / "both.h5", tiny_weights, PAIR).path
    conv = _extract(folder, base / "conv.h5", tiny_weights, "conv5_2").path
    fc7 = _extract(folder, base / "fc7.h5", tiny_weights).path
    return both, conv, fc7


# -- names -----------------------------------------------------------------------------------

def test_conv_layers_take_the_papers_table_1_names():
    def names(arch):
        net = build_backbone(arch, width=0.125, crop_size=64, init=None)
        return [n for n in net.layers if n.startswith("conv")]

    d = names("D")
    assert d == ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
                 "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3"]
    assert names("vgg16-bn") == d  # after BN and ReLU: the same names
    assert names("A-LRN") == names("A")  # the LRN is no layer of its own
    assert len(names("C")) == 13 and names("C")[6] == "conv3_3"  # C's 1x1 conv, in order
    assert names("E")[-1] == "conv5_4" and len(names("E")) == 16
    net = build_backbone("D", width=0.125, crop_size=64, init=None)
    assert net.layers[-4:] == ("pool5", "fc6", "fc7", "fc8")
    assert net.feature_dim("conv3_1") == 32 and net.feature_dim("conv5_3") == 64


def test_a_conv_map_is_the_trunk_after_that_relu():
    net = build_backbone("C", width=0.125, crop_size=64, init="xavier").eval()
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        # 64 64 M 128 128 M 256 256 1x1: modules conv relu conv relu M ... its ReLU is [15]
        conv3_3 = net.features[:16](x)
        assert isinstance(net.features[15], torch.nn.ReLU)
        assert net.features[14].kernel_size == (1, 1)
        torch.testing.assert_close(net.dense(x, "conv3_3"), conv3_3, rtol=0, atol=0)
        maps = net.dense_layers(x, ["fc7", "conv3_3", "conv1_2"])
        assert list(maps) == ["fc7", "conv3_3", "conv1_2"]
        for name, value in maps.items():
            torch.testing.assert_close(value, net.dense(x, name), rtol=0, atol=0)


# -- numbers ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("layer", "pool"), [("conv5_2", "avg"), ("conv5_2", "max"),
                                             ("conv3_1", "max"), ("fc7", "max")])
def test_layer_descriptor_equals_float64_reference(tiny, tmp_path, layer, pool):
    pixels = random_rgb(70, 93, seed=2)
    path = write_png(tmp_path / "a.png", pixels)
    config = DescriptorConfig.from_model(tiny, (64, 96), layer=layer, pool=pool)
    (result,) = Engine(tiny, config, device="cpu").run([(0, path)])
    expected = reference_descriptor(tiny, pixels, (64, 96), layer=layer, pool=pool)
    assert result.descriptor.shape == (2, tiny.feature_dim(layer))
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(result.descriptor, expected, rtol=1e-4,
                               atol=1e-5 * np.abs(expected).max())


def test_several_layers_are_one_pass_of_concatenated_single_layer_descriptors(tiny):
    x = torch.rand(2, 3, 64, 90)
    both = DescriptorConfig.from_model(tiny, (64,), layer=["conv3_1", "fc7"], pool="max")
    calls = []
    real = tiny.dense_layers

    def counting(images, layers):
        calls.append(tuple(layers))
        return real(images, layers)

    with torch.inference_mode():
        joined = describe(tiny, x, both, dense_layers=counting)
        parts = [describe(tiny, x, DescriptorConfig.from_model(tiny, (64,), layer=name,
                                                               pool="max"))
                 for name in ("conv3_1", "fc7")]
    assert calls == [("conv3_1", "fc7")]
    torch.testing.assert_close(joined, torch.cat(parts, 1), rtol=1e-5, atol=1e-6)


def test_default_key_is_unchanged_and_options_enter_it_only_when_used(tiny):
    default = DescriptorConfig.from_model(tiny, (64, 96))
    assert default.layer == "fc7" and default.layers == ("fc7",)
    record = default.as_dict()
    assert "pool" not in record and "extra_layers" not in record
    explicit = DescriptorConfig.from_model(tiny, (64, 96), layer="fc7", pool="avg")
    assert config_key(explicit.as_dict()) == config_key(record)
    keys = {config_key(DescriptorConfig.from_model(tiny, (64, 96), **change).as_dict())
            for change in ({"pool": "max"}, {"layer": "fc7,conv5_2"},
                           {"layer": "conv5_2,fc7"}, {"layer": "conv5_2"})}
    assert len(keys) == 4 and config_key(record) not in keys


# -- one cache, several layers ---------------------------------------------------------------

def test_multi_layer_cache_equals_single_layer_caches(caches):
    both, conv, fc7 = caches
    stored = read_cache(both)
    assert json.loads(stored["attrs"]["layers"]) == ["conv5_2", "fc7"]
    assert stored["attrs"]["layer"] == "conv5_2"
    assert stored["descriptors"].shape[1:] == (2, 64)
    assert stored["layers/fc7"].shape[1:] == (2, 512)
    for layer, single in (("conv5_2", conv), ("fc7", fc7)):
        ids, rows = cache.read_descriptors(both, layer=layer)
        single_ids, expected = cache.read_descriptors(single)
        assert ids == single_ids and np.abs(expected).max() > 1e-3
        # fc7 alone runs through the CPU fast path; several layers through the eager trunk.
        np.testing.assert_allclose(rows, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    one = read_cache(fc7)  # a one-layer cache is laid out exactly as before
    assert "layers" not in one["attrs"] and "pool" not in one["attrs"]
    assert not any(name.startswith("layers") for name in one)


def test_layer_is_chosen_by_name_wherever_a_cache_is_read(caches, tmp_path):
    both, conv, fc7 = caches
    for layer, single in ((None, conv), ("conv5_2", conv), ("fc7", fc7)):
        ids, x = load_features(both, layer=layer)
        single_ids, y = load_features(single)
        assert ids == single_ids
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
    row = cache.FeatureDataset(both, layer="fc7")[3]
    np.testing.assert_allclose(row[1], cache.FeatureDataset(fc7)[3][1], rtol=1e-4, atol=1e-5)
    out = export_features(both, tmp_path / "fc7.npy", "npy", layer="fc7")[0]
    np.testing.assert_allclose(np.load(out), load_features(fc7)[1], rtol=1e-4, atol=1e-5)
    summary = cache_summary(both)
    assert summary["layers"] == ["conv5_2", "fc7"]
    assert summary["layer_dims"] == {"conv5_2": 64, "fc7": 512}
    for bad in (lambda: load_features(both, layer="fc6"),
                lambda: cache.FeatureDataset(both, layer="fc6"),
                lambda: export_features(both, tmp_path / "x.npy", "npy", layer="fc6")):
        with pytest.raises(InputError, match="holds no layer 'fc6'.*conv5_2, fc7"):
            bad()


def test_cli_info_export_and_svm_eval_choose_a_layer(caches, tmp_path):
    both, conv, _ = caches
    runner = CliRunner()
    info = runner.invoke(cli, ["features", "info", str(both)])
    assert info.exit_code == 0, info.output
    assert "layers: conv5_2 (64), fc7 (512)" in info.output
    export = runner.invoke(cli, ["features", "export", str(both), "--to", "csv", "--layer",
                                "fc7", "--out", str(tmp_path / "f.csv")])
    assert export.exit_code == 0, export.output
    assert (tmp_path / "f.csv").read_text().splitlines()[0].endswith("f511")
    fast = ["--C", "1", "--splits", "1", "-q"]
    picked = runner.invoke(cli, ["svm-eval", str(both), "--layer", "conv5_2", "--out",
                                 str(tmp_path / "picked"), *fast])
    assert picked.exit_code == 0, picked.output
    alone = runner.invoke(cli, ["svm-eval", str(conv), "--out", str(tmp_path / "alone"), *fast])
    assert alone.exit_code == 0, alone.output
    summary = json.loads((tmp_path / "picked" / "summary.json").read_text())
    assert summary["inputs"][0]["layer"] == "conv5_2"
    assert (tmp_path / "picked" / "results.csv").read_text() == \
        (tmp_path / "alone" / "results.csv").read_text()
    bad = runner.invoke(cli, ["svm-eval", str(both), "--layer", "fc6", "--out",
                              str(tmp_path / "bad"), *fast])
    assert bad.exit_code == 2 and "holds no layer 'fc6'" in bad.output
    assert "Traceback" not in bad.output


def test_feature_extractor_describes_the_named_layer(tiny_weights, caches, folder):
    _, conv, _ = caches
    paths = [s.path for s in folder.images()]
    with torch_threads(1):
        rows = FeatureExtractor(weights=tiny_weights, scales=(64, 96), layer="conv5_2",
                                device="cpu").fit(paths).transform(paths)
    np.testing.assert_allclose(rows, load_features(conv)[1], rtol=1e-4, atol=1e-5)
    with pytest.raises(InputError, match="'conv9_1' is not a layer of vgg11; choose from"):
        FeatureExtractor(weights=tiny_weights, layer="conv9_1").fit(paths)
    with pytest.raises(InputError, match="one layer"):
        FeatureExtractor(weights=tiny_weights, layer=PAIR).fit(paths)


def test_a_wrong_layer_is_refused_before_any_file_is_made(folder, tiny_weights, tmp_path):
    out = tmp_path / "run" / "x.h5"
    for layer in ("conv6_1", "fc7,fc7", "pool4"):
        with pytest.raises(InputError, match="^layer: "):  # Python's words, not --layer
            _extract(folder, out, tiny_weights, layer)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
    result = CliRunner().invoke(cli, [
        "extract", "--dataset", "folder", "--root", str(folder.root), "--weights",
        str(tiny_weights), "--scales", "64", "--layer", "conv5_3", "--device", "cpu", "-q",
        "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "'conv5_3' is not a layer of vgg11; choose from: conv1_1, conv2_1" in result.output
    assert "conv5_2, pool5, fc6, fc7, fc8" in result.output
    assert list(tmp_path.rglob("*")) == []  # no cache, no partial file, no lock


def test_multi_layer_cache_resumes(caches, folder, tiny_weights, tmp_path):
    both = caches[0]
    out = tmp_path / "both.h5"
    out.write_bytes(both.read_bytes())
    partial = cache.partial_path(out)
    out.rename(partial)  # as a killed run leaves it: rows 2 and 5 not done
    with h5py.File(partial, "r+") as f:
        f["done"][[2, 5]] = False
        for rows in (f["descriptors"], f["layers/fc7"]):
            rows[[2, 5]] = np.full((2, *rows.shape[1:]), np.nan, rows.dtype)
    summary = _extract(folder, out, tiny_weights, PAIR)
    assert summary.complete and summary.computed == 2
    for layer in ("conv5_2", "fc7"):
        np.testing.assert_allclose(cache.read_descriptors(out, layer=layer)[1],
                                   cache.read_descriptors(both, layer=layer)[1],
                                   rtol=1e-5, atol=1e-6)


def test_shards_of_a_multi_layer_cache_merge_every_layer(tmp_path):
    config = DescriptorConfig(arch="vgg16", weights_sha256="ab" * 32,
                              preprocessing={"mean": [0.5] * 3, "std": [0.25] * 3,
                                             "channel_order": "RGB", "value_scale": 1.0},
                              scales=(64,), layer="conv5_3", extra_layers=("fc7",))
    attrs = cache.cache_attributes(config, dataset="folder")
    ids, dims, out = [f"i{k}" for k in range(4)], {"conv5_3": 3, "fc7": 5}, tmp_path / "s.h5"
    row = [np.full((1, 8), k, np.float32) + np.arange(8) for k in range(4)]
    partial = cache.open_for_writing(out, attrs, {"/": ids}, dims, log=lambda m: None)
    writer = cache.RowWriter(partial)
    for k in (0, 2):
        writer.put(k, row[k])
    writer.close()
    shard = cache.RowWriter(cache.create_shard(out, 1, "/", attrs, ids, [1, 3], dims))
    for k in (1, 3):
        shard.put(k, row[k])
    shard.close()
    assert cache.merge_shards(out, log=lambda m: None) == 2 and cache.finalize(out)
    for layer, columns in (("conv5_3", slice(0, 3)), ("fc7", slice(3, 8))):
        _, stored = cache.read_descriptors(out, layer=layer)
        np.testing.assert_array_equal(stored, np.stack(row)[:, :, columns])
