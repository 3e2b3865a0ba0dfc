"""Import the paper's own Caffe release (VGG_ILSVRC_16/19_layers.caffemodel).

A caffemodel is a protobuf `NetParameter`. Rather than depend on Caffe or protobuf, we
read the few fields we need straight from the wire format
(https://protobuf.dev/programming-guides/encoding/):

    NetParameter      layers = 2 (V1LayerParameter, the 2014 release), layer = 100 (newer)
    V1LayerParameter  name = 4, blobs = 6
    LayerParameter    name = 1, blobs = 7
    BlobProto         num = 1, channels = 2, height = 3, width = 4, data = 5 (packed float),
                      shape = 7 (BlobShape: dim = 1, packed int64), double_data = 8

The weights are kept as they are: Caffe's nets take BGR images in 0..255 minus the mean
pixel, and that preprocessing is recorded in the checkpoint (paper Sec. 2.1). So is Caffe's
pooling: its max pools round output sizes up (``meta["pool_rounding"] = "ceil"``), which
gives the dense maps the paper's nets computed on sides that are not multiples of 32.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vggfeat.models.preprocessing import CAFFE_VGG
from vggfeat.models.vgg import VGG, build_backbone
from vggfeat.models.weights import WeightsError, save_backbone
from vggfeat.utils.hashing import sha256_of

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5
# Conv layer count -> configuration, for nets whose layer names do not say.
ARCH_BY_CONV_COUNT = {8: "vgg11", 10: "vgg13", 13: "vgg16", 16: "vgg19"}


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("varint runs past the end of the data")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def iter_fields(buf: bytes):
    """Yield (field number, wire type, value) of one message; value is bytes or an int."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == VARINT:
            value, pos = _varint(buf, pos)
        elif wire == LENGTH:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise ValueError(f"field {field} needs {size} bytes, {len(buf) - pos} are left")
            value, pos = buf[pos:pos + size], pos + size
        elif wire == FIXED32:
            value, pos = buf[pos:pos + 4], pos + 4
        elif wire == FIXED64:
            value, pos = buf[pos:pos + 8], pos + 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} (field {field})")
        yield field, wire, value


def parse_blob(buf: bytes) -> np.ndarray:
    """A BlobProto as a float32 array of its declared shape."""
    dims_4d, shape, chunks, doubles = {}, None, [], []
    for field, wire, value in iter_fields(buf):
        if field in (1, 2, 3, 4) and wire == VARINT:
            dims_4d[field] = value
        elif field == 5:  # packed floats, or one float per field when written unpacked
            chunks.append(np.frombuffer(value, dtype="<f4"))
        elif field == 8:
            doubles.append(np.frombuffer(value, dtype="<f8"))
        elif field == 7:
            shape = []
            for dim_field, dim_wire, dim_value in iter_fields(value):
                if dim_field == 1 and dim_wire == LENGTH:
                    shape.extend(_packed_varints(dim_value))
                elif dim_field == 1:
                    shape.append(dim_value)
    data = np.concatenate(chunks or doubles or [np.zeros(0, np.float32)]).astype(np.float32)
    if shape is None:
        shape = [dims_4d.get(i, 0) for i in (1, 2, 3, 4)]
    if int(np.prod(shape)) != data.size:
        raise ValueError(f"blob declares shape {shape} but holds {data.size} values")
    return data.reshape(shape)


def _packed_varints(buf: bytes) -> list[int]:
    values, pos = [], 0
    while pos < len(buf):
        value, pos = _varint(buf, pos)
        values.append(value)
    return values


