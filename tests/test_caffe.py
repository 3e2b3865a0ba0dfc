"""Caffe import: caffemodels written here in the protobuf wire format, both layer formats."""
import struct

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import make_tiny_backbone

from vggfeat.cli import cli
from vggfeat.models import CAFFE_VGG, WeightsError, load_backbone, normalize
from vggfeat.models.caffe import convert_caffe, read_caffemodel

# -- a minimal protobuf writer, independent of the reader under test --------------------

def varint(value):
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field(number, wire, payload):
    key = varint(number << 3 | wire)
    if wire == 2:
        return key + varint(len(payload)) + payload
    return key + payload


def blob(array, new_style):
    data = field(5, 2, struct.pack(f"<{array.size}f", *array.ravel()))
    if new_style:  # BlobShape with packed int64 dims
        dims = b"".join(varint(d) for d in array.shape)
        return field(7, 2, field(1, 2, dims)) + data
    shape = (1,) * (4 - array.ndim) + array.shape  # V1: num, channels, height, width
    return b"".join(field(i + 1, 0, varint(d)) for i, d in enumerate(shape)) + data


def write_caffemodel(path, model, new_style):
    names = [f"conv{i}" for i in range(1, len(model.conv_layers()) + 1)] + ["fc6", "fc7", "fc8"]
    layers = b""
    for name, module in zip(names, model.conv_layers() + model.fc_layers(), strict=True):
        weight, bias = (t.detach().numpy() for t in (module.weight, module.bias))
        if new_style:
            body = field(1, 2, name.encode()) + field(2, 2, b"Convolution")
            body += field(7, 2, blob(weight, True)) + field(7, 2, blob(bias, True))
            layers += field(100, 2, body)
        else:
            body = field(4, 2, name.encode()) + field(5, 0, varint(4))
            body += field(6, 2, blob(weight, False)) + field(6, 2, blob(bias, False))
            layers += field(2, 2, body)
        relu = field(1, 2, b"relu") if new_style else field(4, 2, b"relu")
        layers += field(100 if new_style else 2, 2, relu)  # a layer without blobs
    path.write_bytes(field(1, 2, b"VGG_ILSVRC_16_layers") + layers)
    return path


@pytest.mark.parametrize("new_style", [False, True])
def test_caffemodel_converts_with_bgr_preprocessing(tmp_path, new_style):
    source = make_tiny_backbone(seed=5, arch="vgg16", num_classes=6)
    caffemodel = write_caffemodel(tmp_path / "net.caffemodel", source, new_style)
    convert_caffe(caffemodel, tmp_path / "converted.pth")
    model = load_backbone(tmp_path / "converted.pth")
    assert model.meta["arch"] == "vgg16" and model.meta["preprocessing"] == CAFFE_VGG
    # Caffe's max pooling rounds up: 97 -> 49 -> 25 -> 13 -> 7 -> 4 at pool5 (torch: 3).
    assert model.meta["pool_rounding"] == "ceil" and model.pool_rounding == "ceil"
    with torch.no_grad():
        assert model.dense(torch.zeros(1, 3, 97, 64), "pool5").shape[2:] == (4, 2)
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    # An RGB image in [0, 1] reaches the net as Caffe's BGR 0..255 minus the mean pixel.
    rgb = torch.rand(1, 3, 64, 64)
    expected = rgb.flip(1) * 255 - torch.tensor([103.939, 116.779, 123.68])[:, None, None]
    torch.testing.assert_close(normalize(rgb, model.meta["preprocessing"]), expected)


def test_reader_keeps_layer_order_and_shapes(tmp_path):
    source = make_tiny_backbone(arch="vgg16", num_classes=6)
    layers = read_caffemodel(write_caffemodel(tmp_path / "n.caffemodel", source, False))
    assert list(layers)[:2] == ["conv1", "conv2"] and list(layers)[-1] == "fc8"
    assert layers["conv2"][0].shape == (8, 8, 3, 3)
    assert layers["fc6"][0].shape == (1, 1, 512, 256)
    np.testing.assert_array_equal(layers["fc8"][1].ravel(),
                                  source.classifier[6].bias.detach().numpy())


def test_truncated_and_foreign_caffemodels(tmp_path):
    good = write_caffemodel(tmp_path / "n.caffemodel", make_tiny_backbone(arch="vgg16"), False)
    (tmp_path / "cut.caffemodel").write_bytes(good.read_bytes()[:5000])
    with pytest.raises(WeightsError, match=r"cannot parse .*cut\.caffemodel"):
        convert_caffe(tmp_path / "cut.caffemodel", tmp_path / "out.pth")
    (tmp_path / "text.caffemodel").write_bytes(b"hello world, not protobuf")
    with pytest.raises(WeightsError, match=r"text\.caffemodel"):
        convert_caffe(tmp_path / "text.caffemodel", tmp_path / "out.pth")
    assert not (tmp_path / "out.pth").exists()


def test_convert_caffe_command(tmp_path):
    source = make_tiny_backbone(arch="vgg19", num_classes=4)
    caffemodel = write_caffemodel(tmp_path / "e.caffemodel", source, False)
    result = CliRunner().invoke(cli, ["convert-caffe", str(caffemodel), str(tmp_path / "e.pth")])
    assert result.exit_code == 0, result.output
    assert "vgg19" in result.output and "BGR" in result.output and "ceil" in result.output
    assert load_backbone(tmp_path / "e.pth").meta["arch"] == "vgg19"
    bad = CliRunner().invoke(cli, ["convert-caffe", str(tmp_path / "e.pth"), str(tmp_path / "x")])
    assert bad.exit_code == 2 and "Error:" in bad.output and "e.pth" in bad.output
