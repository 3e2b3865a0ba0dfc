"""Architectures (paper Table 1), torchvision parity and dense evaluation."""
import pytest
import torch
import torchvision
from torch import nn

from vggfeat.models import build_backbone, canonical_arch, load_backbone
from vggfeat.models.vgg import dense_output_size

# Paper Tables 1 and 2: exact parameter counts with biases.
PARAMS = {"A": 132_863_336, "A-LRN": 132_863_336, "B": 133_047_848, "C": 133_638_952,
          "D": 138_357_544, "E": 143_667_240}


@pytest.mark.parametrize("arch,count", PARAMS.items())
def test_parameter_counts_match_the_paper(arch, count):
    with torch.device("meta"):  # shapes only: no 500 MB allocations
        model = build_backbone(arch)
    assert sum(p.numel() for p in model.parameters()) == count


def _layer_kinds(model):
    kinds = []
    for module in model.features:
        if isinstance(module, nn.Conv2d):
            kinds.append(f"conv{module.kernel_size[0]}-{module.out_channels}")
        elif isinstance(module, nn.MaxPool2d):
            kinds.append("pool")
        elif isinstance(module, nn.LocalResponseNorm):
            kinds.append(f"lrn(n={module.size},a={module.alpha},b={module.beta},k={module.k})")
    return kinds


def test_a_lrn_puts_lrn_after_conv1_1():
    with torch.device("meta"):
        kinds = _layer_kinds(build_backbone("A-LRN"))
    assert kinds[:4] == ["conv3-64", "lrn(n=5,a=0.0005,b=0.75,k=2.0)", "pool", "conv3-128"]
    assert kinds.count("pool") == 5 and sum(k.startswith("conv") for k in kinds) == 8


def test_c_has_1x1_convs_closing_blocks_3_to_5():
    with torch.device("meta"):
        kinds = _layer_kinds(build_backbone("C"))
    blocks = " ".join(kinds).split(" pool")
    assert blocks[2].split() == ["conv3-256", "conv3-256", "conv1-256"]
    assert blocks[3].split() == ["conv3-512", "conv3-512", "conv1-512"]
    assert blocks[4].split() == ["conv3-512", "conv3-512", "conv1-512"]


def test_paper_letters_are_aliases():
    assert [canonical_arch(a) for a in "ABCDE"] == ["vgg11", "vgg13", "vgg16-1x1", "vgg16",
                                                    "vgg19"]
    assert canonical_arch("vgg16_bn") == "vgg16-bn"
    with pytest.raises(ValueError, match="unknown architecture 'vgg17'.*vgg16"):
        canonical_arch("vgg17")


@pytest.mark.parametrize("name", ["vgg11", "vgg13", "vgg16", "vgg19",
                                  "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"])
def test_torchvision_state_dict_gives_the_same_logits(name, tmp_path):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)().eval()
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    model = load_backbone(path)
    assert model.meta["arch"] == canonical_arch(name)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-4)


def _sliding_window_fc(reference, pool5, layer_index):
    """Independent dense evaluation: the Linear head on every 7x7 window of pool5."""
    rows = []
    for i in range(pool5.shape[2] - 6):
        for j in range(pool5.shape[3] - 6):
            window = pool5[:, :, i:i + 7, j:j + 7].flatten(1)
            rows.append(reference.classifier[:layer_index](window))
    out = torch.stack(rows, -1)
    return out.view(*out.shape[:2], pool5.shape[2] - 6, pool5.shape[3] - 6)


@pytest.mark.slow
def test_dense_maps_equal_float64_sliding_windows(tmp_path):
    torch.manual_seed(1)
    reference = torchvision.models.vgg16().eval()
    torch.save(reference.state_dict(), tmp_path / "vgg16.pth")
    model = load_backbone(tmp_path / "vgg16.pth")
    x = torch.randn(1, 3, 256, 330)
    with torch.no_grad():
        fc7, fc8 = model.dense(x, "fc7"), model.dense(x, "fc8")
        reference = reference.double()
        pool5 = reference.features(x.double())
        expected_fc7 = _sliding_window_fc(reference, pool5, 5)  # fc6, relu, drop, fc7, relu
        expected_fc8 = _sliding_window_fc(reference, pool5, 7)
    assert fc7.shape == (1, 4096, 2, 4)
    scale = expected_fc8.abs().max()
    torch.testing.assert_close(fc7.double(), expected_fc7, rtol=0, atol=1e-4 * scale)
    torch.testing.assert_close(fc8.double(), expected_fc8, rtol=0, atol=1e-4 * scale)