def read_caffemodel(path: str | Path) -> dict[str, list[np.ndarray]]:
    """Layer name -> its blobs (weight, bias), in network order, for layers with blobs."""
    path = Path(path)
    buf = path.read_bytes()
    if not buf:
        raise WeightsError(f"{path} is empty; download the caffemodel again.")
    layers: dict[str, list[np.ndarray]] = {}
    try:
        for field, wire, value in iter_fields(buf):
            if wire != LENGTH or field not in (2, 100):
                continue
            name_field, blob_field = (4, 6) if field == 2 else (1, 7)
            name, blobs = None, []
            for sub_field, sub_wire, sub_value in iter_fields(value):
                if sub_field in (name_field, blob_field) and sub_wire != LENGTH:
                    # a damaged file can put a number where a name or a blob belongs
                    raise ValueError(f"field {sub_field} of a layer has wire type {sub_wire}")
                if sub_field == name_field:
                    name = sub_value.decode("utf-8")
                elif sub_field == blob_field:
                    blobs.append(parse_blob(sub_value))
            if blobs:
                layers[name] = blobs
    except (ValueError, TypeError, OverflowError, UnicodeDecodeError) as error:
        # TypeError/OverflowError: a field of the wrong wire type or an absurd dimension
        raise WeightsError(f"cannot parse {path} as a caffemodel: {error}. The file is "
                           "truncated or not a Caffe model; download it again.") from None
    if not layers:
        raise WeightsError(f"{path} holds no layer with weights: not a Caffe model.")
    return layers


def caffe_to_backbone(layers: dict[str, list[np.ndarray]], path: Path,
                      arch: str | None = None) -> VGG:
    """Build the matching VGG and copy the Caffe blobs into it, in layer order."""
    convs = [name for name, blobs in layers.items()
             if blobs[0].ndim == 4 and name.startswith("conv")]
    fcs = [name for name in layers if name.startswith("fc")]
    arch = arch or ARCH_BY_CONV_COUNT.get(len(convs))
    if arch is None or len(fcs) != 3:
        raise WeightsError(f"{path}: found {len(convs)} conv and {len(fcs)} fc layers "
                           f"({list(layers)}); not a VGG A/B/D/E net. Pass --arch if it is one.")
    # The paper's nets are width 1, crop 224; reading both from the blobs also admits
    # narrower nets saved the same way (as the tests do).
    width = layers[convs[0]][0].shape[0] / 64
    fc6_in = layers[fcs[0]][0].size // layers[fcs[0]][1].size
    crop_size = 32 * int(round((fc6_in / layers[convs[-1]][0].shape[0]) ** 0.5))
    num_classes = int(layers[fcs[-1]][1].size)
    # Caffe's max pooling rounds output sizes up: the net must pool as it did in Caffe.
    model = build_backbone(arch, num_classes=num_classes, width=width, crop_size=crop_size,
                           pool_rounding="ceil")
    targets = model.conv_layers() + model.fc_layers()
    for name, module in zip(convs + fcs, targets, strict=True):
        weight, bias = layers[name]
        if weight.size != module.weight.numel() or bias.size != module.bias.numel():
            raise WeightsError(f"{path}: layer {name} has {weight.size} weights, {arch} expects "
                               f"{tuple(module.weight.shape)}; pass the right --arch.")
        # V1 blobs store fc weights as (1, 1, out, in); fc6's `in` is in C, H, W order as torch's.
        module.weight.data.copy_(torch.from_numpy(weight.reshape(module.weight.shape)))
        module.bias.data.copy_(torch.from_numpy(bias.reshape(module.bias.shape)))
    return model.eval()


def convert_caffe(caffemodel: str | Path, out: str | Path, arch: str | None = None) -> VGG:
    """Convert a caffemodel into a vggfeat checkpoint carrying Caffe's preprocessing and
    pooling rounding (ceil)."""
    caffemodel = Path(caffemodel)
    model = caffe_to_backbone(read_caffemodel(caffemodel), caffemodel, arch)
    model.meta.update(preprocessing=dict(CAFFE_VGG), converted_from=caffemodel.name,
                      caffemodel_sha256=sha256_of(caffemodel))
    save_backbone(model, out)
    return model
