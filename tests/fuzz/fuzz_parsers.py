"""Fuzz the three parsers that read files from outside: images, VOC XML, weights.

Hypothesis generates byte strings: random bytes, and mutations (flipped, inserted and
deleted bytes, truncation) of a valid file of each kind. Each parser must either accept
the input or raise its own error class, which the CLI reports as one line:

- images (`vggfeat.data.images.open_rgb`): an RGB image, or `BadImageError`;
- VOC annotations (`vggfeat.data.readers.parse_voc_objects`): objects, or
  `DatasetLayoutError`;
- checkpoints (`vggfeat.models.load_backbone`) and caffemodels
  (`vggfeat.models.caffe.convert_caffe`): a net, or `WeightsError`.

Anything else (an IndexError, a MemoryError, a crash) is a finding. Run it standalone::

    .venv/bin/python tests/fuzz/fuzz_parsers.py --examples 2000
    .venv/bin/python tests/fuzz/fuzz_parsers.py --examples 500 --target caffemodel

`tests/fuzz/test_fuzz_quick.py` runs a few examples of each in the suite.
"""
from __future__ import annotations

import argparse
import io
import struct
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/: conftest's tiny nets, test_caffe's writer

# -- valid seeds ----------------------------------------------------------------------------


def seed_png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def seed_jpeg() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    pixels = np.random.default_rng(1).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def seed_gif() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("P", (9, 7), 3).save(buffer, format="GIF")
    return buffer.getvalue()


SEED_XML = b"""<annotation><filename>000001.jpg</filename>
<size><width>64</width><height>48</height><depth>3</depth></size>
<object><name>person</name><difficult>0</difficult>
<bndbox><xmin>3</xmin><ymin>4</ymin><xmax>40</xmax><ymax>30</ymax></bndbox>
<actions><jumping>1</jumping><phoning>0</phoning></actions></object>
<object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax>
</bndbox></object></annotation>"""


def seed_checkpoint() -> bytes:
    import torch
    from conftest import make_tiny_backbone

    from vggfeat.models import save_backbone

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "seed.pth"
        model = make_tiny_backbone(width=0.0625, num_classes=3)
        with torch.no_grad():  # fewer bytes to mutate: zeros compress nothing but are quick
            save_backbone(model, path)
        return path.read_bytes()


def seed_caffemodel() -> bytes:
    from conftest import make_tiny_backbone
    from test_caffe import write_caffemodel

    with tempfile.TemporaryDirectory() as folder:
        path = write_caffemodel(Path(folder) / "seed.caffemodel",
                                make_tiny_backbone(width=0.0625, num_classes=3), True)
        return path.read_bytes()


# -- mutations --------------------------------------------------------------------------------

@st.composite
def mutated(draw, seed: bytes):
    """`seed` with a few bytes flipped, inserted or deleted, and maybe truncated."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(0, 6))):
        if not data:
            break
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete"]))
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[at] = draw(st.sampled_from([0, 0xFF, 0x7F, 0x80]))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[at:at + draw(st.integers(1, 16))]
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


def inputs(seeds: list[bytes]):
    return st.one_of(st.binary(max_size=512), *[mutated(s) for s in seeds])


# -- the properties -----------------------------------------------------------------------------

def check_image(data: bytes, folder: Path) -> None:
    from vggfeat.data.images import BadImageError, open_rgb

    path = folder / "x.img"
    path.write_bytes(data)
    try:
        image = open_rgb(path, max_pixels=4096 * 4096)
    except BadImageError as error:
        assert str(path) in str(error)
        return
    assert image.mode == "RGB" and image.size[0] > 0 and image.size[1] > 0


def check_voc_xml(data: bytes, folder: Path) -> None:
    from vggfeat.data.readers import DatasetLayoutError, parse_voc_objects

    path = folder / "x.xml"
    path.write_bytes(data)
    try:
        objects = parse_voc_objects(path)
    except DatasetLayoutError as error:
        assert str(path) in str(error)
        return
    for obj in objects:
        assert isinstance(obj["name"], str) and isinstance(obj["actions"], dict)


def check_checkpoint(data: bytes, folder: Path) -> None:
    from vggfeat.models import WeightsError, load_backbone

    path = folder / "x.pth"
    path.write_bytes(data)
    try:
        load_backbone(path)
    except WeightsError as error:
        assert str(path) in str(error)


def check_caffemodel(data: bytes, folder: Path) -> None:
    from vggfeat.models import WeightsError
    from vggfeat.models.caffe import convert_caffe

    path, out = folder / "x.caffemodel", folder / "x.pth"
    path.write_bytes(data)
    out.unlink(missing_ok=True)
    try:
        convert_caffe(path, out)
    except WeightsError as error:
        assert str(path) in str(error)
        assert not out.exists()  # nothing half-written


TARGETS = {
    "image": (check_image, lambda: [seed_png(), seed_jpeg(), seed_gif()]),
    "voc-xml": (check_voc_xml, lambda: [SEED_XML]),
    "checkpoint": (check_checkpoint, lambda: [seed_checkpoint()]),
    "caffemodel": (check_caffemodel, lambda: [seed_caffemodel()]),
}


def fuzz(target: str, examples: int, seed: int | None = None) -> None:
    """Run `examples` generated inputs through one parser; raises on a finding."""
    check, seeds = TARGETS[target]
    strategy = inputs(seeds())

    @settings(max_examples=examples, deadline=None, database=None, derandomize=seed is not None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(data):
        with tempfile.TemporaryDirectory() as folder:
            check(data, Path(folder))

    run()


def _chunk(kind: bytes, body: bytes) -> bytes:  # kept for writing PNG corner cases by hand
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=500, help="inputs per target")
    parser.add_argument("--target", choices=sorted(TARGETS), action="append",
                        help="parser(s) to fuzz [default: all]")
    args = parser.parse_args(argv)
    for target in args.target or sorted(TARGETS):
        print(f"fuzzing {target}: {args.examples} inputs", flush=True)
        fuzz(target, args.examples)
    print("no findings")
    return 0


if __name__ == "__main__":
    sys.exit(main())