def test_dense_at_crop_size_equals_the_linear_head():
    torch.manual_seed(0)
    model = build_backbone("vgg11", width=0.125, crop_size=64, num_classes=10,
                           init="xavier").eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        dense = model.dense(x, "fc8")
        linear = model.classifier(model.features(x).flatten(1))
        # Force the convolutional path at the crop size too: equal to the flatten path.
        fc6 = model.classifier[0]
        conv = torch.nn.functional.conv2d(model.features(x), fc6.weight.view(
            fc6.out_features, -1, 2, 2), fc6.bias)
    assert dense.shape == (3, 10, 1, 1)
    torch.testing.assert_close(dense.mean((2, 3)), linear)
    torch.testing.assert_close(conv.flatten(1), fc6(model.features(x).flatten(1)),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(64, 64), (96, 130), (200, 97)])
def test_dense_map_sizes(size):
    model = build_backbone("vgg13", width=0.125, crop_size=64, num_classes=7).eval()
    with torch.no_grad():
        maps = {layer: model.dense(torch.zeros(1, 3, *size), layer)
                for layer in ("pool5", "fc6", "fc7", "fc8")}
    h, w = (dense_output_size(s, 64) for s in size)
    assert maps["fc8"].shape == (1, 7, h, w)
    assert maps["fc7"].shape == (1, model.feature_dim("fc7"), h, w) == (1, 512, h, w)
    assert maps["pool5"].shape == (1, 64, size[0] // 32, size[1] // 32)
    assert (maps["fc6"] >= 0).all() and (maps["fc7"] >= 0).all()  # after ReLU


def test_input_smaller_than_the_crop_is_refused():
    model = build_backbone("vgg11", width=0.125, crop_size=64).eval()
    with pytest.raises(ValueError, match="smaller than the 64-pixel crop"):
        model.dense(torch.zeros(1, 3, 40, 80), "fc7")


@pytest.mark.parametrize("init", ["normal", "xavier"])
def test_init_zero_biases_and_the_documented_std(init):
    torch.manual_seed(0)
    model = build_backbone("vgg11", width=0.25, crop_size=64, init=init)
    weight = model.conv_layers()[3].weight
    assert all((m.bias == 0).all() for m in model.conv_layers() + model.fc_layers())
    if init == "normal":
        assert abs(weight.std().item() - 0.01) < 1e-3
    else:
        fan_in, fan_out = weight.shape[1] * 9, weight.shape[0] * 9
        assert abs(weight.std().item() - (2 / (fan_in + fan_out)) ** 0.5) < 0.1 * weight.std()


def test_vgg_offers_the_backbone_interface():
    """What the engine, the trainer and localisation use (vggfeat.models.backbone)."""
    from vggfeat.models.backbone import Backbone, check_backbone

    net = build_backbone("A", width=0.125, crop_size=64, num_classes=5)
    assert isinstance(net, Backbone) and check_backbone(net) is net
    # Table 1's names for configuration A, then the dense layers.
    assert net.layers == ("conv1_1", "conv2_1", "conv3_1", "conv3_2", "conv4_1", "conv4_2",
                          "conv5_1", "conv5_2", "pool5", "fc6", "fc7", "fc8")
    x = torch.zeros(1, 3, 96, 128)
    for layer in net.layers:
        assert net.dense(x, layer).shape[1] == net.feature_dim(layer)
    fc8 = net.dense(x, "fc8")
    assert fc8.shape[2:] == (net.dense_size(96), net.dense_size(128))
    assert net.stride == 32 and net.meta["crop_size"] == 64
    with pytest.raises(TypeError, match="not a vggfeat backbone: it has no meta, layers"):
        check_backbone(nn.Conv2d(3, 8, 3))


def test_dense_layers_equal_one_dense_call_per_layer():
    net = build_backbone("A", width=0.125, crop_size=64, num_classes=5).eval()
    x = torch.randn(2, 3, 96, 128)
    for layers in (["fc7"], ["pool5", "fc7"], ["fc8", "fc6"], list(net.layers)):
        maps = net.dense_layers(x, layers)
        assert list(maps) == layers
        for name in layers:
            torch.testing.assert_close(maps[name], net.dense(x, name), rtol=0, atol=0)
    with pytest.raises(ValueError, match="layer must be one of"):
        net.dense_layers(x, ["conv9_9"])
