"""Pooling rounding: torch's floor vs Caffe's ceil, in every path that makes a dense map.

The references are written here, independently of vggfeat: Caffe's output-size formula
(caffe/src/caffe/layers/pooling_layer.cpp, Reshape) in integer arithmetic, and a float64
dense map built from plain convolutions, max pooling done by reshaping (ceil: the input
padded with -inf to even sides first) and fc6 as an explicit loop over k x k windows.
"""
import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import make_tiny_backbone
from torch import nn

from vggfeat.features.descriptor import DescriptorConfig, config_key, describe
from vggfeat.models import build_backbone, load_backbone, normalize, save_backbone
from vggfeat.models.cpu import fast_dense
from vggfeat.models.vgg import CONFIGS, dense_output_size, make_features, pool5_size
from vggfeat.training.evaluate import dense_posterior
from vggfeat.utils.threads import torch_threads

ODD_SIZES = [(64, 64), (65, 97), (95, 130), (100, 161), (127, 64)]


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


def caffe_pooled(h: int, kernel: int = 2, stride: int = 2, pad: int = 0) -> int:
    """Caffe's PoolingLayer::Reshape: ceil, then clip a window starting in the padding."""
    out = -(-(h + 2 * pad - kernel) // stride) + 1
    if pad and (out - 1) * stride >= h + pad:
        out -= 1
    return out


def torch_floor_pooled(h: int, kernel: int = 2, stride: int = 2) -> int:
    return (h - kernel) // stride + 1


def net_side(h: int, pool, k: int) -> int:
    for _ in range(5):
        h = pool(h)
    return h - k + 1


def test_map_sizes_equal_caffes_formula():
    for h in range(2, 1100):
        # With pad 0 Caffe's clipping never triggers: the last window starts inside.
        assert caffe_pooled(h, pad=0) == -(-(h - 2) // 2) + 1
        assert nn.MaxPool2d(2, 2, ceil_mode=True)(torch.zeros(1, 1, 1, h)).shape[-1] \
            == caffe_pooled(h)
        if h >= 32:
            assert pool5_size(h, "ceil") == net_side(h, caffe_pooled, 1), h
            assert pool5_size(h, "floor") == net_side(h, torch_floor_pooled, 1), h
        if h >= 224:
            assert dense_output_size(h, 224, "ceil") == net_side(h, caffe_pooled, 7), h
            assert dense_output_size(h, 224, "floor") == net_side(h, torch_floor_pooled, 7), h


def test_the_issue_example_256x341():
    assert (dense_output_size(256, 224, "ceil"), dense_output_size(341, 224, "ceil")) == (2, 5)
    assert (dense_output_size(256, 224, "floor"), dense_output_size(341, 224, "floor")) == (2, 4)
    with torch.device("meta"):
        caffe, tv = build_backbone("D", pool_rounding="ceil"), build_backbone("D")
        assert caffe.dense(torch.zeros(1, 3, 256, 341), "fc7").shape[2:] == (2, 5)
        assert tv.dense(torch.zeros(1, 3, 256, 341), "fc7").shape[2:] == (2, 4)


def test_caffes_clip_with_padding():
    # The clip matters only with padding (not VGG's): 2x2/2 pad 1 on 5 -> 3, not 4; torch's
    # ceil_mode clips the same way.
    assert caffe_pooled(5, 2, 2, 1) == 3
    assert nn.MaxPool2d(2, 2, 1, ceil_mode=True)(torch.zeros(1, 1, 5, 5)).shape[-1] == 3


# -- the float64 reference ------------------------------------------------------------------

def max_pool_2x2(x: torch.Tensor, rounding: str) -> torch.Tensor:
    """2x2/2 max pooling by reshaping; ceil pads odd sides with -inf (a partial window)."""
    h, w = x.shape[-2:]
    if rounding == "ceil":
        x = F.pad(x, (0, w % 2, 0, h % 2), value=float("-inf"))
    h2, w2 = x.shape[-2] // 2, x.shape[-1] // 2
    x = x[..., : 2 * h2, : 2 * w2]
    return x.reshape(*x.shape[:2], h2, 2, w2, 2).amax(dim=(3, 5))


def reference_dense(model, x: torch.Tensor, rounding: str, layer: str) -> torch.Tensor:
    """float64 dense map of `layer` from the weights alone."""
    y = x.double()
    for module in model.features:
        if isinstance(module, nn.Conv2d):
            y = F.conv2d(y, module.weight.double(), module.bias.double(),
                         padding=module.padding)
        elif isinstance(module, nn.ReLU):
            y = y.clamp_min(0)
        elif isinstance(module, nn.MaxPool2d):
            y = max_pool_2x2(y, rounding)
    if layer == "pool5":
        return y
    fc6, fc7, fc8 = (m.weight.double() for m in model.fc_layers())
    b6, b7, b8 = (m.bias.double() for m in model.fc_layers())
    k = model.kernel
    rows, cols = y.shape[2] - k + 1, y.shape[3] - k + 1
    out = []
    for i in range(rows):
        for j in range(cols):
            v = (y[:, :, i:i + k, j:j + k].flatten(1) @ fc6.T + b6).clamp_min(0)
            if layer != "fc6":
                v = (v @ fc7.T + b7).clamp_min(0)
            if layer == "fc8":
                v = v @ fc8.T + b8
            out.append(v)
    return torch.stack(out, -1).view(y.shape[0], -1, rows, cols)


@pytest.mark.parametrize("rounding", ["floor", "ceil"])
def test_dense_maps_equal_the_float64_reference(rounding):
    model = make_tiny_backbone(seed=3).set_pool_rounding(rounding)
    k = model.kernel * 32
    for size in ODD_SIZES:
        x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(sum(size)))
        with torch.no_grad():
            for layer in ("pool5", "fc7", "fc8"):
                got = model.dense(x, layer)
                expected = reference_dense(model, x, rounding, layer)
                side = (pool5_size if layer == "pool5" else
                        lambda s, r: dense_output_size(s, k, r))
                assert got.shape[2:] == tuple(side(s, rounding) for s in size), (size, layer)
                assert got.shape == expected.shape
                scale = expected.abs().max()
                torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-5 * scale)
    assert model.dense_size(97) == dense_output_size(97, k, rounding)


def test_the_roundings_differ_only_on_sides_that_are_not_multiples_of_32():
    floor, ceil = make_tiny_backbone(seed=4), make_tiny_backbone(seed=4).set_pool_rounding("ceil")
    with torch.no_grad():
        x = torch.randn(1, 3, 96, 128)
        torch.testing.assert_close(floor.dense(x, "fc7"), ceil.dense(x, "fc7"), rtol=0, atol=0)
        x = torch.randn(1, 3, 97, 130)
        assert floor.dense(x, "fc7").shape[2:] == (2, 3)
        assert ceil.dense(x, "fc7").shape[2:] == (3, 4)


@pytest.mark.parametrize("rounding", ["floor", "ceil"])
def test_cpu_fast_path_pools_as_the_model(rounding):
    model = make_tiny_backbone(seed=5).set_pool_rounding(rounding)
    dense = fast_dense(model)
    x = torch.randn(2, 3, 95, 130)
    with torch.no_grad():
        got, expected = dense(x, "fc7"), reference_dense(model, x, rounding, "fc7")
    assert got.shape == expected.shape
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-5 * expected.abs().max())


def test_descriptor_and_cache_key_follow_the_rounding():
    model = make_tiny_backbone(seed=6).set_pool_rounding("ceil")
    config = DescriptorConfig.from_model(model, [97])
    assert config.pool_rounding == "ceil" and config.as_dict()["pool_rounding"] == "ceil"
    floor_config = DescriptorConfig.from_model(make_tiny_backbone(seed=6), [97])
    assert floor_config.pool_rounding == "floor"
    assert config_key(config.as_dict()) != config_key(floor_config.as_dict())
    images = torch.rand(1, 3, 97, 130)
    with torch.no_grad():
        got = describe(model, images, config)
        xn = normalize(images, model.meta["preprocessing"])
        maps = [reference_dense(model, v, "ceil", "fc7") for v in (xn, xn.flip(-1))]
    assert maps[0].shape[2:] == (3, 4)
    expected = (maps[0].mean((2, 3)) + maps[1].mean((2, 3))) / 2
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-5 * expected.abs().max())


def test_eval_backbone_dense_posterior_uses_the_rounding():
    model = make_tiny_backbone(seed=7).set_pool_rounding("ceil")
    x = torch.randn(1, 3, 97, 130)
    with torch.no_grad():
        got = dense_posterior(model, x)
        scores = [reference_dense(model, v, "ceil", "fc8").mean((2, 3)) for v in (x, x.flip(-1))]
    expected = torch.stack([torch.softmax(s, 1)[0] for s in scores]).mean(0)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-6)


# -- where the rounding comes from ----------------------------------------------------------

def test_rounding_travels_with_the_checkpoint(tmp_path):
    model = make_tiny_backbone(seed=8).set_pool_rounding("ceil")
    save_backbone(model, tmp_path / "ceil.pth")
    loaded = load_backbone(tmp_path / "ceil.pth")
    assert loaded.pool_rounding == "ceil" and loaded.meta["pool_rounding"] == "ceil"
    assert all(m.ceil_mode for m in loaded.features if isinstance(m, nn.MaxPool2d))


def test_old_checkpoints_without_a_record(tmp_path):
    """Before the rounding was recorded: Caffe conversions ran in Caffe (ceil), others floor."""
    model = make_tiny_backbone(seed=9)
    for converted, expected in ((None, "floor"), ("VGG_ILSVRC_16_layers.caffemodel", "ceil")):
        model.meta.pop("pool_rounding", None)
        model.meta.pop("converted_from", None)
        if converted:
            model.meta["converted_from"] = converted
        save_backbone(model, tmp_path / "old.pth")
        assert load_backbone(tmp_path / "old.pth").pool_rounding == expected


def test_torchvision_weights_keep_torchs_floor(tmp_path):
    # A bare state dict is torchvision's format: it loads with torch's floor rounding ...
    torch.save(make_tiny_backbone(seed=10).state_dict(), tmp_path / "bare.pth")
    model = load_backbone(tmp_path / "bare.pth")
    assert model.pool_rounding == "floor" and model.meta["pool_rounding"] == "floor"
    # ... which is what torchvision's own trunk computes (VGG-A's layers, full width).
    torch.manual_seed(0)
    reference = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["A"]).eval()
    ours = make_features(CONFIGS["vgg11"]).eval()  # the trunk build_backbone("A") has
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(1, 3, 97, 75)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=0)


def test_bad_rounding_is_refused():
    with pytest.raises(ValueError, match="pool rounding"):
        build_backbone("A", width=0.125, crop_size=64, pool_rounding="round")
    with pytest.raises(ValueError, match="pool rounding"):
        make_tiny_backbone().set_pool_rounding("up")
